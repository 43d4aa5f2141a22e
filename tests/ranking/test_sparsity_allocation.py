"""Per-layer sparsity: bounds, the shift-and-clamp allocation, OWL, and rounding to removal units."""

from __future__ import annotations

import math
import random

import pytest
import torch

from prunelight.errors import ConfigError
from prunelight.ranking.allocation import Constraints
from prunelight.ranking.sparsity import (
    MAX_LAYER_SPARSITY,
    allocate_sparsity,
    layer_bounds,
    outlier_ratio,
    owl_sparsities,
    projection_counts,
)

SIZES = [100, 200, 300, 400]
FREE = [(0.0, MAX_LAYER_SPARSITY)] * 4


def weighted_mean(values: list[float], sizes: list[int]) -> float:
    return sum(v * n for v, n in zip(values, sizes, strict=True)) / sum(sizes)


# ---------------------------------------------------------------- allocate_sparsity


@pytest.mark.parametrize("target", [0.0, 0.3, 0.5, 0.7])
def test_uniform_raw_without_binding_bounds_is_the_target(target: float) -> None:
    got = allocate_sparsity([target] * 4, SIZES, target, FREE)
    assert got == pytest.approx([target] * 4, abs=1e-9)


def test_protected_layer_share_goes_equally_to_the_others() -> None:
    bounds = list(FREE)
    bounds[1] = (0.0, 0.0)
    got = allocate_sparsity([0.5] * 4, SIZES, 0.5, bounds)
    assert got[1] == 0.0
    assert weighted_mean(got, SIZES) == pytest.approx(0.5, abs=1e-9)
    expected = 0.5 * sum(SIZES) / (sum(SIZES) - SIZES[1])
    assert [got[0], got[2], got[3]] == pytest.approx([expected] * 3, abs=1e-9)


def test_binding_max_bound_holds_the_layer_at_it() -> None:
    bounds = list(FREE)
    bounds[3] = (0.0, 0.3)
    got = allocate_sparsity([0.5] * 4, SIZES, 0.5, bounds)
    assert got[3] == pytest.approx(0.3, abs=1e-12)
    assert abs(weighted_mean(got, SIZES) - 0.5) < 1e-9
    assert got[0] == pytest.approx(got[1], abs=1e-12) and got[1] == pytest.approx(got[2], abs=1e-12)
    assert got[0] > 0.5


def test_binding_min_bound_holds_the_layer_at_it() -> None:
    bounds = list(FREE)
    bounds[0] = (0.8, MAX_LAYER_SPARSITY)
    got = allocate_sparsity([0.4] * 4, SIZES, 0.4, bounds)
    assert got[0] == pytest.approx(0.8, abs=1e-12)
    assert abs(weighted_mean(got, SIZES) - 0.4) < 1e-9
    assert got[1] == pytest.approx(got[3], abs=1e-12) and got[1] < 0.4


def test_non_uniform_raw_keeps_its_differences_and_the_mean() -> None:
    raw = [0.45, 0.55, 0.5, 0.62]
    bounds = list(FREE)
    bounds[3] = (0.0, 0.5)
    got = allocate_sparsity(raw, SIZES, 0.5, bounds)
    assert abs(weighted_mean(got, SIZES) - 0.5) < 1e-9
    assert got[3] == pytest.approx(0.5, abs=1e-12)
    shifts = [g - r for g, r in zip(got[:3], raw[:3], strict=True)]
    assert shifts == pytest.approx([shifts[0]] * 3, abs=1e-12)


def test_target_at_the_highest_reachable_is_met() -> None:
    bounds = [(0.0, 0.6)] * 4
    got = allocate_sparsity([0.6] * 4, SIZES, 0.6, bounds)
    assert got == pytest.approx([0.6] * 4, abs=1e-9)


def test_unreachable_target_names_max_rate() -> None:
    with pytest.raises(ConfigError, match="max_rate") as error:
        allocate_sparsity([0.5] * 4, SIZES, 0.5, [(0.0, 0.4)] * 4)
    assert "0.4000" in str(error.value)
    bounds = list(FREE)
    bounds[3] = bounds[2] = (0.0, 0.0)  # protected: 700 of 1000 weights cannot go
    with pytest.raises(ConfigError, match="protected_layers"):
        allocate_sparsity([0.5] * 4, SIZES, 0.5, bounds)


