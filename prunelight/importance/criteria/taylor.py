"""First-order Taylor: a weight matters as much as removing it would change the loss, ``|W * dL/dW|``.

The gradient hooks (:mod:`prunelight.importance.gradient_hooks`) fold every batch's gradient into group scores
while the gradient exists (:func:`~prunelight.importance.kernels.taylor_group_scores`, or its fused kernel,
since it runs once per weight per backward); the criterion only reads the sums back.
"""

from __future__ import annotations

import torch

from prunelight.importance.criteria.base import Criterion
from prunelight.importance.criteria.registry import register
from prunelight.importance.evidence import LayerEvidence


@register
class Taylor(Criterion):
    """Sum over a group and over calibration batches of ``|W * g|``."""

    name = "taylor"
    description = "first-order Taylor: sum of |W * dL/dW| over the group"
    needs_gradients = True

    def group_scores(self, layer: LayerEvidence, kind: str) -> torch.Tensor:
        return layer.gradient_scores(kind)
