"""Hybrid: structures first (attention groups, MLP channels), then whole tiles, then single weights."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from prunelight.apply.patterns.base import SparsePattern
from prunelight.apply.patterns.registry import register
from prunelight.ranking.patterns import tiles_then_singles

if TYPE_CHECKING:
    from prunelight.apply.sparse import LayerPattern


@register
class Hybrid(SparsePattern):
    name = "hybrid"
    tiles = True
    structures = True

    def mask(self, scores: torch.Tensor, pattern: LayerPattern, label: str) -> torch.Tensor:
        return tiles_then_singles(scores, pattern.tile_sparsity, pattern.sparsity, pattern.block)
