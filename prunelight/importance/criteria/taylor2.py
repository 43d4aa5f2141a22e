"""Second-order Taylor: the first-order term plus the diagonal-Fisher estimate of the curvature term."""

from __future__ import annotations

from prunelight.importance.criteria.registry import register
from prunelight.importance.criteria.taylor import Taylor


@register
class Taylor2(Taylor):
    """Sum over a group and over batches of ``|W * g| + 0.5 * (W * g)^2``."""

    name = "taylor2"
    description = "first order plus 0.5 * (W * dL/dW)^2 (diagonal Fisher)"
    second_order = True
