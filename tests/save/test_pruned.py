"""Pruned folders round-trip with identical logits; non-uniform ones load through prunelight and the Auto
classes, uniform ones with plain transformers in a fresh process; generation with the KV cache equals
generation without it; a failed save leaves nothing behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import FAMILY_CONFIGS, TINY
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

import prunelight
from prunelight.apply import LayerInputMeans, apply_plan
from prunelight.errors import ConfigError, ModelError
from prunelight.models import adapter_for
from prunelight.ranking import LayerPlan, PruningPlan
from prunelight.save import load_pruned, read_layer_sizes, save_pruned

FAMILIES = sorted(FAMILY_CONFIGS)


def make_model(family: str, vocab: int, layers: int = 3) -> nn.Module:
    extra = dict(FAMILY_CONFIGS[family])
    model_type = extra.pop("model_type")
    config = AutoConfig.for_model(
        model_type, vocab_size=vocab, **{**TINY, "num_hidden_layers": layers, **extra}
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim == 1:
                parameter.add_(torch.randn_like(parameter) * 0.5)
    return model


NON_UNIFORM = PruningPlan(
    [LayerPlan(0, [1], list(range(0, 64, 3))), LayerPlan(1, [0], [7, 9]), LayerPlan(2, [], list(range(30)))]
)
UNIFORM = PruningPlan([LayerPlan(i, [i % 2], list(range(i, 64, 4))) for i in range(3)])
WITH_LAYER_REMOVED = PruningPlan([LayerPlan(0, [0], [1]), LayerPlan(1, remove_layer=True), LayerPlan(2, [1])])


def ids_for(tokenizer) -> torch.Tensor:
    text = "The pruned model must give the same logits after a round trip through the disk, every time."
    return tokenizer(text, return_tensors="pt").input_ids


def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def assert_same_model(loaded: nn.Module, original: nn.Module, ids: torch.Tensor) -> None:
    assert read_layer_sizes(loaded) == read_layer_sizes(original)
    assert torch.equal(logits(loaded, ids), logits(original, ids))


def assert_cache_consistent(model: nn.Module, tokenizer) -> None:
    prompt = ids_for(tokenizer)[:, :6]
    kwargs = dict(max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        cached = model.generate(prompt, use_cache=True, **kwargs)
        plain = model.generate(prompt, use_cache=False, **kwargs)
    assert cached.shape[1] == prompt.shape[1] + 12
    assert torch.equal(cached, plain)


@pytest.mark.parametrize("family", FAMILIES)
def test_non_uniform_round_trip(family, tiny_tokenizer, tmp_path):
    model = apply_plan(make_model(family, len(tiny_tokenizer)), NON_UNIFORM)
    folder = save_pruned(model, tiny_tokenizer, tmp_path / "pruned")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    saved = json.loads((folder / "config.json").read_text())
    stock_type = FAMILY_CONFIGS[family]["model_type"]
    assert saved["model_type"] == f"prunelight_{stock_type}"
    assert [(r["num_attention_heads"], r["intermediate_size"]) for r in saved["prunelight_layers"]] == [
        (2, 64 - 22),
        (2, 62),
        (4, 34),
    ]
    ids = ids_for(tiny_tokenizer)

    loaded = prunelight.load_pruned(folder, dtype="float32")
    assert type(loaded).__name__.startswith("Prunelight")
    assert_same_model(loaded, model, ids)
    assert_cache_consistent(loaded, tiny_tokenizer)

    auto = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert type(auto) is type(loaded)
    assert_same_model(auto, model, ids)

    bundle = prunelight.load(str(folder), dtype="float32")  # the stage loader reads the same folder
    assert bundle.adapter.family == family
    assert_same_model(bundle.model, model, ids)
    assert AutoTokenizer.from_pretrained(folder)(["x"]).input_ids == tiny_tokenizer(["x"]).input_ids


@pytest.mark.parametrize("family", FAMILIES)
def test_uniform_round_trip_keeps_the_stock_config(family, tiny_tokenizer, tmp_path):
    model = apply_plan(make_model(family, len(tiny_tokenizer)), UNIFORM)
    folder = save_pruned(model, tiny_tokenizer, tmp_path / "pruned")
    saved = json.loads((folder / "config.json").read_text())
    assert saved["model_type"] == FAMILY_CONFIGS[family]["model_type"]
    assert (saved["num_attention_heads"], saved["num_key_value_heads"]) == (2, 1)
    assert (saved["intermediate_size"], saved["head_dim"]) == (48, TINY["head_dim"])
    loaded = load_pruned(folder, dtype=torch.float32, device="cpu")
    assert type(loaded).__name__ == saved["architectures"][0] and not type(loaded).__name__.startswith(
        "Prunel"
    )
    assert_same_model(loaded, model, ids_for(tiny_tokenizer))
    assert_cache_consistent(loaded, tiny_tokenizer)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3"])
def test_layer_removal_round_trip(family, tiny_tokenizer, tmp_path):
    model = apply_plan(make_model(family, len(tiny_tokenizer)), WITH_LAYER_REMOVED)
    folder = save_pruned(model, tiny_tokenizer, tmp_path / "pruned")
    loaded = load_pruned(folder, dtype="float32")
    assert loaded.config.num_hidden_layers == 2
    assert getattr(loaded.config, "layer_types", None) == getattr(model.config, "layer_types", None)
    assert_same_model(loaded, model, ids_for(tiny_tokenizer))
    assert_cache_consistent(loaded, tiny_tokenizer)


@pytest.mark.parametrize("family", ["mistral", "qwen2"])
def test_compensated_uniform_model_round_trips_as_per_layer(family, tiny_tokenizer, tmp_path):
    model = make_model(family, len(tiny_tokenizer))
    dim = TINY["head_dim"]
    means = {i: LayerInputMeans(o=torch.randn(4 * dim), down=torch.randn(64)) for i in range(3)}
    model = apply_plan(model, UNIFORM, compensation=means)
    folder = save_pruned(model, tiny_tokenizer, tmp_path / "pruned")
    saved = json.loads((folder / "config.json").read_text())
    assert saved["model_type"].startswith("prunelight_")  # stock configs cannot give o/down a bias alone
    loaded = load_pruned(folder, dtype="float32")
    m = adapter_for(loaded).modules(adapter_for(loaded).decoder_layers(loaded)[0])
    assert m.o.bias is not None and m.down.bias is not None
    assert_same_model(loaded, model, ids_for(tiny_tokenizer))


FRESH_PROCESS = """
import sys, torch
from transformers import AutoModelForCausalLM
for folder, ids, out in zip(sys.argv[1::3], sys.argv[2::3], sys.argv[3::3]):
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        torch.save(model(torch.load(ids)).logits, out)
assert "prunelight" not in sys.modules, "the fresh process imported prunelight"
"""


def test_uniform_folders_load_with_plain_transformers_in_a_fresh_process(tiny_tokenizer, tmp_path):
    ids = ids_for(tiny_tokenizer)
    torch.save(ids, tmp_path / "ids.pt")
    args, expected = [], {}
    for family in FAMILIES:
        model = apply_plan(make_model(family, len(tiny_tokenizer)), UNIFORM)
        folder = save_pruned(model, tiny_tokenizer, tmp_path / family)
        expected[family] = logits(model, ids)
        args += [str(folder), str(tmp_path / "ids.pt"), str(tmp_path / f"{family}.pt")]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, *args], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for family in FAMILIES:
        assert torch.equal(torch.load(tmp_path / f"{family}.pt"), expected[family]), family


def test_failed_save_leaves_no_folder(tiny_tokenizer, tmp_path, monkeypatch):
    model = apply_plan(make_model("llama", len(tiny_tokenizer)), NON_UNIFORM)

    target = tmp_path / "pruned"

    def broken(folder, *args, **kwargs):
        # Written into a sibling: a reader (or a crash) never sees a half-written folder at the target.
        assert Path(folder).parent == tmp_path and Path(folder) != target and not target.exists()
        (Path(folder) / "partial.bin").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(model, "save_pretrained", broken)
    with pytest.raises(OSError, match="disk full"):
        save_pruned(model, tiny_tokenizer, target)
    assert list(tmp_path.iterdir()) == []


def test_existing_folder_is_replaced_only_on_request_and_only_when_complete(
    tiny_tokenizer, tmp_path, monkeypatch
):
    model = apply_plan(make_model("qwen2", len(tiny_tokenizer)), NON_UNIFORM)
    target = tmp_path / "pruned"
    save_pruned(model, tiny_tokenizer, target)
    before = (target / "model.safetensors").read_bytes()
    with pytest.raises(ConfigError, match="already exists"):
        save_pruned(model, tiny_tokenizer, target)

    def broken(folder, *args, **kwargs):
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(model, "save_pretrained", broken)
        with pytest.raises(OSError):
            save_pruned(model, tiny_tokenizer, target, overwrite=True)
    assert (target / "model.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["pruned"]

    apply_plan(model, PruningPlan([LayerPlan(0, [], [0, 1])]))
    save_pruned(model, tiny_tokenizer, target, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["pruned"]
    assert_same_model(load_pruned(target, dtype="float32"), model, ids_for(tiny_tokenizer))


def test_load_errors(tmp_path, tiny_tokenizer):
    with pytest.raises(ModelError, match="no config.json"):
        load_pruned(tmp_path / "missing")
    model = apply_plan(make_model("llama", len(tiny_tokenizer)), UNIFORM)
    folder = save_pruned(model, None, tmp_path / "pruned")
    with pytest.raises(ConfigError, match="not a torch dtype"):
        load_pruned(folder, dtype="float33")
    assert next(load_pruned(folder, dtype="bfloat16").parameters()).dtype == torch.bfloat16
