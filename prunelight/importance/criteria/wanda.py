"""Wanda (Sun et al., 2023): a weight matters as much as it is large *and* its input feature is active."""

from __future__ import annotations

import torch

from prunelight.importance.criteria.base import Criterion, InputNorms
from prunelight.importance.criteria.registry import register


def wanda_elements(weight: torch.Tensor, input_norm: torch.Tensor) -> torch.Tensor:
    """|W_ij| * ||X_j||: the Wanda score, with X_j the j-th input feature over all calibration tokens."""
    return weight.detach().float().abs() * input_norm.float()[None, :]


@register
class Wanda(Criterion):
    """``|W_ij| * ||X_j||``, summed over a group for structured pruning, per weight for masks."""

    name = "wanda"
    description = "|W| x L2 norm of the weight's input feature, summed over the group"
    input_norms = True
    input_sumsq = True
    sparse = True
    needs_layer_inputs = True

    def element_scores(
        self, weight: torch.Tensor, inputs: InputNorms | None, projection: str
    ) -> torch.Tensor:
        assert inputs is not None, "wanda scores need the layer's input statistics"
        return wanda_elements(weight, inputs.input_norm(projection))