def test_min_rate_forcing_more_than_the_target_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="min_rate"):
        allocate_sparsity([0.3] * 4, SIZES, 0.3, [(0.4, MAX_LAYER_SPARSITY)] * 4)


# ---------------------------------------------------------------- layer_bounds


def test_protected_and_removed_layers_are_held_at_zero() -> None:
    bounds = layer_bounds(Constraints(min_rate=0.1, protected=frozenset({1}), removed=frozenset({3})), 5)
    assert bounds[1] == (0.0, 0.0) and bounds[3] == (0.0, 0.0)
    assert bounds[0] == bounds[2] == bounds[4] == (0.1, MAX_LAYER_SPARSITY)


def test_first_layers_max_rate_tightens_the_first_layers() -> None:
    constraints = Constraints(max_rate=0.8, first_layers=2, first_layers_max_rate=0.3)
    assert layer_bounds(constraints, 4) == [(0.0, 0.3), (0.0, 0.3), (0.0, 0.8), (0.0, 0.8)]
    looser = Constraints(max_rate=0.5, first_layers=2, first_layers_max_rate=0.9)
    assert layer_bounds(looser, 3) == [(0.0, 0.5)] * 3


@pytest.mark.parametrize("max_rate", [0.99, 0.995, 1.0])
def test_high_bound_never_exceeds_max_layer_sparsity(max_rate: float) -> None:
    constraints = Constraints(min_rate=0.995, max_rate=max_rate, first_layers=1, first_layers_max_rate=1.0)
    for low, high in layer_bounds(constraints, 3):
        assert high <= MAX_LAYER_SPARSITY
        assert low <= high


# ---------------------------------------------------------------- OWL


@pytest.mark.parametrize("lam", [0.0, 0.02, 0.08, 0.2])
def test_owl_mean_spread_and_order(lam: float) -> None:
    ratios = [0.01, 0.05, 0.03, 0.02, 0.045]
    got = owl_sparsities(ratios, 0.6, lam)
    assert sum(got) / len(got) == pytest.approx(0.6, abs=1e-12)
    assert max(got) - min(got) <= 2 * lam + 1e-12
    assert max(got) - min(got) == pytest.approx(2 * lam, abs=1e-12)
    if lam > 0:
        assert min(range(5), key=lambda i: got[i]) == 1  # most outliers: least sparsity
        assert max(range(5), key=lambda i: got[i]) == 0
        # order reversed from the ratios
        assert sorted(range(5), key=lambda i: got[i]) == sorted(range(5), key=lambda i: -ratios[i])
    # OWL's reference formula by hand
    x = [(r - 0.01) / 0.04 * 2 * lam for r in ratios]
    assert got == pytest.approx([0.6 - (v - sum(x) / 5) for v in x], abs=1e-12)


def test_owl_equal_ratios_give_the_target() -> None:
    assert owl_sparsities([0.03] * 4, 0.5, 0.1) == [0.5] * 4
    assert owl_sparsities([0.07], 0.4, 0.05) == [0.4]


@pytest.mark.parametrize("lam", [-0.1, 1.0, 1.5])
def test_owl_lambda_outside_zero_one_is_a_config_error(lam: float) -> None:
    with pytest.raises(ConfigError, match="owl_lambda"):
        owl_sparsities([0.01, 0.02], 0.5, lam)


def test_outlier_ratio_is_a_hand_count() -> None:
    generator = torch.Generator().manual_seed(0)
    scores = [torch.rand(8, 16, generator=generator) ** 4, torch.rand(4, 16, generator=generator) * 3]
    flat = [v for s in scores for v in s.reshape(-1).tolist()]
    mean = math.fsum(flat) / len(flat)
    for m in (1.0, 2.0, 3.0, 5.0):
        expected = sum(v > m * mean for v in flat) / len(flat)
        assert outlier_ratio(scores, m) == pytest.approx(expected, abs=1e-12)
    exact = [torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 25.0]])]  # mean 4
    assert outlier_ratio(exact, 5.0) == pytest.approx(1 / 8)
    assert outlier_ratio(exact, 7.0) == 0.0


