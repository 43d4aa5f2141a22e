"""Apply a sparse pattern to one decoder layer's projections, and measure what the weights reached.

What happens to each projection is the criterion object's (:meth:`~prunelight.importance.criteria.base.
Criterion.prune`): magnitude and Wanda score the elements and the pattern object (:mod:`prunelight.apply.
patterns`) turns the scores into a mask; SparseGPT instead prunes and reconstructs each weight from the
layer's Hessian (:mod:`prunelight.apply.sparsegpt`). Sparsity is always *measured* on the weights
afterwards, never taken from what was asked for.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunelight.apply.patterns import SparsePattern, pattern_named
from prunelight.importance.criteria import criterion_info
from prunelight.importance.inputs import LayerInputs
from prunelight.models.adapters import FamilyAdapter, LayerModules
from prunelight.models.projections import PROJECTIONS


@dataclass(frozen=True)
class LayerPattern:
    """What one layer loses: the pattern, its sparsity, and how elements are scored.

    ``tile_sparsity`` is the hybrid's tile tier, as a fraction of the layer's weights (the rest of
    ``sparsity`` goes as single weights). ``projections`` overrides ``sparsity`` per projection (the exact
    counts of :func:`~prunelight.ranking.sparsity.projection_counts`).
    """

    pattern: str
    criterion: str
    sparsity: float
    comparison: str = "row"
    n: int = 2
    m: int = 4
    block: tuple[int, int] = (16, 16)
    tile_sparsity: float = 0.0
    damping: float = 0.01
    block_size: int = 128
    projections: dict[str, float] | None = None

    def of(self, projection: str) -> LayerPattern:
        """This pattern with ``projection``'s own sparsity."""
        if self.projections is None:
            return self
        return dataclasses.replace(self, sparsity=self.projections[projection], projections=None)

    @property
    def sparse_pattern(self) -> SparsePattern:
        """The registered pattern object called :attr:`pattern`."""
        return pattern_named(self.pattern)

    @property
    def n_of_m(self) -> bool:
        """The pattern keeps ``n`` of every ``m``: its sparsity is ``1 - n/m``, not :attr:`sparsity`."""
        return self.sparse_pattern.n_of_m

    def mask(self, scores: torch.Tensor, label: str) -> torch.Tensor:
        """The keep mask this pattern cuts from one projection's element ``scores``."""
        return self.sparse_pattern.mask(scores, self, label)


def element_scores(
    weight: torch.Tensor, criterion: str, inputs: LayerInputs | None, projection: str
) -> torch.Tensor:
    """Per-element importance of ``projection``'s weight (float32) by the criterion called ``criterion``."""
    return criterion_info(criterion).element_scores(weight, inputs, projection)


def prune_layer(
    modules: LayerModules, inputs: LayerInputs | None, pattern: LayerPattern, layer: int
) -> dict[str, torch.Tensor]:
    """Zero (SparseGPT: zero and reconstruct) ``modules``' weights in place; return the keep masks."""
    masks = {}
    layer_pattern = pattern
    criterion = criterion_info(layer_pattern.criterion)
    for name in PROJECTIONS:
        pattern = layer_pattern.of(name)
        weight = getattr(modules, name).weight
        label = f"layer {layer} {name}_proj ({weight.shape[0]}x{weight.shape[1]})"
        if pattern.sparsity == 0:  # a protected layer (N:M layers carry 1 - n/m)
            continue
        with torch.no_grad():
            masks[name] = criterion.prune(weight, inputs, name, pattern, label)
    return masks


def projection_sizes(model: nn.Module, adapter: FamilyAdapter) -> list[dict[str, int]]:
    """Weight elements of every prunable projection, per layer (the base of every sparsity)."""
    return [
        {name: getattr(adapter.modules(layer), name).weight.numel() for name in PROJECTIONS}
        for layer in adapter.decoder_layers(model)
    ]


def removal_units(
    model: nn.Module, adapter: FamilyAdapter, pattern: str, comparison: str, block: tuple[int, int]
) -> list[dict[str, int]]:
    """The granularity in which ``pattern`` removes weights of each projection (see ``projection_counts``)."""
    shape = pattern_named(pattern)
    units = []
    for layer in adapter.decoder_layers(model):
        modules = adapter.modules(layer)
        row = {}
        for name in PROJECTIONS:
            row[name] = shape.removal_unit(getattr(modules, name).weight.shape[0], comparison, block)
        units.append(row)
    return units


def measure_sparsity(
    model: nn.Module,
    adapter: FamilyAdapter,
    dense: list[dict[str, int]],
    block: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Zeros actually in the weights, per projection, layer and overall, against the dense sizes.

    ``removed`` counts the elements a structured tier took away (the dense size minus the current size);
    they count as pruned. With ``block``, whole zero tiles are counted too (tiles of the divisible part).
    """
    layers, totals = [], {"dense": 0, "zeros": 0, "removed": 0, "tile_zeros": 0}
    for index, layer in enumerate(adapter.decoder_layers(model)):
        modules = adapter.modules(layer)
        entry: dict[str, Any] = {"layer": index, "projections": {}}
        sums = dict.fromkeys(totals, 0)
        for name in PROJECTIONS:
            weight = getattr(modules, name).weight.detach()
            zero = weight == 0
            row = {
                "shape": list(weight.shape),
                "dense": dense[index][name],
                "zeros": int(zero.sum()),
                "removed": dense[index][name] - weight.numel(),
                "tile_zeros": _zero_tiles(zero, block) if block else 0,
            }
            row["sparsity"] = (row["zeros"] + row["removed"]) / row["dense"]
            row_zeros = zero.sum(dim=1)
            row["row_sparsity"] = [
                float(row_zeros.min()) / weight.shape[1],
                float(row_zeros.max()) / weight.shape[1],
            ]
            entry["projections"][name] = row
            for key in sums:
                sums[key] += row[key]
        entry.update(sums, sparsity=(sums["zeros"] + sums["removed"]) / sums["dense"])
        layers.append(entry)
        for key in totals:
            totals[key] += sums[key]
    overall = {**totals, "sparsity": (totals["zeros"] + totals["removed"]) / max(totals["dense"], 1)}
    return {"overall": overall, "layers": layers}


def _zero_tiles(zero: torch.Tensor, block: tuple[int, int]) -> int:
    """Elements in whole all-zero tiles."""
    rows, cols = zero.shape[0] // block[0], zero.shape[1] // block[1]
    if not rows or not cols:
        return 0
    grid = zero[: rows * block[0], : cols * block[1]].reshape(rows, block[0], cols, block[1])
    return int(grid.all(dim=3).all(dim=1).sum()) * block[0] * block[1]
