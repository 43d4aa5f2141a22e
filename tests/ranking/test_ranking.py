"""Ranking stage: normalisation, the T and tau corrections, allocation under constraints, errors.

Pure tensors: every table here is made by hand, so each expectation can be computed independently.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from prunelight.errors import ConfigError
from prunelight.ranking import GroupTable, PruningPlan, RankingConfig, rank

KINDS = ("attention", "mlp")


def make_table(
    attention: list[torch.Tensor],
    mlp: list[torch.Tensor],
    attention_params: list[int] | int = 10,
    mlp_params: list[int] | int = 3,
    block_importance: list[float] | None = None,
    layer_params: list[int] | None = None,
    total_params: int | None = None,
) -> GroupTable:
    n = len(attention)
    ap = attention_params if isinstance(attention_params, list) else [attention_params] * n
    mp = mlp_params if isinstance(mlp_params, list) else [mlp_params] * n
    prunable = sum(len(a) * p for a, p in zip(attention, ap, strict=True)) + sum(
        len(m) * p for m, p in zip(mlp, mp, strict=True)
    )
    if layer_params is None:
        layer_params = [
            len(a) * p + len(m) * q + 7 for a, m, p, q in zip(attention, mlp, ap, mp, strict=True)
        ]
    return GroupTable(
        attention=attention,
        mlp=mlp,
        attention_group_params=ap,
        mlp_channel_params=mp,
        layer_params=layer_params,
        total_params=total_params if total_params is not None else prunable * 2,
        block_importance=None if block_importance is None else torch.tensor(block_importance),
    )


def random_table(
    layers: int = 4,
    heads: int = 8,
    channels: int = 32,
    scales: list[float] | None = None,
    seed: int = 0,
    **kwargs,
) -> GroupTable:
    g = torch.Generator().manual_seed(seed)
    scales = scales or [1.0] * layers
    attention = [torch.rand(heads, generator=g, dtype=torch.float64) * s for s in scales]
    mlp = [torch.rand(channels, generator=g, dtype=torch.float64) * s for s in scales]
    return make_table(attention, mlp, **kwargs)


def removed_counts(result, kind: str) -> list[int]:
    alloc = result.stages[kind]["allocation"]
    return [b - a for b, a in zip(alloc["groups_before"], alloc["groups_after"], strict=True)]


def plan_groups(plan: PruningPlan, kind: str) -> list[list[int]]:
    return [p.attention_groups if kind == "attention" else p.mlp_channels for p in plan.layers]


def kind_share(table: GroupTable, ratio: float, kind: str) -> float:
    target = round(ratio * table.prunable_params())
    own = sum(len(s) * p for s, p in zip(table.scores(kind), table.group_params(kind), strict=True))
    return target * own / table.prunable_params()


# --- the corrections --------------------------------------------------------------------------------------


def test_no_corrections_is_the_raw_global_ranking():
    table = random_table(
        layers=5, scales=[0.8, 1, 1.2, 1, 1.1], attention_params=[10, 10, 12, 10, 10], seed=1
    )
    result = rank(table, RankingConfig(ratio=0.3))
    for kind in KINDS:
        share = kind_share(table, 0.3, kind)
        entries = sorted(
            (float(score), layer, index)
            for layer, s in enumerate(table.scores(kind))
            for index, score in enumerate(s)
        )
        expected: list[list[int]] = [[] for _ in range(table.num_layers)]
        removed = 0
        for _, layer, index in entries:
            if removed >= share:
                break
            expected[layer].append(index)
            removed += table.group_params(kind)[layer]
        # No layer is emptied, so the at-least-one rule does not interfere with the hand ranking.
        assert all(len(e) < len(s) for e, s in zip(expected, table.scores(kind), strict=True))
        assert plan_groups(result.plan, kind) == [sorted(e) for e in expected]
        assert result.tau[kind] == 0.0


def test_tau_one_equalises_layer_means():
    table = random_table(scales=[1e-3, 1e-1, 1e1, 1e2])
    result = rank(table, RankingConfig(tau=1.0))
    for kind in KINDS:
        before = result.stages[kind]["block"]["mean"]
        after = result.stages[kind]["layer"]["mean"]
        assert max(before) / min(before) > 1e4
        assert after == pytest.approx([after[0]] * len(after), rel=1e-12)


def test_adaptive_tau_meets_its_bound_and_is_the_smallest_such_tau():
    table = random_table(scales=[1e-3, 1e-1, 1e1, 1e2])
    result = rank(table, RankingConfig(tau=None, adaptive_tau_factor=10.0))
    for kind in KINDS:
        tau = result.tau[kind]
        assert 0 < tau < 1
        means = result.stages[kind]["layer"]["mean"]
        assert max(means) / min(means) <= 10.0 * (1 + 1e-9)
        block = result.stages[kind]["block"]["mean"]
        ratio = max(block) / min(block)
        assert ratio ** (1 - (tau - 0.01)) > 10.0  # any smaller tau would not meet the bound
        assert result.stages[kind]["tau"] == tau


def test_adaptive_tau_is_zero_when_already_within_the_bound():
    table = random_table(scales=[1.0, 2.0, 3.0, 4.0])
    result = rank(table, RankingConfig(tau=None, adaptive_tau_factor=10.0))
    assert result.tau == {"attention": 0.0, "mlp": 0.0}
    for kind in KINDS:
        assert result.stages[kind]["layer"]["mean"] == result.stages[kind]["block"]["mean"]


def test_temperature_multiplies_by_relative_block_importance_to_the_power_t():
    b = [1.0, 2.0, 3.0, 6.0]
    table = random_table(block_importance=b)
    result = rank(table, RankingConfig(temperature=2.0))
    weights = [(x / (sum(b) / len(b))) ** 2 for x in b]
    assert result.stages["layers"]["block_weight"] == pytest.approx(weights, rel=1e-12)
    for kind in KINDS:
        for stat in ("mean", "min", "max", "std"):
            norm = result.stages[kind]["normalized"][stat]
            block = result.stages[kind]["block"][stat]
            assert block == pytest.approx([v * w for v, w in zip(norm, weights, strict=True)], rel=1e-12)


def test_depth_weight_keeps_early_layers():
    table = random_table(layers=5)
    result = rank(table, RankingConfig(depth_weight=1.0))
    factors = [1 + (4 - layer) / 4 for layer in range(5)]
    assert result.stages["layers"]["depth_factor"] == pytest.approx(factors)
    for kind in KINDS:
        layer = result.stages[kind]["layer"]["mean"]
        depth = result.stages[kind]["depth"]["mean"]
        assert depth == pytest.approx([m * f for m, f in zip(layer, factors, strict=True)], rel=1e-12)


def test_raw_ranking_wipes_early_layers_tau_one_does_not():
    table = random_table(heads=8, channels=64, scales=[1e-3, 1e-1, 1e1, 1e2], seed=3)
    raw = rank(table, RankingConfig(ratio=0.25))
    corrected = rank(table, RankingConfig(ratio=0.25, tau=1.0))
    for kind in KINDS:
        n = len(table.scores(kind)[0])
        raw_rates = raw.stages[kind]["allocation"]["rate"]
        assert removed_counts(raw, kind)[0] == n - 1  # layer 0 loses all it may lose
        assert raw_rates[3] == 0.0
        rates = corrected.stages[kind]["allocation"]["rate"]
        assert rates[0] < 0.5
        assert max(rates) - min(rates) < 0.5


# --- normalisation ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["none", "minmax", "zscore", "log", "sqrt"])
def test_normalisation_keeps_scores_usable_and_never_nan(method):
    attention = [
        torch.full((4,), 2.0),
        torch.tensor([0.0, 1.0, 2.0, 8.0]),
        torch.tensor([5.0, 1.0, 3.0, 3.0]),
    ]
    mlp = [torch.tensor([1.0, 2.0, 3.0, 4.0, 100.0]), torch.full((5,), 0.5), torch.arange(5.0)]
    result = rank(make_table(attention, mlp), RankingConfig(normalization=method, tau=1.0, ratio=0.3))
    for kind in KINDS:
        for stage in ("normalized", "layer", "depth"):
            for stat, values in result.stages[kind][stage].items():
                assert all(math.isfinite(v) for v in values), (stage, stat)
        assert min(result.stages[kind]["normalized"]["min"]) >= 0
        assert min(result.stages[kind]["normalized"]["mean"]) > 0
    json.dumps(result.to_dict())


def test_minmax_and_zscore_definitions():
    attention = [torch.tensor([1.0, 3.0, 5.0]), torch.tensor([10.0, 10.0, 10.0])]
    mlp = [torch.tensor([0.0, 4.0]), torch.tensor([2.0, 6.0])]
    table = make_table(attention, mlp)
    minmax = rank(table, RankingConfig(normalization="minmax", ratio=0.0)).stages["attention"]["normalized"]
    assert minmax["min"] == pytest.approx([1e-6, 0.5 + 1e-6])
    assert minmax["max"] == pytest.approx([1 + 1e-6, 0.5 + 1e-6])
    zscore = rank(table, RankingConfig(normalization="zscore", ratio=0.0)).stages["attention"]["normalized"]
    # z of layer 0 is (-1.22, 0, 1.22), layer 1 is constant (0); shifted so the lowest is 1.
    assert zscore["min"] == pytest.approx([1.0, 1 + math.sqrt(1.5)])
    assert zscore["mean"] == pytest.approx([1 + math.sqrt(1.5)] * 2)


def test_clip_percentiles_clamps_outliers_before_normalising():
    mlp = [torch.cat([torch.arange(1.0, 100.0), torch.tensor([1e6])])]
    table = make_table([torch.tensor([1.0, 2.0])], mlp)
    result = rank(table, RankingConfig(clip_percentiles=(5, 95), ratio=0.1))
    stage = result.stages["mlp"]["normalized"]
    assert stage["max"][0] == pytest.approx(float(torch.quantile(mlp[0].double(), 0.95)))
    assert stage["min"][0] == pytest.approx(float(torch.quantile(mlp[0].double(), 0.05)))
    assert result.stages["mlp"]["raw"]["max"][0] == 1e6


def test_ties_break_by_layer_then_index():
    table = make_table([torch.ones(4)] * 3, [torch.ones(6)] * 3)
    result = rank(table, RankingConfig(ratio=0.3))
    # Target 52 of 174: attention's share 35.9 -> 4 groups of 10, mlp's 16.1 -> 6 channels of 3. Layer 0
    # gives all it may (one group stays), then layer 1 its first index.
    assert plan_groups(result.plan, "attention") == [[0, 1, 2], [0], []]
    assert plan_groups(result.plan, "mlp") == [[0, 1, 2, 3, 4], [0], []]


# --- allocation and constraints ----------------------------------------------------------------------------


@pytest.mark.parametrize("allocation", ["global", "uniform"])
@pytest.mark.parametrize("ratio", [0.05, 0.2, 0.37, 0.5])
def test_reached_within_one_group_of_the_target(allocation, ratio):
    table = random_table(
        layers=6, scales=[1, 5, 0.2, 3, 1, 8], attention_params=[10, 12, 10, 10, 14, 10], mlp_params=3, seed=2
    )
    result = rank(table, RankingConfig(ratio=ratio, allocation=allocation))
    assert result.target_params == round(ratio * table.prunable_params())
    for kind in KINDS:
        share = kind_share(table, ratio, kind)
        removed = result.stages[kind]["removed_params"]
        assert removed == sum(
            len(g) * p for g, p in zip(plan_groups(result.plan, kind), table.group_params(kind), strict=True)
        )
        assert 0 <= removed - share < max(table.group_params(kind))
    assert result.removed_params - result.target_params < 14 + 3
    assert result.removed_params >= result.target_params - 1e-9


def test_uniform_removes_the_same_fraction_and_each_layers_lowest():
    table = random_table(layers=5, scales=[1e-3, 1, 10, 100, 0.5], heads=8, channels=40, seed=4)
    result = rank(table, RankingConfig(ratio=0.3, allocation="uniform"))
    for kind in KINDS:
        counts = removed_counts(result, kind)
        assert max(counts) - min(counts) <= 1
        for layer, groups in enumerate(plan_groups(result.plan, kind)):
            lowest = torch.sort(table.scores(kind)[layer], stable=True).indices[: len(groups)]
            assert groups == sorted(lowest.tolist())


@pytest.mark.parametrize("allocation", ["global", "uniform"])
def test_every_constraint_holds(allocation):
    # Early layers have tiny scores, so without constraints they would go first.
    table = random_table(layers=6, heads=8, channels=40, scales=[1e-4, 1e-3, 1, 1, 1, 1e-5], seed=5)
    config = RankingConfig(
        ratio=0.25,
        allocation=allocation,
        min_rate=0.1,
        max_rate=0.5,
        first_layers=2,
        first_layers_max_rate=0.25,
        protected_layers=[-1],
    )
    result = rank(table, config)
    for kind in KINDS:
        n = len(table.scores(kind)[0])
        counts = removed_counts(result, kind)
        assert counts[5] == 0  # protected (given as -1)
        for layer in range(5):
            assert counts[layer] >= math.ceil(0.1 * n)
            limit = 0.25 if layer < 2 else 0.5
            assert counts[layer] <= math.floor(limit * n)
        assert counts[0] == math.floor(0.25 * n)  # the tighter rate binds where the scores are lowest
        assert result.stages[kind]["allocation"]["max_groups"][0] == math.floor(0.25 * n)
        assert result.stages[kind]["removed_params"] >= kind_share(table, 0.25, kind)
    assert result.plan.layers[5].attention_groups == [] and result.plan.layers[5].mlp_channels == []


@pytest.mark.parametrize("allocation", ["global", "uniform"])
def test_at_least_one_group_per_layer_and_kind_stays(allocation):
    # Two key/value heads per layer, layer 0 far below the rest: it may lose one head, never both.
    attention = [torch.tensor([1e-6, 2e-6]), torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])]
    mlp = [torch.tensor([1e-6, 2e-6, 3e-6]), torch.tensor([1.0, 2.0, 3.0]), torch.tensor([4.0, 5.0, 6.0])]
    result = rank(make_table(attention, mlp), RankingConfig(ratio=0.45, allocation=allocation))
    for kind in KINDS:
        assert min(result.stages[kind]["allocation"]["groups_after"]) >= 1
        alloc = result.stages[kind]["allocation"]
        assert alloc["max_groups"] == [n - 1 for n in alloc["groups_before"]]
        if allocation == "global":  # layer 0 is the lowest, so it loses all it may lose
            assert removed_counts(result, kind)[0] == alloc["groups_before"][0] - 1


def test_ratio_of_all_parameters():
    table = random_table(total_params=None)  # total = 2 * prunable
    result = rank(table, RankingConfig(ratio=0.2, ratio_of="all"))
    assert result.target_params == round(0.2 * table.total_params)
    assert 0 <= result.removed_params - result.target_params < 10 + 3
    assert result.removed_params > 0.35 * table.prunable_params()
    small = random_table(total_params=None)
    small.total_params = int(small.prunable_params() * 1.05)
    with pytest.raises(ConfigError, match="ratio_of='prunable'"):
        rank(small, RankingConfig(ratio=0.97, ratio_of="all"))


def test_kinds_rank_one_kind_to_the_whole_target():
    table = random_table()
    result = rank(table, RankingConfig(ratio=0.2, kinds=("mlp",)))
    assert all(p.attention_groups == [] for p in result.plan.layers)
    assert "attention" not in result.stages
    assert 0 <= result.removed_params - result.target_params < 3


def test_remove_layers_drops_the_lowest_block_importance_unprotected_layers():
    b = [0.5, 0.1, 0.3, 0.05, 0.9]
    table = random_table(layers=5, block_importance=b, layer_params=[100] * 5)
    result = rank(table, RankingConfig(ratio=0.4, remove_layers=2, protected_layers=[3]))
    assert result.plan.removed_layers == [1, 2]
    for layer in (1, 2):
        assert (
            result.plan.layers[layer].attention_groups == [] and result.plan.layers[layer].mlp_channels == []
        )
    assert result.stages["removed_layer_params"] == 200
    # The rest of the target (352 - 200) is spent on groups of the kept layers.
    assert result.stages["attention"]["removed_params"] + result.stages["mlp"]["removed_params"] > 0
    assert 0 <= result.removed_params - result.target_params < 10 + 3
    assert result.stages["layers"]["params_removed"][1] == 100
    assert result.stages["attention"]["allocation"]["groups_after"][1] == 0


def test_removed_layers_beyond_the_target_leave_nothing_else_pruned():
    table = random_table(layers=5, block_importance=[0.5, 0.1, 0.3, 0.05, 0.9], layer_params=[400] * 5)
    result = rank(table, RankingConfig(ratio=0.1, remove_layers=1))
    assert result.plan.removed_layers == [3]
    assert all(p.attention_groups == [] and p.mlp_channels == [] for p in result.plan.layers)
    assert result.removed_params == 400 > result.target_params


def test_result_is_json_and_the_plan_round_trips():
    table = random_table(block_importance=[1.0, 2.0, 3.0, 4.0])
    result = rank(table, RankingConfig(ratio=0.3, temperature=1.0, tau=None, remove_layers=1))
    data = json.loads(json.dumps(result.to_dict()))
    assert PruningPlan.from_dict(data["plan"]) == result.plan
    assert set(data["stages"]["mlp"]) >= {"raw", "normalized", "block", "layer", "depth", "allocation", "tau"}
    assert data["tau"] == result.tau


# --- errors ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_ratio_outside_range_is_refused(ratio):
    with pytest.raises(ConfigError, match="ratio must be in"):
        RankingConfig(ratio=ratio)


def test_temperature_without_block_importance_names_the_fix():
    with pytest.raises(ConfigError, match="block_importance.*temperature=0"):
        rank(random_table(), RankingConfig(temperature=1.0))
    with pytest.raises(ConfigError, match="remove_layers"):
        rank(random_table(), RankingConfig(remove_layers=1))


@pytest.mark.parametrize(
    ("config", "named"),
    [
        (dict(ratio=0.5, max_rate=0.2), "max_rate=0.2"),
        (dict(ratio=0.6, protected_layers=[0, 1, 2]), "protected_layers"),
        (dict(ratio=0.6, first_layers=3, first_layers_max_rate=0.0), "first_layers_max_rate"),
        (dict(ratio=0.6), "at-least-one"),
    ],
)
def test_unreachable_target_names_the_binding_constraint(config, named):
    # Two key/value heads per layer: at most half of the attention can ever go.
    g = torch.Generator().manual_seed(0)
    attention = [torch.rand(2, generator=g, dtype=torch.float64) for _ in range(4)]
    mlp = [torch.rand(16, generator=g, dtype=torch.float64) for _ in range(4)]
    table = make_table(attention, mlp)
    if named != "at-least-one":
        table = random_table(heads=8, channels=16)
    with pytest.raises(ConfigError, match=named):
        rank(table, RankingConfig(**config))


def test_min_rate_forcing_more_than_the_target_is_refused():
    with pytest.raises(ConfigError, match="min_rate=0.5 forces"):
        rank(random_table(), RankingConfig(ratio=0.1, min_rate=0.5))


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="min_rate"):
        RankingConfig(min_rate=0.6, max_rate=0.5)
    with pytest.raises(ConfigError, match="first_layers_max_rate"):
        RankingConfig(first_layers=2)
    with pytest.raises(ConfigError, match="kinds"):
        RankingConfig(kinds=("ffn",))
    with pytest.raises(ConfigError, match="protected_layers"):
        rank(random_table(), RankingConfig(protected_layers=[4]))
    # 0.2 of 8 heads: at least ceil(1.6) = 2 but at most floor(1.6) = 1.
    with pytest.raises(ConfigError, match="max_rate=0.2 allows only 1"):
        rank(random_table(heads=8), RankingConfig(min_rate=0.2, max_rate=0.2))


def test_negative_scores_are_refused():
    table = random_table()
    table.mlp[1][0] = -1.0
    with pytest.raises(ConfigError, match="mlp scores of layer 1"):
        rank(table, RankingConfig())
