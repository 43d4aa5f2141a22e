"""The hub decision: once per process, in seconds, from the offline switches or one probe of the endpoint;
an unreachable hub puts the hub libraries offline and zero-shot ``auto`` reads the local task copies."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from prunelight import hub

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


class SilentServer:
    """Accepts connections and never answers: a hub behind a black hole. Counts the connections."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


def _answering(status: int) -> tuple[HTTPServer, list[str]]:
    """An HTTP server that answers every request with ``status`` and records the methods it saw."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
            seen.append("HEAD")
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, seen


@pytest.fixture
def online(monkeypatch) -> Iterator[None]:
    """No offline switch set, the decision forgotten, and the libraries' constants restored afterwards."""
    import datasets.config
    import huggingface_hub.constants

    for name in OFFLINE:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    hub.reset()
    yield
    hub.reset()
    for name in OFFLINE[:2]:  # _go_offline sets them; monkeypatch.delenv restores the originals after this
        os.environ.pop(name, None)


def test_offline_switch_decides_without_a_probe(monkeypatch):
    hub.reset()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def probe(*args, **kwargs):
        raise AssertionError("the hub was probed although HF_HUB_OFFLINE is set")

    monkeypatch.setattr(hub.urllib.request, "urlopen", probe)
    status = hub.hub_status()
    hub.reset()
    assert not status.reachable
    assert status.reason == "HF_HUB_OFFLINE is set"


def test_answering_endpoint_is_reachable_and_probed_once(online, monkeypatch):
    server, seen = _answering(200)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    try:
        assert hub.hub_reachable()
        assert hub.hub_reachable()
        assert hub.hub_status().reachable
    finally:
        server.shutdown()
    assert seen == ["HEAD"]
    assert "HF_HUB_OFFLINE" not in os.environ


def test_client_error_still_means_reachable(online, monkeypatch):
    server, _ = _answering(401)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    try:
        assert hub.hub_reachable()
    finally:
        server.shutdown()


def test_server_error_means_unreachable_and_goes_offline(online, monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    server, _ = _answering(503)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    try:
        status = hub.hub_status()
    finally:
        server.shutdown()
    assert not status.reachable
    assert "HTTP 503" in status.reason
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["HF_DATASETS_OFFLINE"] == "1"
    assert huggingface_hub.constants.HF_HUB_OFFLINE is True
    assert datasets.config.HF_HUB_OFFLINE is True


def test_refused_connection_is_unreachable(online, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    status = hub.hub_status()
    assert not status.reachable
    assert f"127.0.0.1:{port}" in status.reason


def test_silent_endpoint_times_out(online, monkeypatch):
    server = SilentServer()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.port}")
    monkeypatch.setenv(hub.TIMEOUT_VARIABLE, "0.5")
    try:
        status = hub.hub_status()
        hub.hub_status()
    finally:
        server.close()
    assert not status.reachable
    assert "no answer within 0.5 s" in status.reason
    assert server.connections == 1


def test_corpus_reads_the_data_root_when_the_hub_is_unreachable(online, monkeypatch):
    """A named corpus never asks datasets for the hub copy once the hub is known to be unreachable."""
    import datasets

    from prunelight.data.corpora import CorpusSpec, load_corpus

    monkeypatch.setattr(hub, "_decide", lambda: hub.HubStatus(False, "http://hub", "http://hub: refused"))

    def no_hub(*args, **kwargs):
        raise AssertionError("datasets.load_dataset was called although the hub is unreachable")

    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    corpus = load_corpus(CorpusSpec(name="wikitext2"), "validation")
    assert corpus.origin.endswith("wiki.valid.raw")


def test_evaluate_with_zero_shot_falls_back_to_local_tasks(tiny_llama, tmp_path):
    """The whole command, as on a fresh machine: no offline variable, a hub endpoint that never answers.
    The hub is probed once (one connection), then perplexity and zero-shot come from the data root."""
    server = SilentServer()
    env = {k: v for k, v in os.environ.items() if k not in OFFLINE}
    env.update(
        HF_ENDPOINT=f"http://127.0.0.1:{server.port}",
        PRUNELIGHT_HUB_TIMEOUT="1",
        PYTHONPATH=str(ROOT),
        OMP_NUM_THREADS="1",
    )
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        "evaluate",
        "--model.path",
        str(tiny_llama),
        "--data.corpora",
        "[wikitext2]",
        "--data.seqlen",
        "32",
        "--data.max_windows",
        "2",
        "--zero_shot",
        f"{{tasks: [piqa, arc_easy], limit: 2, cache_dir: {tmp_path / 'cache'}}}",
        "--results_root",
        str(tmp_path),
        "--experiment",
        "offline",
        "--trainer.enable_progress_bar",
        "false",
    ]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    finally:
        server.close()
    assert done.returncode == 0, done.stderr[-3000:]
    assert "the hub is not reachable" in done.stderr
    assert server.connections == 1  # one probe, no library retrying behind it
    run = tmp_path / "tiny-llama0" / "offline"
    result = json.loads((run / "analysis" / "zeroshot_model.json").read_text())
    assert result["settings"]["source_used"] == "local"
    assert "not reachable" in result["settings"]["source_reason"]
    assert all(task["source"].startswith("local:") for task in result["tasks"].values())
    perplexity = json.loads((run / "analysis" / "perplexity.json").read_text())
    assert perplexity["corpora"]["wikitext2"]["origin"].endswith("wiki.test.raw")
