"""Structured pruning with layer-by-layer least-squares repair: for every family the pruned and repaired model
equals the masked dense model carrying the same repaired weights; each layer's refit is the least squares of
the inputs it actually sees (the pruned and repaired layers before it); the error never grows; the model
saves and loads exactly; the prune stage and the command line run it and refuse what it cannot serve."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import FAMILY_CONFIGS, logits, make_model, non_uniform_plan, tiny_prune_args, tokens

from prunelight.calibration.reconstruct import RECONSTRUCTIONS, reconstruct_sequentially
from prunelight.calibration.sequential import Captured, Catchers
from prunelight.errors import ConfigError
from prunelight.main import main
from prunelight.models import adapter_for
from prunelight.ranking import PruningPlan
from prunelight.save import load_pruned, save_pruned
from prunelight.stages.settings import ReconstructionSettings, SparsitySettings

FAMILIES = sorted(FAMILY_CONFIGS)
LSQ = RECONSTRUCTIONS["lsq"]


def capture(model: torch.nn.Module, ids: torch.Tensor) -> Captured:
    """The first layer's inputs and every layer's keyword arguments, two batches."""
    with Catchers(model, adapter_for(model)) as catchers, torch.no_grad():
        for batch in ids.split(ids.shape[0] // 2):
            model(batch, use_cache=False)
    return catchers.captured


def repaired(dense: torch.nn.Module, plan: PruningPlan, compensation: bool = False, damping: float = 0.01):
    model = copy.deepcopy(dense)
    report = reconstruct_sequentially(
        model,
        adapter_for(model),
        capture(model, tokens(batch=4)),
        plan,
        LSQ,
        damping,
        compensation,
        progress=False,
    )
    return model, report


def masked_with(dense: torch.nn.Module, pruned: torch.nn.Module, plan: PruningPlan) -> torch.nn.Module:
    """The dense model whose kept o/down columns carry the pruned model's weights (and biases), the removed
    ones zero: the same function as the pruned model, if removal and repair are consistent."""
    out = copy.deepcopy(dense)
    adapter = adapter_for(out)
    layout = adapter.layout(out.config)
    with torch.no_grad():
        for layer_plan in plan.layers:
            m = adapter.modules(adapter.decoder_layers(out)[layer_plan.layer])
            p = adapter.modules(adapter.decoder_layers(pruned)[layer_plan.layer])
            kept_o = [g for g in range(layout.num_kv_heads) if g not in layer_plan.attention_groups]
            per_group = layout.num_key_value_groups * layout.head_dim
            o_columns = torch.cat([torch.arange(g * per_group, (g + 1) * per_group) for g in kept_o])
            kept_down = [c for c in range(m.down.in_features) if c not in layer_plan.mlp_channels]
            for linear, new, columns in ((m.o, p.o, o_columns), (m.down, p.down, torch.tensor(kept_down))):
                weight = torch.zeros_like(linear.weight)
                weight[:, columns] = new.weight
                linear.weight.copy_(weight)
                if new.bias is not None:
                    assert linear.bias is not None, "the dense layer has no bias to carry the intercept"
                    linear.bias.copy_(new.bias)
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_repaired_model_equals_the_masked_dense_model_with_its_weights(family):
    dense = make_model(family, layers=3)
    plan = non_uniform_plan(layers=3)
    pruned, report = repaired(dense, plan)
    ids = tokens(batch=2, seed=5)
    torch.testing.assert_close(
        logits(pruned, ids), logits(masked_with(dense, pruned, plan), ids), atol=1e-5, rtol=0
    )
    changed = [e for e in report if e["o"] or e["down"]]
    assert len(changed) == 2  # the last layer keeps everything
    for entry in changed:
        for name in ("o", "down"):
            assert entry[name]["after"] < entry[name]["before"]  # the repair lowers the layer's error


def test_each_layer_is_refit_on_the_inputs_the_pruned_model_gives_it():
    """Layer 1's down_proj refit is the ridge least squares of the activations that layer 1's MLP sees in the
    pruned and repaired model (layer 0 already cut and refit), gathered here independently, against the
    dense down_proj's output on the full activation of the same inputs."""
    dense = make_model("mistral", layers=2)
    plan = non_uniform_plan(layers=2)
    plan.layers[1].mlp_channels = [1, 5, 9, 33]
    damping = 0.01
    pruned, _ = repaired(dense, plan, damping=damping)
    adapter = adapter_for(pruned)
    seen: list[torch.Tensor] = []
    mlp = adapter.decoder_layers(pruned)[1].mlp
    handle = mlp.register_forward_pre_hook(
        lambda _m, args: seen.append(args[0].reshape(-1, args[0].shape[-1]))
    )
    with torch.no_grad():
        for batch in tokens(batch=4).split(2):  # the calibration batches of ``repaired``
            pruned(batch, use_cache=False)
        handle.remove()
        x = torch.cat(seen)
        dense_mlp = adapter.decoder_layers(dense)[1].mlp
        full = (dense_mlp.act_fn(dense_mlp.gate_proj(x)) * dense_mlp.up_proj(x)).double()
    keep = torch.tensor([c for c in range(full.shape[1]) if c not in plan.layers[1].mlp_channels])
    w = dense_mlp.down_proj.weight.double()
    h = full.T @ full / full.shape[0]
    lam = damping * h.diagonal().mean()
    expected = torch.linalg.solve(
        h[keep][:, keep] + lam * torch.eye(len(keep)), (w @ h[:, keep] + lam * w[:, keep]).T
    ).T
    down = adapter.modules(adapter.decoder_layers(pruned)[1]).down
    torch.testing.assert_close(down.weight.double(), expected, atol=1e-5, rtol=1e-5)
    # and not the refit on the dense model's own layer-1 activations (layer 0 uncut)
    seen.clear()
    handle = adapter.decoder_layers(dense)[1].mlp.register_forward_pre_hook(
        lambda _m, args: seen.append(args[0].reshape(-1, args[0].shape[-1]))
    )
    with torch.no_grad():
        for batch in tokens(batch=4).split(2):
            dense(batch, use_cache=False)
    handle.remove()
    assert not torch.allclose(torch.cat(seen), x, atol=1e-3)


