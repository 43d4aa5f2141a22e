"""FLAP's fluctuation (An et al., 2024): an o/down input channel matters as much as it varies, times the
energy of the weight column that reads it. Only those two projections are scored."""

from __future__ import annotations

import torch

from prunelight.importance.criteria.base import Criterion
from prunelight.importance.criteria.registry import register
from prunelight.importance.evidence import LayerEvidence
from prunelight.importance.groups import group_sum


def fluctuation_elements(weight: torch.Tensor, input_variance: torch.Tensor) -> torch.Tensor:
    """W_ij^2 * Var(X_j): summed over column j it is FLAP's fluctuation Var(X_j) * ||W_:,j||^2."""
    return weight.detach().float().square() * input_variance.float()[None, :]


@register
class Fluctuation(Criterion):
    """``Var(X_j) * ||W_:,j||^2`` of the o/down input channels; q/k/v/gate/up add nothing."""

    name = "fluctuation"
    description = "FLAP: variance of o/down input channels x squared weight column norm"
    input_sums = True
    input_sumsq = True

    def projection_scores(self, weight: torch.Tensor, layer: LayerEvidence, projection: str) -> torch.Tensor:
        groups = layer.groups(projection)
        variance = layer.input_variance(projection)
        if variance is None:  # FLAP scores only the output projections' input channels
            return torch.zeros(groups, dtype=torch.float64, device=weight.device)
        return group_sum(fluctuation_elements(weight, variance.clamp_min(0)), projection, groups)