# ---------------------------------------------------------------- projection_counts

PROJECTION_SHAPES = {
    "q": (16, 16),
    "k": (8, 16),
    "v": (8, 16),
    "o": (16, 16),
    "up": (48, 16),
    "down": (16, 48),
}


def layer_sizes(layers: int) -> list[dict[str, int]]:
    return [{name: a * b for name, (a, b) in PROJECTION_SHAPES.items()} for _ in range(layers)]


def row_units(layers: int) -> list[dict[str, int]]:
    return [{name: a for name, (a, _) in PROJECTION_SHAPES.items()} for _ in range(layers)]


def exact_total(sparsity: list[float], sizes: list[dict[str, int]]) -> float:
    return sum(s * n for s, layer in zip(sparsity, sizes, strict=True) for n in layer.values())


@pytest.mark.parametrize("seed", range(8))
def test_single_weight_units_hit_the_total_exactly(seed: int) -> None:
    rng = random.Random(seed)
    sparsity = [rng.uniform(0.0, MAX_LAYER_SPARSITY) for _ in range(4)] + [0.0]
    sizes = layer_sizes(5)
    units = [dict.fromkeys(layer, 1) for layer in sizes]
    total = round(exact_total(sparsity, sizes))
    counts = projection_counts(sparsity, sizes, units, total)
    assert sum(sum(layer.values()) for layer in counts) == total
    assert counts[4] == dict.fromkeys(PROJECTION_SHAPES, 0)
    for s, layer, got in zip(sparsity, sizes, counts, strict=True):
        for name, size in layer.items():
            assert math.floor(s * size) <= got[name] <= math.ceil(s * size) <= size


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("kind", ["rows", "tiles", "mixed"])
def test_unit_multiples_within_half_the_largest_unit(seed: int, kind: str) -> None:
    rng = random.Random(seed)
    layers = 4
    sparsity = [rng.uniform(0.0, MAX_LAYER_SPARSITY) for _ in range(layers)]
    sizes = layer_sizes(layers)
    if kind == "rows":
        units = row_units(layers)
    elif kind == "tiles":
        units = [dict.fromkeys(PROJECTION_SHAPES, 64) for _ in range(layers)]
    else:
        units = row_units(2) + [dict.fromkeys(PROJECTION_SHAPES, 1), dict.fromkeys(PROJECTION_SHAPES, 64)]
    total = round(exact_total(sparsity, sizes))
    counts = projection_counts(sparsity, sizes, units, total)
    largest = max(u for layer in units for u in layer.values())
    assert abs(sum(sum(layer.values()) for layer in counts) - total) <= largest / 2
    for s, layer, unit, got in zip(sparsity, sizes, units, counts, strict=True):
        for name, size in layer.items():
            assert got[name] % unit[name] == 0
            assert 0 <= got[name] <= size
            # rounded to a neighbouring multiple of the unit
            assert abs(got[name] - s * size) < unit[name]


def test_counts_never_exceed_the_projection_size() -> None:
    sizes = layer_sizes(3)
    units = row_units(3)
    sparsity = [MAX_LAYER_SPARSITY] * 3
    # a total beyond what the projections hold
    counts = projection_counts(sparsity, sizes, units, sum(sum(layer.values()) for layer in sizes))
    for layer, unit, got in zip(sizes, units, counts, strict=True):
        for name, size in layer.items():
            assert got[name] % unit[name] == 0 and got[name] <= size
    # a projection whose size is not a multiple of its unit never takes a partial unit
    counts = projection_counts([0.99], [{"q": 10}], [{"q": 4}], 10)
    assert counts == [{"q": 8}]


def test_largest_remainder_picks_the_largest_fractions() -> None:
    # exact counts 2.7, 3.2 and 4.6 units of 1: floors 9, total 11, the two largest fractions win
    sizes = [{"a": 10}, {"a": 10}, {"a": 10}]
    counts = projection_counts([0.27, 0.32, 0.46], sizes, [{"a": 1}] * 3, 11)
    assert [c["a"] for c in counts] == [3, 3, 5]
