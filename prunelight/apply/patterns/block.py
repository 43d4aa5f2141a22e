"""Block: whole ``block`` tiles go, the lowest by summed score; the tiles must divide every weight."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from prunelight.apply.patterns.base import SparsePattern
from prunelight.apply.patterns.registry import register
from prunelight.ranking.patterns import block_mask

if TYPE_CHECKING:
    from prunelight.apply.sparse import LayerPattern


@register
class Block(SparsePattern):
    name = "block"
    tiles = True

    def mask(self, scores: torch.Tensor, pattern: LayerPattern, label: str) -> torch.Tensor:
        return block_mask(scores, pattern.sparsity, pattern.block, label)

    def removal_unit(self, out_features: int, comparison: str, block: tuple[int, int]) -> int:
        return block[0] * block[1]
