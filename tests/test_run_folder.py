"""No run is ever lost or half-written: refusal of a finished run, --overwrite, errors and signals.

Each end-to-end test starts from one finished prune run of a tiny model (made once, copied per test) and
checks that every byte of it survives what the test does to the same folder.
"""

from __future__ import annotations

import hashlib
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, tiny_prune_args

from prunelight.errors import ConfigError
from prunelight.main import main
from prunelight.run_folder import RunFolder
from prunelight.signals import Stopped


def _args(model: Path, root: Path, *extra: str) -> list[str]:
    return tiny_prune_args(model, root, *extra)


def _fingerprint(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (and every folder, as "dir") with the sha256 of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(folder.rglob("*"))
    }


@pytest.fixture(scope="module")
def finished(tiny_llama, tmp_path_factory) -> Path:
    """The results root of one finished prune run (``<root>/<model>/run``)."""
    root = tmp_path_factory.mktemp("finished") / "results"
    main(_args(tiny_llama, root))
    assert (root / tiny_llama.name / "run" / "summary.md").is_file()
    return root


@pytest.fixture
def earlier(finished, tmp_path) -> tuple[Path, Path, dict[str, str]]:
    """A fresh copy of the finished run: (results root, run folder, fingerprint)."""
    root = tmp_path / "results"
    shutil.copytree(finished, root)
    (run,) = (root / p.name / "run" for p in finished.iterdir())
    return root, run, _fingerprint(run)


def _untouched(run: Path, fingerprint: dict[str, str]) -> None:
    """The earlier run is byte for byte what it was, and nothing lies beside it (no staging folder)."""
    assert _fingerprint(run) == fingerprint
    assert [p.name for p in run.parent.iterdir()] == ["run"]


def test_a_rerun_is_refused_at_once_and_keeps_the_first_run(tiny_llama, earlier, capsys, monkeypatch):
    root, run, fingerprint = earlier

    def no_weights(*args, **kwargs):
        raise AssertionError("the refusal must come before any model weights load")

    monkeypatch.setattr("prunelight.models.module.load_weights", no_weights)
    start = time.perf_counter()
    with pytest.raises(SystemExit) as exit_:
        main(_args(tiny_llama, root, "--ranking.ratio", "0.5"))
    assert exit_.value.code == 2
    assert time.perf_counter() - start < 30
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"prunelight: error: {run} already holds a run")
    assert "--overwrite true" in err[0] and "--experiment" in err[0]
    _untouched(run, fingerprint)


def test_overwrite_replaces_the_run_once_the_new_one_completed(tiny_llama, earlier):
    root, run, fingerprint = earlier
    main(_args(tiny_llama, root, "--overwrite", "true", "--ranking.ratio", "0.5"))
    replaced = _fingerprint(run)
    assert "summary.md" in replaced and [p.name for p in run.parent.iterdir()] == ["run"]
    # nothing of the earlier run is left in it: every TensorBoard event file and every report is new
    old_events = {name for name in fingerprint if "events.out.tfevents" in name}
    new_events = {name for name in replaced if "events.out.tfevents" in name}
    assert new_events and not old_events & new_events
    assert replaced["analysis/plan.json"] != fingerprint["analysis/plan.json"]
    config = (run / "tb" / "config.yaml").read_text()
    assert "ratio: 0.5" in config
    assert "overwrite: false" in config  # rerunning the saved config never replaces a run by surprise


def _late_config_error(monkeypatch, calls: list[Path]) -> None:
    """The rank step fails with a ConfigError, after calibration ran into the staging folder."""
    from prunelight.loops import calibrate

    def recorded(trainer, *args, **kwargs):
        result = calibrate(trainer, *args, **kwargs)
        calls.append(Path(trainer.default_root_dir))
        return result

    def fail(*args, **kwargs):
        raise ConfigError("a setting only the ranking can check")

    monkeypatch.setattr("prunelight.stages.prune.calibrate", recorded)
    monkeypatch.setattr("prunelight.stages.prune.rank", fail)


def _crash_while_saving(monkeypatch, calls: list[Path]) -> None:
    def crash(model, tokenizer, folder, **kwargs):
        calls.append(Path(folder))
        raise RuntimeError("disk full")

    monkeypatch.setattr("prunelight.stages.prune.save_pruned", crash)


