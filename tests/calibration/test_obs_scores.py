"""The obs criterion: each layer's scores are the greedy grouped OBS increases on that layer's own input
second moments (the survivor made finite; the MLP channels batched when asked), the table has the one-pass
calibration's layout, parameter counts and block influence, and the prune command runs it (with and without
lsq, batched) and refuses it for sparse pruning."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model, tiny_prune_args, tokens

from prunelight.apply.reconstruction import obs_group_scores
from prunelight.calibration.obs_scores import obs_scores_sequentially
from prunelight.calibration.sequential import Catchers
from prunelight.errors import ConfigError
from prunelight.importance import ImportanceAccumulator
from prunelight.importance.criteria.obs import SURVIVOR_FACTOR, finite_scores
from prunelight.main import main
from prunelight.models import adapter_for
from prunelight.ranking import RankingConfig, rank
from prunelight.save import load_pruned

DAMPING = 0.01


def obs_scores(model: torch.nn.Module, ids: torch.Tensor, batch_fraction: float = 0.0):
    adapter = adapter_for(model)
    with Catchers(model, adapter) as catchers, torch.no_grad():
        for batch in ids.split(2):
            model(batch, use_cache=False)
    return obs_scores_sequentially(
        model, adapter, catchers.captured, DAMPING, progress=False, batch_fraction=batch_fraction
    )


def expected(
    weight: torch.Tensor,
    inputs: list[torch.Tensor],
    groups: torch.Tensor,
    center: bool,
    batch_fraction: float = 0.0,
) -> torch.Tensor:
    """The greedy on the second moment, or on the covariance where the refit fits an intercept (a bias)."""
    x = torch.cat([i.reshape(-1, i.shape[-1]) for i in inputs]).double()
    if center:
        x = x - x.mean(dim=0)
    _, increase = obs_group_scores(weight, x.T @ x / x.shape[0], groups, DAMPING, batch_fraction)
    return finite_scores(increase)


@pytest.mark.parametrize(
    ("family", "batch_fraction"), [("llama", 0.0), ("gemma3", 0.0), ("llama", 0.25), ("gemma3", 0.25)]
)
def test_each_layers_scores_are_obs_on_its_own_dense_inputs(family, batch_fraction):
    model = make_model(family, layers=3)
    ids = tokens(batch=4)
    adapter = adapter_for(model)
    seen: dict[str, list[torch.Tensor]] = {"o": [], "down": []}
    m = adapter.modules(adapter.decoder_layers(model)[1])
    handles = [
        getattr(m, name).register_forward_pre_hook(lambda _m, args, name=name: seen[name].append(args[0]))
        for name in seen
    ]
    with torch.no_grad():
        for batch in ids.split(2):
            model(batch)
    for handle in handles:
        handle.remove()
    table = obs_scores(model, ids, batch_fraction).table
    o_groups = torch.arange(m.o.in_features).reshape(m.k.out_features // 8, -1)  # head_dim 8, GQA 2 per kv
    o_expected = expected(m.o.weight, seen["o"], o_groups, center=m.o.bias is not None)  # llama: biased o
    torch.testing.assert_close(table.attention[1], o_expected)
    down_groups = torch.arange(m.down.in_features).reshape(-1, 1)
    down_center = m.down.bias is not None
    down_expected = expected(m.down.weight, seen["down"], down_groups, down_center, batch_fraction)
    torch.testing.assert_close(table.mlp[1], down_expected)
    if batch_fraction:  # the MLP channels are batched (so their scores differ), the attention groups are not
        exact = expected(m.down.weight, seen["down"], down_groups, down_center)
        assert not torch.allclose(table.mlp[1], exact, rtol=1e-6, atol=0)
    for scores in (*table.attention, *table.mlp):
        assert torch.isfinite(scores).all() and (scores >= 0).all()
        assert scores.max() == SURVIVOR_FACTOR * scores[scores < scores.max()].max()


def test_the_table_has_the_one_pass_layout_counts_and_block_influence():
    model = make_model("llama", layers=3)
    ids = tokens(batch=4)
    calibrated = obs_scores(model, ids)
    accumulator = ImportanceAccumulator(model, adapter_for(model), "magnitude", input_means=True)
    accumulator.attach()
    with torch.no_grad():
        for batch in ids.split(2):
            model(batch)
            accumulator.count(batch.numel())
    accumulator.detach()
    reference = accumulator.result()
    table, ref = calibrated.table, reference.table
    assert [s.shape for s in table.attention] == [s.shape for s in ref.attention]
    assert [s.shape for s in table.mlp] == [s.shape for s in ref.mlp]
    assert table.attention_group_params == ref.attention_group_params
    assert table.mlp_channel_params == ref.mlp_channel_params
    assert table.layer_params == ref.layer_params and table.total_params == ref.total_params
    torch.testing.assert_close(table.block_importance, ref.block_importance, rtol=1e-5, atol=1e-7)
    assert calibrated.tokens == reference.tokens
    for layer, means in reference.input_means.items():
        for name in ("o", "down"):
            torch.testing.assert_close(calibrated.input_means[layer][name].double(), means[name].double())


@pytest.mark.parametrize(
    "config",
    [
        RankingConfig(ratio=0.3, temperature=1.0, tau=None, normalization="zscore"),
        RankingConfig(ratio=0.3, allocation="uniform", temperature=1.0, tau=0.5),
        RankingConfig(ratio=0.3, max_rate=1.0, remove_layers=1),
    ],
    ids=["global", "uniform", "remove_layers"],
)
def test_the_scores_rank_with_normalisation_and_corrections(config):
    table = obs_scores(make_model("llama", layers=3), tokens(batch=4)).table
    result = rank(table, config)
    assert result.removed_params > 0
    for layer in result.plan.layers:
        if not layer.remove_layer:
            assert len(layer.attention_groups) < len(table.attention[layer.layer])
            assert len(layer.mlp_channels) < len(table.mlp[layer.layer])


def test_the_one_pass_calibration_refuses_obs():
    from prunelight.callbacks.importance import ImportanceCallback

    with pytest.raises(ConfigError, match="layer by layer"):
        ImportanceCallback("obs")


@pytest.mark.parametrize(("method", "batch_fraction"), [("none", 0.0), ("lsq", 0.25)])
def test_the_prune_subcommand_ranks_by_obs(tiny_llama, tmp_path, monkeypatch, method, batch_fraction):
    import prunelight.stages.prune as prune_stage

    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs["batch_fraction"])
        return obs_scores_sequentially(*args, **kwargs)

    monkeypatch.setattr(prune_stage, "obs_scores_sequentially", spy)
    args = ["--importance.criterion", "obs", "--reconstruction.method", method]
    if batch_fraction:
        args += ["--reconstruction.obs_batch_fraction", str(batch_fraction)]
    main(tiny_prune_args(tiny_llama, tmp_path, *args))
    assert seen == [batch_fraction]
    run = next(tmp_path.glob("*/run"))
    assert (run / "summary.md").is_file()
    assert (run / "analysis" / "reconstruction.json").is_file() == (method == "lsq")
    model = load_pruned(run / "pruned_model")
    assert sum(p.numel() for p in model.parameters()) > 0


def test_a_sparse_obs_run_is_one_line(tiny_llama, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(
            tiny_prune_args(
                tiny_llama,
                tmp_path,
                "--importance.criterion",
                "obs",
                "--sparsity.pattern",
                "unstructured",
                "--sparsity.sparsity",
                "0.5",
            )
        )
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'obs' scores structures" in err[0]
    assert not any(tmp_path.rglob("summary.md"))
