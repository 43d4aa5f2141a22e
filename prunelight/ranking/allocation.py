"""Stage 5 of the ranking: which groups of one kind go, given corrected scores and a target in parameters.

Per layer the constraints become a count range ``[min_count, max_count]`` of groups to remove:

- ``max_count = floor(rate * n)`` with ``rate = max_rate`` (``min(max_rate, first_layers_max_rate)`` for the
  first ``first_layers`` layers), and never more than ``n - 1``: at least one group of every kind stays in
  every layer, or the layer would lose its attention or MLP entirely (dropping a whole layer is
  ``remove_layers``' job). Protected and removed layers get 0.
- ``min_count = ceil(min_rate * n)`` (0 in protected and removed layers).

Both allocations first remove each layer's ``min_count`` lowest groups, then:

- global: all remaining groups of the kind, sorted ascending by ``(score, layer, index)``, go lowest first,
  skipping layers that reached ``max_count``, until the removed parameters reach the target. The target is
  therefore met and overshot by less than one group's parameters.
- uniform: the same rate ``r`` in every layer, ``clamp(r * n, min_count, max_count)`` groups, with ``r``
  chosen so the total meets the target (layers held by a bound take their bound, the others share the rest
  equally); counts are floored, then the layers furthest below ``r * n`` get one more group until the target
  is met. Each layer loses its lowest-scored groups.

An unreachable target or a ``min_rate`` that forces more than the target raises :class:`ConfigError` naming
the constraint that binds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from prunelight.errors import ConfigError

_ROUND = 1e-9
"""Slack for floor/ceil of ``rate * n`` so that e.g. ``0.3 * 10`` counts as 3, not 4."""


@dataclass(frozen=True)
class Constraints:
    """The per-layer limits of a ranking, independent of kind (indices already resolved, not negative)."""

    min_rate: float = 0.0
    max_rate: float = 1.0
    first_layers: int = 0
    first_layers_max_rate: float | None = None
    protected: frozenset[int] = field(default_factory=frozenset)
    removed: frozenset[int] = field(default_factory=frozenset)

    def layer_max_rate(self, layer: int) -> float:
        if layer < self.first_layers and self.first_layers_max_rate is not None:
            return min(self.max_rate, self.first_layers_max_rate)
        return self.max_rate

    def max_count(self, layer: int, size: int) -> int:
        if layer in self.protected or layer in self.removed:
            return 0
        return max(0, min(math.floor(self.layer_max_rate(layer) * size + _ROUND), size - 1))

    def min_count(self, layer: int, size: int) -> int:
        if layer in self.protected or layer in self.removed:
            return 0
        return math.ceil(self.min_rate * size - _ROUND)

    def max_counts(self, sizes: list[int]) -> list[int]:
        return [self.max_count(layer, n) for layer, n in enumerate(sizes)]

    def min_counts(self, sizes: list[int]) -> list[int]:
        return [self.min_count(layer, n) for layer, n in enumerate(sizes)]

    def capacity(self, sizes: list[int], params: list[int]) -> int:
        """Most parameters of this kind the constraints let go."""
        return sum(c * p for c, p in zip(self.max_counts(sizes), params, strict=True))


def bisect_increasing(
    value: Callable[[float], float], target: float, low: float, high: float, steps: int = 100
) -> float:
    """The least ``x`` in ``[low, high]`` (to ``(high - low) / 2**steps``) with ``value(x) >= target``, for a
    non-decreasing ``value``: the common rate or shift that makes clamped per-layer amounts meet a total."""
    for _ in range(steps):
        middle = (low + high) / 2
        if value(middle) < target:
            low = middle
        else:
            high = middle
    return high


def check_limits(kind: str, sizes: list[int], constraints: Constraints) -> None:
    """Raise when ``min_rate`` asks some layer for more groups than its maximum allows."""
    for layer, n in enumerate(sizes):
        lo, hi = constraints.min_count(layer, n), constraints.max_count(layer, n)
        if lo <= hi:
            continue
        rate = constraints.layer_max_rate(layer)
        if lo > n - 1:
            why = (
                f"at least one {kind} group must stay in every layer and layer {layer} has only {n}; "
                f"lower min_rate below {(n - 1) / n:.3g}"
            )
        elif rate < constraints.max_rate:
            why = (
                f"first_layers_max_rate={constraints.first_layers_max_rate} allows only {hi}; lower min_rate "
                f"or raise first_layers_max_rate"
            )
        else:
            why = f"max_rate={constraints.max_rate} allows only {hi}; lower min_rate or raise max_rate"
        raise ConfigError(
            f"min_rate={constraints.min_rate} removes at least {lo} of the {n} {kind} groups of layer "
            f"{layer}, but {why}"
        )


def check_forced(
    kind: str, sizes: list[int], params: list[int], constraints: Constraints, target: float
) -> None:
    """Raise when the groups ``min_rate`` forces out exceed the target by more than one group.

    Up to one group over the target is what the allocation would overshoot anyway, so that is accepted.
    """
    counts = constraints.min_counts(sizes)
    forced = sum(c * p for c, p in zip(counts, params, strict=True))
    if forced == 0:
        return
    smallest = min(p for c, p in zip(counts, params, strict=True) if c > 0)
    if forced - smallest >= target:
        raise ConfigError(
            f"min_rate={constraints.min_rate} forces {forced:,} {kind} parameters out ({sum(counts)} "
            f"groups), more than the {kind} share of the target ({target:,.0f} parameters); lower min_rate "
            f"or raise ratio"
        )


def unreachable_message(
    kind: str, sizes: list[int], params: list[int], constraints: Constraints, target: float
) -> str:
    """Why the constraints cannot meet ``target``: each constraint whose relaxing alone would allow more."""
    cap = constraints.capacity(sizes, params)
    total = sum(n * p for n, p in zip(sizes, params, strict=True))
    parts: list[str] = []
    if constraints.max_rate < 1:
        relaxed = replace(constraints, max_rate=1.0).capacity(sizes, params)
        if relaxed > cap:
            parts.append(f"max_rate={constraints.max_rate} (raising it to 1.0 would allow {relaxed:,})")
    if constraints.first_layers > 0 and constraints.first_layers_max_rate is not None:
        relaxed = replace(constraints, first_layers_max_rate=None).capacity(sizes, params)
        if relaxed > cap:
            parts.append(
                f"first_layers_max_rate={constraints.first_layers_max_rate} on the first "
                f"{constraints.first_layers} layers (without it: {relaxed:,})"
            )
    if constraints.protected:
        relaxed = replace(constraints, protected=frozenset()).capacity(sizes, params)
        if relaxed > cap:
            parts.append(f"protected_layers={sorted(constraints.protected)} (without them: {relaxed:,})")
    loosest = Constraints(removed=constraints.removed).capacity(sizes, params)
    if loosest < target:
        parts.append(
            f"the at-least-one-group rule: one {kind} group stays in every layer, so even with no other "
            f"constraint at most {loosest:,} can go; lower ratio or drop '{kind}' from kinds"
        )
    binding = "; ".join(parts) if parts else "the combination of the constraints"
    return (
        f"the {kind} share of the target is {target:,.0f} parameters, but the constraints let at most "
        f"{cap:,} of the {total:,} {kind} parameters go. Binding: {binding}. Each pruned kind must reach its "
        f"own share of the target (see RankingConfig.kinds); lower ratio or relax the constraint named."
    )


def _orders(scores: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per layer, group indices by ascending score; ties keep index order (stable sort)."""
    return [torch.sort(s, stable=True).indices for s in scores]