@pytest.mark.parametrize("family", ["mistral", "llama"])
def test_with_compensation_the_bias_is_the_intercept_and_the_model_reloads_exactly(tmp_path, family):
    dense = make_model(family, layers=2)
    plan = non_uniform_plan(layers=2)
    pruned, report = repaired(dense, plan, compensation=True)
    adapter = adapter_for(pruned)
    first = adapter.modules(adapter.decoder_layers(pruned)[0])
    assert first.o.bias is not None and first.down.bias is not None  # created for the intercept (mistral)
    assert all(e["o"]["after"] <= e["o"]["before"] for e in report if e["o"])
    ids = tokens(batch=2, seed=7)
    save_pruned(pruned, None, tmp_path / "model")
    torch.testing.assert_close(
        logits(load_pruned(tmp_path / "model"), ids), logits(pruned, ids), atol=0, rtol=0
    )


def test_removed_layers_are_skipped_and_dropped():
    dense = make_model("qwen2", layers=3)
    plan = non_uniform_plan(layers=3)
    plan.layers[1].remove_layer = True
    pruned, report = repaired(dense, plan)
    assert pruned.config.num_hidden_layers == 2 and report[1]["removed"]
    assert report[0]["o"] is not None and report[2]["o"] is None


def test_settings_refuse_what_reconstruction_cannot_serve():
    with pytest.raises(ConfigError, match="damping must be >= 0"):
        ReconstructionSettings("lsq", damping=-0.1)
    for fraction in (-0.5, 1.5, float("nan")):
        with pytest.raises(ConfigError, match=r"obs_batch_fraction must be in \[0, 1\]") as raised:
            ReconstructionSettings(obs_batch_fraction=fraction)
        assert "\n" not in str(raised.value)
    assert ReconstructionSettings(obs_batch_fraction=1 / 64).obs_batch_fraction == 1 / 64
    from prunelight.stages.settings import PruneSettings

    with pytest.raises(ConfigError, match="repairs structured pruning"):
        PruneSettings(
            sparsity=SparsitySettings("unstructured", 0.5), reconstruction=ReconstructionSettings("lsq")
        )


def test_the_prune_subcommand_repairs_and_reports(tiny_llama, tmp_path):
    main(tiny_prune_args(tiny_llama, tmp_path, "--reconstruction.method", "lsq", "--compensation", "true"))
    run = next(tmp_path.glob("*/run"))
    layers = json.loads((run / "analysis" / "reconstruction.json").read_text())["layers"]
    assert any(e["o"] for e in layers) and all(e["o"]["after"] <= e["o"]["before"] for e in layers if e["o"])
    report = json.loads((run / "analysis" / "prune.json").read_text())
    assert report["reconstruction"]["method"] == "lsq" and report["reconstruction"]["mean_error"]["down"]
    assert "reconstruction: lsq" in (run / "summary.md").read_text()
    model = load_pruned(run / "pruned_model")
    assert model.config.num_hidden_layers == 2


def test_a_sparse_run_with_reconstruction_is_one_line(tiny_llama, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(
            tiny_prune_args(
                tiny_llama,
                tmp_path,
                "--importance.criterion",
                "wanda",
                "--sparsity.pattern",
                "unstructured",
                "--sparsity.sparsity",
                "0.5",
                "--reconstruction.method",
                "lsq",
            )
        )
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "repairs structured pruning" in err[0]
    assert not any(tmp_path.rglob("summary.md"))


def test_too_few_calibration_tokens_per_refit_column_are_warned_about(caplog):
    """Fewer tokens than TOKENS_PER_INPUT per input column of the widest refit projection: one warning that
    names the count to reach; enough tokens: none."""
    from prunelight.calibration.reconstruct import TOKENS_PER_INPUT, warn_if_few_tokens

    model = make_model("llama")
    adapter = adapter_for(model)
    m = adapter.modules(adapter.decoder_layers(model)[0])
    widest = max(m.o.in_features, m.down.in_features)
    with caplog.at_level("WARNING", logger="prunelight.calibration.reconstruct"):
        warn_if_few_tokens(TOKENS_PER_INPUT * widest - 1, model, adapter)
    assert len(caplog.records) == 1 and f"at least {TOKENS_PER_INPUT * widest}" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="prunelight.calibration.reconstruct"):
        warn_if_few_tokens(TOKENS_PER_INPUT * widest, model, adapter)
    assert not caplog.records
