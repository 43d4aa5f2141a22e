"""Block: whole ``block`` tiles go, the lowest by summed score; the tiles must divide every weight."""

from __future__ import annotations

import torch

from prunelight.apply.patterns.base import ProjectionShape, SparsePattern
from prunelight.apply.patterns.registry import register
from prunelight.ranking.patterns import block_mask


@register
class Block(SparsePattern):
    name = "block"
    tiles = True

    def mask(self, scores: torch.Tensor, pattern: ProjectionShape, label: str) -> torch.Tensor:
        return block_mask(scores, pattern.sparsity, pattern.block, label)

    def removal_unit(self, out_features: int, comparison: str, block: tuple[int, int]) -> int:
        return block[0] * block[1]