def allocate_global(
    scores: list[torch.Tensor],
    params: list[int],
    min_counts: list[int],
    max_counts: list[int],
    target: float,
) -> list[torch.Tensor]:
    """Remove the lowest groups of all layers together until ``target`` parameters are reached.

    Returns the removed group indices of every layer (sorted ascending). The caller has checked that
    ``target`` is reachable under ``max_counts``.
    """
    orders = _orders(scores)
    chosen = [o[:m] for o, m in zip(orders, min_counts, strict=True)]
    need = target - sum(m * p for m, p in zip(min_counts, params, strict=True))
    if need > 0:
        spans = [
            (layer, o[m:hi])
            for layer, (o, m, hi) in enumerate(zip(orders, min_counts, max_counts, strict=True))
        ]
        spans = [(layer, idx) for layer, idx in spans if idx.numel()]
        if spans:
            cand_idx = torch.cat([idx for _, idx in spans])
            cand_layer = torch.cat([torch.full_like(idx, layer) for layer, idx in spans])
            cand_score = torch.cat([scores[layer][idx] for layer, idx in spans])
            cand_params = torch.cat(
                [
                    torch.full((idx.numel(),), float(params[layer]), dtype=torch.float64)
                    for layer, idx in spans
                ]
            )
            # Candidates are laid out layer by layer, each in (score, index) order, so a stable sort by
            # score breaks ties by (layer, index).
            order = torch.sort(cand_score, stable=True).indices
            cumulative = torch.cumsum(cand_params[order], 0)
            k = int(torch.searchsorted(cumulative, torch.tensor([need], dtype=torch.float64))[0]) + 1
            take = order[: min(k, order.numel())]
            taken_layer, taken_idx = cand_layer[take], cand_idx[take]
            chosen = [torch.cat([c, taken_idx[taken_layer == layer]]) for layer, c in enumerate(chosen)]
    return [torch.sort(c).values for c in chosen]


