"""Depth pruning with repair (ReplaceMe, training-free): a span of removed layers is replaced by the
least-squares linear map of the preceding kept layer's MLP output, folded into its down_proj. When the span's
residual update is an exact linear function of that MLP output the fold reproduces the dense model exactly;
otherwise the map lowers the span's output error; the pruned model saves and loads exactly; the prune stage
runs it with and without the groups' refit."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import logits, make_model, non_uniform_plan, tiny_prune_args, tokens

from prunelight.apply import apply_plan
from prunelight.calibration.reconstruct import RECONSTRUCTIONS, reconstruct_sequentially
from prunelight.calibration.sequential import Captured, Catchers
from prunelight.errors import ConfigError
from prunelight.main import main
from prunelight.models import adapter_for
from prunelight.ranking import LayerPlan, PruningPlan
from prunelight.save import load_pruned, save_pruned
from prunelight.stages.settings import PruneSettings, ReconstructionSettings, SparsitySettings

LSQ = RECONSTRUCTIONS["lsq"]


def capture(model: torch.nn.Module, ids: torch.Tensor, batches: int = 2) -> Captured:
    with Catchers(model, adapter_for(model)) as catchers, torch.no_grad():
        for batch in ids.split(ids.shape[0] // batches):
            model(batch, use_cache=False)
    return catchers.captured


def remove(layers: int, *removed: int) -> PruningPlan:
    return PruningPlan([LayerPlan(i, remove_layer=i in removed) for i in range(layers)])


def test_a_span_whose_update_is_linear_in_the_mlp_output_is_folded_exactly():
    """Layer 1 is made to return ``h + M0 A`` (its o_proj and down_proj zero, a hook adds ``M0 A`` with
    ``M0`` the MLP output of layer 0 on the same batch), so ``h_out = h_in - M0 + M0 (I + A)`` exactly. The
    undamped map must then be ``T = I + A``, layer 0's down_proj ``(I + A)^T W``, and the model without
    layer 1 must give the dense model's logits, also on tokens it was not calibrated on."""
    torch.manual_seed(0)
    dense = make_model("llama", layers=3)
    adapter = adapter_for(dense)
    layers = adapter.decoder_layers(dense)
    width = dense.config.hidden_size
    A = torch.randn(width, width)
    with torch.no_grad():
        adapter.modules(layers[0]).down.weight.mul_(20)  # an MLP output that matters against the residual
        for linear in (adapter.modules(layers[1]).o, adapter.modules(layers[1]).down):
            linear.weight.zero_()
            if linear.bias is not None:
                linear.bias.zero_()
    last: dict[str, torch.Tensor] = {}
    layers[0].mlp.register_forward_hook(lambda _m, _a, out: last.__setitem__("m", out))

    def add_map(_module, _args, out):
        if isinstance(out, tuple):
            return (out[0] + last["m"] @ A, *out[1:])
        return out + last["m"] @ A

    layers[1].register_forward_hook(add_map)
    ids = tokens(batch=4, seed=3)
    expected = logits(dense, ids)
    unseen = tokens(batch=2, seed=11)
    expected_unseen = logits(dense, unseen)
    skipped = copy.deepcopy(dense)
    apply_plan(skipped, remove(3, 1))
    assert not torch.allclose(logits(skipped, unseen), expected_unseen, atol=1e-2)  # the map is needed

    pruned = dense  # one calibration batch: layer 1's hook pairs with layer 0's MLP output of that batch
    down = adapter.modules(layers[0]).down.weight.detach().clone()
    report = reconstruct_sequentially(
        pruned, adapter, capture(pruned, ids, batches=1), remove(3, 1), None, 0.0, False, progress=False,
        layer_map="lsq",
    )  # fmt: skip
    assert pruned.config.num_hidden_layers == 2
    T = torch.eye(width) + A
    torch.testing.assert_close(adapter.modules(layers[0]).down.weight, T.T @ down, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(logits(pruned, ids), expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits(pruned, unseen), expected_unseen, atol=1e-4, rtol=1e-4)
    entry = report[1]["map"]
    assert entry["span"] == [1, 2] and entry["into_layer"] == 0 and entry["tokens"] == ids.numel()
    assert entry["after"] < 1e-9 and entry["fit"] < 1e-9 and entry["before"] > 1e-2


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_the_map_lowers_the_span_error_and_the_model_reloads_exactly(tmp_path, family):
    """With layers 1-2 of 4 removed (one span), the map's output error against the dense span is below the
    skipped span's, on the calibration tokens as reported and on the pruned model's layer-0 output; groups
    of the kept layers are refit as before; the pruned model saves and loads exactly."""
    dense = make_model(family, layers=4)
    plan = non_uniform_plan(layers=4)
    for i in (1, 2):
        plan.layers[i] = LayerPlan(i, remove_layer=True)
    model = copy.deepcopy(dense)
    ids = tokens(batch=4)
    report = reconstruct_sequentially(
        model, adapter_for(model), capture(model, ids), plan, LSQ, 0.01, False, progress=False,
        layer_map="lsq",
    )  # fmt: skip
    assert model.config.num_hidden_layers == 2
    span = report[1]["map"]
    assert span["span"] == [1, 3] and span["into_layer"] == 0 and report[2].get("map") is None
    assert span["after"] < span["before"] and span["fit"] < 1
    assert report[0]["down"]["after"] < report[0]["down"]["before"]
    json.dumps(report)

    # measured independently: the dense span output vs the pruned model's layer-0 output, fresh tokens
    held = tokens(batch=2, seed=9)
    with torch.no_grad():
        dense_states = dense(held, output_hidden_states=True).hidden_states
        skipped = copy.deepcopy(dense)
        apply_plan(skipped, plan)
        skipped_states = skipped(held, output_hidden_states=True).hidden_states
        pruned_states = model(held, output_hidden_states=True).hidden_states
    target = dense_states[3]  # output of layer 2, the span's last
    error = ((pruned_states[1] - target).square().sum() / target.square().sum()).item()
    error_skipped = ((skipped_states[1] - target).square().sum() / target.square().sum()).item()
    assert error < error_skipped

    save_pruned(model, None, tmp_path / "model")
    torch.testing.assert_close(
        logits(load_pruned(tmp_path / "model"), held), logits(model, held), atol=0, rtol=0
    )


def test_without_a_method_the_groups_are_removed_without_a_refit():
    """method None, layers none: the same model as apply_plan; with the map, only layer 0's down_proj
    differs (the fold) from apply_plan's, and a span at layer 0 is skipped with a note."""
    dense = make_model("mistral", layers=3)
    plan = non_uniform_plan(layers=3)
    expected = copy.deepcopy(dense)
    apply_plan(expected, plan)
    model = copy.deepcopy(dense)
    report = reconstruct_sequentially(
        model, adapter_for(model), capture(model, tokens(batch=4)), plan, None, 0.01, False, progress=False
    )
    ids = tokens(batch=2, seed=5)
    torch.testing.assert_close(logits(model, ids), logits(expected, ids), atol=0, rtol=0)
    assert all(e["o"] is None and e["down"] is None for e in report)

    plan.layers[1] = LayerPlan(1, remove_layer=True)
    expected = copy.deepcopy(dense)
    apply_plan(expected, plan)
    model = copy.deepcopy(dense)
    report = reconstruct_sequentially(
        model, adapter_for(model), capture(model, tokens(batch=4)), plan, None, 0.01, False, progress=False,
        layer_map="lsq",
    )  # fmt: skip
    got, want = model.state_dict(), expected.state_dict()
    changed = [k for k in want if not torch.equal(got[k], want[k])]
    assert changed == ["model.layers.0.mlp.down_proj.weight"]
    assert report[1]["map"]["after"] < report[1]["map"]["before"]

    model = copy.deepcopy(dense)
    report = reconstruct_sequentially(
        model, adapter_for(model), capture(model, tokens(batch=4)), remove(3, 0), None, 0.01, False,
        progress=False, layer_map="lsq",
    )  # fmt: skip
    assert "skipped" in report[0]["map"] and model.config.num_hidden_layers == 2


def test_what_the_map_cannot_serve_is_refused():
    model = make_model("gemma2", layers=3)
    with pytest.raises(ConfigError, match="normalises the MLP output"):
        reconstruct_sequentially(
            model, adapter_for(model), capture(model, tokens(batch=2)), remove(3, 1), None, 0.0, False,
            progress=False, layer_map="lsq",
        )  # fmt: skip
    with pytest.raises(ConfigError, match="reconstruction.layers must be one of"):
        ReconstructionSettings(layers="cosine")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="repairs structured pruning"):
        PruneSettings(
            sparsity=SparsitySettings("unstructured", 0.5),
            reconstruction=ReconstructionSettings(layers="lsq"),
        )


@pytest.mark.parametrize("method", ["none", "lsq"])
def test_the_prune_subcommand_maps_removed_layers_and_reports(tiny_llama, tmp_path, method):
    args = (
        "--ranking.remove_layers",
        "1",
        "--ranking.protected_layers",
        "[0]",
        "--reconstruction.layers",
        "lsq",
        "--reconstruction.method",
        method,
    )
    main(tiny_prune_args(tiny_llama, tmp_path, *args))
    run = next(tmp_path.glob("*/run"))
    layers = json.loads((run / "analysis" / "reconstruction.json").read_text())["layers"]
    maps = [e["map"] for e in layers if e.get("map")]
    assert len(maps) == 1 and maps[0]["into_layer"] == 0 and maps[0]["after"] < maps[0]["before"]
    report = json.loads((run / "analysis" / "prune.json").read_text())
    assert report["reconstruction"]["layers"] == "lsq" and report["reconstruction"]["mean_error"]["map"]
    assert "layer map" in (run / "summary.md").read_text()
    model = load_pruned(run / "pruned_model")
    assert model.config.num_hidden_layers == 1
