"""Unstructured: the lowest-scored single weights go, per output row (Wanda's rule) or per whole matrix."""

from __future__ import annotations

import torch

from prunelight.apply.patterns.base import ProjectionShape, SparsePattern
from prunelight.apply.patterns.registry import register
from prunelight.ranking.patterns import unstructured_mask


@register
class Unstructured(SparsePattern):
    name = "unstructured"

    def mask(self, scores: torch.Tensor, pattern: ProjectionShape, label: str) -> torch.Tensor:
        return unstructured_mask(scores, pattern.sparsity, pattern.comparison)

    def removal_unit(self, out_features: int, comparison: str, block: tuple[int, int]) -> int:
        """With ``comparison: row`` every row loses as many weights, so a projection loses whole columns."""
        return out_features if comparison == "row" else 1
