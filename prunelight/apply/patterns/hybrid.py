"""Hybrid: structures first (attention groups, MLP channels), then whole tiles, then single weights."""

from __future__ import annotations

import torch

from prunelight.apply.patterns.base import ProjectionShape, SparsePattern
from prunelight.apply.patterns.registry import register
from prunelight.ranking.patterns import tiles_then_singles


@register
class Hybrid(SparsePattern):
    name = "hybrid"
    tiles = True
    structures = True

    def mask(self, scores: torch.Tensor, pattern: ProjectionShape, label: str) -> torch.Tensor:
        return tiles_then_singles(scores, pattern.tile_sparsity, pattern.sparsity, pattern.block)
