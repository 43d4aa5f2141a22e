"""ShortGPT's block influence (Men et al., 2024): a decoder layer matters as much as it changes its input,
``1 - cos(h_in, h_out)``; within a layer, groups share it in proportion to their magnitude."""

from __future__ import annotations

import torch

from prunelight.importance.criteria.base import Criterion, InputNorms
from prunelight.importance.criteria.magnitude import magnitude_elements
from prunelight.importance.criteria.registry import register
from prunelight.importance.evidence import LayerEvidence


@register
class BlockInfluence(Criterion):
    """The layer's block influence times each group's L1 magnitude over the layer's mean magnitude."""

    name = "block_influence"
    description = "ShortGPT: 1 - cos(h_in, h_out) of each decoder layer"

    def group_scores(self, layer: LayerEvidence, kind: str) -> torch.Tensor:
        score = super().group_scores(layer, kind)
        return layer.influence.to(score) * score / score.mean().clamp_min(1e-30)

    def element_scores(
        self, weight: torch.Tensor, inputs: InputNorms | None, projection: str
    ) -> torch.Tensor:
        return magnitude_elements(weight, 1)