def uniform_counts(
    sizes: list[int], params: list[int], min_counts: list[int], max_counts: list[int], target: float
) -> list[int]:
    """Groups to remove per layer at one common rate (see the module docstring), meeting ``target``."""

    def removed_at(rate: float) -> float:
        return sum(
            p * min(max(rate * n, lo), hi)
            for n, p, lo, hi in zip(sizes, params, min_counts, max_counts, strict=True)
        )

    counts = list(min_counts)
    total = sum(c * p for c, p in zip(counts, params, strict=True))
    if total >= target:
        return counts
    rate = bisect_increasing(removed_at, target, 0.0, 1.0)
    counts = [
        min(max(math.floor(rate * n + _ROUND), a), b)
        for n, a, b in zip(sizes, min_counts, max_counts, strict=True)
    ]
    total = sum(c * p for c, p in zip(counts, params, strict=True))
    while total < target:
        open_layers = [layer for layer, (c, b) in enumerate(zip(counts, max_counts, strict=True)) if c < b]
        if not open_layers:
            break
        layer = max(open_layers, key=lambda i: (rate * sizes[i] - counts[i], -i))
        counts[layer] += 1
        total += params[layer]
    return counts


def allocate_uniform(
    scores: list[torch.Tensor],
    params: list[int],
    min_counts: list[int],
    max_counts: list[int],
    target: float,
) -> list[torch.Tensor]:
    """Remove the same fraction of every layer (within its limits), each layer's lowest-scored groups."""
    sizes = [s.numel() for s in scores]
    counts = uniform_counts(sizes, params, min_counts, max_counts, target)
    return [torch.sort(o[:c]).values for o, c in zip(_orders(scores), counts, strict=True)]


def align_kept(
    scores: list[torch.Tensor],
    removed: list[torch.Tensor],
    min_counts: list[int],
    max_counts: list[int],
    multiple: int,
) -> list[torch.Tensor]:
    """Move each pruned layer's kept count to the nearest multiple of ``multiple`` (ties keep more).

    GEMMs with widths that are not a multiple of 8 (bf16 tensor cores) or of the kernels' tile sizes run on
    slower kernels: a 7B model pruned to 8,806 MLP channels per layer prefilled at half the dense speed
    (docs/performance.md). Only layers that lost groups move, within their min/max counts (a layer whose
    limits allow neither neighbour keeps its count); the groups added or spared are the next lowest or
    the highest of the removed by the final score, so the result is still a threshold on each layer's
    scores. The total moves by at most half a multiple per layer.
    """
    if multiple <= 1:
        return removed
    aligned = []
    for s, r, low, high in zip(scores, removed, min_counts, max_counts, strict=True):
        n, count = s.numel(), r.numel()
        kept = n - count
        if count == 0 or kept % multiple == 0:
            aligned.append(r)
            continue
        down, up = kept - kept % multiple, kept - kept % multiple + multiple
        choices = sorted((abs(k - kept), -k) for k in (down, up) if 0 < k <= n and low <= n - k <= high)
        if not choices:
            aligned.append(r)
            continue
        target_count = n + choices[0][1]
        aligned.append(torch.sort(torch.sort(s, stable=True).indices[:target_count]).values)
    return aligned