@pytest.mark.parametrize("failure", [_late_config_error, _crash_while_saving], ids=["config-error", "crash"])
def test_a_failing_overwrite_run_leaves_the_earlier_run_and_no_staging(
    tiny_llama, earlier, capsys, monkeypatch, failure
):
    root, run, fingerprint = earlier
    calls: list[Path] = []
    failure(monkeypatch, calls)
    args = _args(tiny_llama, root, "--overwrite", "true")
    if failure is _late_config_error:
        with pytest.raises(SystemExit) as exit_:
            main(args)
        assert exit_.value.code == 2
        assert capsys.readouterr().err.strip().endswith("a setting only the ranking can check")
    else:
        with pytest.raises(RuntimeError, match="disk full"):
            main(args)
    # the failure came late, in the staging folder, which had calibration results by then
    assert calls and run.parent / ".run.partial" in [calls[0], *calls[0].parents]
    _untouched(run, fingerprint)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_a_prune_at_once_and_leaves_the_earlier_run(tiny_llama, earlier, signum):
    """A prune run (a subprocess, --overwrite into the finished run) stopped during its calibration exits
    128 + signal within seconds, with one line, and the earlier run is as it was."""
    root, run, fingerprint = earlier
    args = _args(tiny_llama, root, "--overwrite", "true", "--data.nsamples", "3000", "--data.batch_size", "1")
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    staging = run.parent / ".run.partial"
    try:
        deadline = time.monotonic() + 180
        while not list((staging / "tb").glob("events.out.tfevents.*")):  # calibration's test loop started
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the run never reached its calibration"
            time.sleep(0.1)
        time.sleep(1.5)
        assert proc.poll() is None, "the run ended before the signal: give it more calibration windows"
        start = time.monotonic()
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
        seconds = time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    name = signal.Signals(signum).name
    assert proc.returncode == 128 + signum, err
    assert seconds < 10, seconds
    assert err.strip().splitlines()[-1] == f"prunelight: stopped by {name}; nothing was written to {run}"
    assert "Traceback" not in err
    _untouched(run, fingerprint)
    # and the console showed the run, not Lightning's noise
    console = out + err
    assert "Tip:" not in console and "args parameter" not in console, console


def _write_run(folder: Path, checkpoint: bool = False) -> None:
    (folder / "analysis").mkdir(parents=True)
    (folder / "analysis" / "prune.json").write_text("{}")
    if checkpoint:
        (folder / "checkpoints").mkdir()
        (folder / "checkpoints" / "last.ckpt").write_text("weights")
    (folder / "summary.md").write_text("# done")


def test_an_interrupted_run_keeps_only_its_checkpoints_until_a_run_that_does_not_resume(tmp_path, capsys):
    final = tmp_path / "results" / "model" / "lora"
    with pytest.raises(Stopped), RunFolder(final).staged(owner=True) as staging:
        _write_run(staging, checkpoint=True)
        (staging / "summary.md").unlink()
        raise Stopped(signal.SIGTERM)
    kept = final.parent / ".lora.partial"
    assert not final.exists()
    assert _fingerprint(kept) == {"checkpoints": "dir", "checkpoints/last.ckpt": _sha("weights")}
    assert f"--ckpt_path {kept / 'checkpoints' / 'last.ckpt'}" in capsys.readouterr().err

    # resuming from the kept checkpoint: it is still there for the run, which then completes
    resumed = RunFolder(final, resume_from=str(kept / "checkpoints" / "last.ckpt"))
    resumed.check()
    with resumed.staged(owner=True) as staging:
        assert (staging / "checkpoints" / "last.ckpt").read_text() == "weights"
        (staging / "summary.md").write_text("# resumed")
    assert (final / "summary.md").read_text() == "# resumed" and not kept.exists()

    # a stale staging folder of another run is cleared when the next run does not resume from it
    other = tmp_path / "results" / "model" / "other"
    with pytest.raises(RuntimeError), RunFolder(other).staged(owner=True) as staging:
        _write_run(staging, checkpoint=True)
        raise RuntimeError("crash")
    with RunFolder(other).staged(owner=True) as staging:
        assert list(staging.iterdir()) == []
        (staging / "summary.md").write_text("# fresh")
    assert _fingerprint(other) == {"summary.md": _sha("# fresh")}


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_a_failed_run_removes_the_folders_it_created(tmp_path):
    final = tmp_path / "results" / "model" / "run"
    with pytest.raises(RuntimeError), RunFolder(final).staged(owner=True) as staging:
        _write_run(staging)
        raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []


def test_other_ranks_neither_create_nor_rename(tmp_path):
    """Under DDP, rank 0 owns the folders; another rank passes the check and touches nothing."""
    final = tmp_path / "model" / "run"
    folder = RunFolder(final)
    folder.check()
    with folder.staged(owner=False) as staging:
        assert not staging.exists()
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_run_folders_only(tmp_path):
    stranger = tmp_path / "home"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a prunelight run folder"):
        RunFolder(stranger, overwrite=True).check()
    with pytest.raises(ConfigError, match="already holds a run"):
        RunFolder(stranger).check()
    (tmp_path / "empty").mkdir()
    with RunFolder(tmp_path / "empty").staged(owner=True) as staging:  # an empty folder is no run
        _write_run(staging)
    assert (tmp_path / "empty" / "summary.md").is_file()
    assert (stranger / "notes.txt").read_text() == "mine"


def test_a_signal_during_the_renames_waits_for_them(tmp_path, monkeypatch):
    """SIGTERM between the renames of --overwrite would leave no run: it is held until both are done, then
    stops the program without claiming that nothing was written."""
    import os

    from prunelight.signals import stop_on_signals

    final = tmp_path / "run"
    _write_run(final)
    commit = RunFolder._commit

    def signalled(self):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
        commit(self)

    monkeypatch.setattr(RunFolder, "_commit", signalled)
    with pytest.raises(Stopped) as stop, stop_on_signals():
        folder = RunFolder(final, overwrite=True)
        folder.check()
        with folder.staged(owner=True) as staging:
            (staging / "summary.md").write_text("# new")
    assert stop.value.folder is None
    assert _fingerprint(final) == {"summary.md": _sha("# new")}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
