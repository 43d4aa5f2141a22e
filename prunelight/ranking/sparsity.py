"""Per-layer sparsity of a mask pattern: uniform, or outlier-weighted (OWL), under the ranking's limits.

Sparse pruning spends one target sparsity ``s`` over the prunable weights (the seven projections of every
decoder layer). The allocation decides each layer's share; the pattern then decides which weights go
inside the layer (:mod:`prunelight.ranking.patterns`).

- uniform: every layer gets ``s``.
- owl (Yin et al. 2024, "Outlier Weighed Layerwise sparsity"): a layer's outlier ratio ``D_l`` is the
  fraction of its Wanda scores above ``owl_m`` times the layer's mean score. Layers with more outliers are
  pruned less: ``s_l = s - (x_l - mean x)`` with ``x_l = 2 * lambda * (D_l - min D) / (max D - min D)``,
  so the sparsities span at most ``2 * lambda`` around ``s`` (OWL's reference code).

The same limits as the structured ranking then apply (``RankingConfig``'s ``min_rate``, ``max_rate``,
``first_layers``/``first_layers_max_rate``, ``protected_layers``, read as bounds of a layer's sparsity), and
a common shift ``c`` brings the parameter-weighted mean back to ``s``: ``s_l = clamp(raw_l + c, lo_l, hi_l)``
with ``c`` found by bisection. With uniform raw sparsities and no binding bound that is ``s`` everywhere;
a protected layer's share is spread evenly over the others.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from prunelight.errors import ConfigError
from prunelight.ranking.allocation import Constraints, bisect_increasing

MAX_LAYER_SPARSITY = 0.99
"""A layer never loses more than this, whatever ``max_rate`` says (a fully zero layer is layer removal)."""


def layer_bounds(constraints: Constraints, num_layers: int) -> list[tuple[float, float]]:
    """``(lowest, highest)`` sparsity of every layer under the ranking's limits."""
    bounds = []
    for layer in range(num_layers):
        if layer in constraints.protected or layer in constraints.removed:
            bounds.append((0.0, 0.0))
        else:
            high = min(constraints.layer_max_rate(layer), MAX_LAYER_SPARSITY)
            bounds.append((min(constraints.min_rate, high), high))
    return bounds


def allocate_sparsity(
    raw: Sequence[float], sizes: Sequence[int], target: float, bounds: Sequence[tuple[float, float]]
) -> list[float]:
    """Shift ``raw`` by one constant and clamp it to ``bounds`` so the size-weighted mean is ``target``."""
    total = float(sum(sizes))
    low = sum(n * lo for n, (lo, _) in zip(sizes, bounds, strict=True)) / total
    high = sum(n * hi for n, (_, hi) in zip(sizes, bounds, strict=True)) / total
    if target > high + 1e-12:
        raise ConfigError(
            f"sparsity {target} cannot be reached: the per-layer limits (max_rate, first_layers_max_rate, "
            f"protected_layers) allow at most {high:.4f} overall; raise max_rate or protect fewer layers"
        )
    if target < low - 1e-12:
        raise ConfigError(
            f"sparsity {target} is below what min_rate forces ({low:.4f} overall); lower min_rate"
        )

    def at(shift: float) -> list[float]:
        return [min(max(r + shift, lo), hi) for r, (lo, hi) in zip(raw, bounds, strict=True)]

    def mean(shift: float) -> float:
        return sum(n * s for n, s in zip(sizes, at(shift), strict=True)) / total

    return at(bisect_increasing(mean, target, -1.0 - max(raw), 1.0 - min(raw), steps=200))


def outlier_ratio(scores: Sequence[torch.Tensor], m: float) -> float:
    """OWL's layer outlier ratio: the fraction of a layer's element scores above ``m`` times their mean."""
    flat = torch.cat([s.reshape(-1).float() for s in scores])
    return float((flat > m * flat.mean()).double().mean())


def owl_sparsities(ratios: Sequence[float], target: float, lam: float) -> list[float]:
    """Raw OWL sparsities (before limits): spread ``[target - lam, target + lam]``, most outliers least."""
    if not 0.0 <= lam < 1.0:
        raise ConfigError(f"owl_lambda must be in [0, 1), got {lam} (OWL's paper uses 0.02 to 0.1)")
    values = torch.tensor(list(ratios), dtype=torch.float64)
    spread = values.max() - values.min()
    if spread <= 0:
        return [target] * len(values)
    scaled = (values - values.min()) / spread * 2 * lam
    return (target - (scaled - scaled.mean())).tolist()


def projection_counts(
    layer_sparsity: Sequence[float],
    sizes: Sequence[dict[str, int]],
    units: Sequence[dict[str, int]],
    total: int,
) -> list[dict[str, int]]:
    """Zeros per projection: each a multiple of its unit, all together as close to ``total`` as units allow.

    A pattern removes whole units (one weight per row under the row comparison: a unit of ``out_features``;
    a whole tile; a single weight), so ``sparsity * size`` is rounded to units. Rounding every projection on
    its own can miss the overall target by half a unit per projection; instead the floors are topped up in
    order of their dropped fractions (largest remainder) while that brings the total closer to ``total``.
    With single-weight units (the hybrid, the layer comparison) the total is exact.
    """
    entries = []
    for layer, (s, layer_sizes) in enumerate(zip(layer_sparsity, sizes, strict=True)):
        for name, size in layer_sizes.items():
            unit = units[layer][name]
            exact = s * size / unit
            entries.append((layer, name, unit, int(exact + 1e-9), exact - int(exact + 1e-9), size // unit))
    counts = [dict.fromkeys(layer_sizes, 0) for layer_sizes in sizes]
    deficit = total
    for layer, name, unit, floor, _, _ in entries:
        counts[layer][name] = floor * unit
        deficit -= floor * unit
    for layer, name, unit, floor, remainder, most in sorted(entries, key=lambda e: -e[4]):
        if deficit <= 0 or remainder <= 0:
            break
        if 2 * deficit >= unit and floor < most:
            counts[layer][name] += unit
            deficit -= unit
    return counts
