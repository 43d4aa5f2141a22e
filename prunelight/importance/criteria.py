"""Importance criteria (DESIGN: Importance criteria) as element scores reduced to structured groups.

Every criterion is written as a score per weight element of a projection; a group's score is the sum of
its elements' scores (rows of q/k/v/gate/up, columns of o/down). Keeping the element form and the group
reduction apart lets one reduction serve all criteria and lets a test check each criterion against a hand
computation on one small layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from prunelight.errors import ConfigError
from prunelight.models.projections import ROW_PROJECTIONS

Criterion = Literal["magnitude", "taylor", "taylor2", "wanda", "fluctuation", "block_influence", "sparsegpt"]


@dataclass(frozen=True)
class CriterionInfo:
    needs_gradients: bool
    description: str
    structured: bool = True
    """False for a criterion that only sparse (mask) pruning can use."""


CRITERIA: dict[str, CriterionInfo] = {
    "magnitude": CriterionInfo(False, "sum of |W| (or L2 norm) over the group"),
    "taylor": CriterionInfo(True, "first-order Taylor: sum of |W * dL/dW| over the group"),
    "taylor2": CriterionInfo(True, "first order plus 0.5 * (W * dL/dW)^2 (diagonal Fisher)"),
    "wanda": CriterionInfo(False, "|W| x L2 norm of the weight's input feature, summed over the group"),
    "fluctuation": CriterionInfo(
        False, "FLAP: variance of o/down input channels x squared weight column norm"
    ),
    "block_influence": CriterionInfo(False, "ShortGPT: 1 - cos(h_in, h_out) of each decoder layer"),
    "sparsegpt": CriterionInfo(
        False, "SparseGPT: prune and reconstruct each weight from the layer's Hessian", structured=False
    ),
}


def criterion_info(name: str) -> CriterionInfo:
    try:
        return CRITERIA[name]
    except KeyError:
        raise ConfigError(f"unknown criterion {name!r}; choose one of {', '.join(CRITERIA)}") from None


def group_sum(elements: torch.Tensor, projection: str, groups: int) -> torch.Tensor:
    """Sum element scores ``[out, in]`` of one projection into ``groups`` group scores (float64)."""
    out, inp = elements.shape
    if projection in ROW_PROJECTIONS:
        return elements.reshape(groups, out // groups, inp).sum(dim=(1, 2), dtype=torch.float64)
    return elements.reshape(out, groups, inp // groups).sum(dim=(0, 2), dtype=torch.float64)


def magnitude_elements(weight: torch.Tensor, norm: int = 1) -> torch.Tensor:
    """|W| for the L1 magnitude, W^2 for L2 (the square root is taken on the group sum)."""
    w = weight.detach().float()
    return w.abs() if norm == 1 else w.square()


def taylor_group_scores(
    weight: torch.Tensor, grad: torch.Tensor, projection: str, groups: int, second_order: bool
) -> torch.Tensor:
    """Group sums of |W * g| (plus 0.5 * (W * g)^2 for ``taylor2``); g is the gradient of one batch.

    This runs once per weight per backward, so it is written for speed: the product is formed in the
    weights' dtype (the gradient already has that precision) and the sums of |.| and (.)^2 are taken by
    ``vector_norm`` in float32 without materialising them (on an H100 with a 7B model this halved the
    hooks' cost against casting both operands to float32 first).
    """
    wg = weight.detach() * grad
    out, inp = wg.shape
    if projection in ROW_PROJECTIONS:
        view, dims = wg.view(groups, -1), (1,)
    else:
        view, dims = wg.view(out, groups, inp // groups), (0, 2)
    score = torch.linalg.vector_norm(view, ord=1, dim=dims, dtype=torch.float32)
    if second_order:
        score = score + 0.5 * torch.linalg.vector_norm(view, ord=2, dim=dims, dtype=torch.float32).square()
    return score.double()


def wanda_elements(weight: torch.Tensor, input_norm: torch.Tensor) -> torch.Tensor:
    """|W_ij| * ||X_j||: the Wanda score, with X_j the j-th input feature over all calibration tokens."""
    return weight.detach().float().abs() * input_norm.float()[None, :]


def fluctuation_elements(weight: torch.Tensor, input_variance: torch.Tensor) -> torch.Tensor:
    """W_ij^2 * Var(X_j): summed over column j it is FLAP's fluctuation Var(X_j) * ||W_:,j||^2."""
    return weight.detach().float().square() * input_variance.float()[None, :]
