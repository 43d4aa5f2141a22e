"""Magnitude: a weight matters as much as it is large; needs no calibration data at all."""

from __future__ import annotations

import torch

from prunelight.importance.criteria.base import Criterion, InputNorms
from prunelight.importance.criteria.registry import register
from prunelight.importance.evidence import LayerEvidence
from prunelight.importance.groups import group_sum


def magnitude_elements(weight: torch.Tensor, norm: int = 1) -> torch.Tensor:
    """|W| for the L1 magnitude, W^2 for L2 (the square root is taken on the group sum)."""
    w = weight.detach().float()
    return w.abs() if norm == 1 else w.square()


@register
class Magnitude(Criterion):
    """Sum of ``|W|`` over a group, or with ``magnitude_norm: 2`` the group's L2 norm; masks use ``|W|``."""

    name = "magnitude"
    description = "sum of |W| (or L2 norm) over the group"
    sparse = True

    def group_scores(self, layer: LayerEvidence, kind: str) -> torch.Tensor:
        score = super().group_scores(layer, kind)
        return score.sqrt() if layer.magnitude_norm == 2 else score

    def projection_scores(self, weight: torch.Tensor, layer: LayerEvidence, projection: str) -> torch.Tensor:
        elements = magnitude_elements(weight, layer.magnitude_norm)
        return group_sum(elements, projection, layer.groups(projection))

    def element_scores(
        self, weight: torch.Tensor, inputs: InputNorms | None, projection: str
    ) -> torch.Tensor:
        return magnitude_elements(weight)
