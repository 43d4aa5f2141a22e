"""Gradient statistics per decoder layer and kind, folded in while the gradients exist.

The importance hooks free every gradient as soon as it is scored, so the statistics must be taken in the
same hook: per (layer, kind) the element count, sum and sum of squares (float64, summed across ranks) and
the smallest and largest element (max-reduced across ranks). From those: mean and standard deviation over
all elements of all backward passes, and ``norm`` = sqrt(mean over backward passes of ||g||^2), the
root-mean-square L2 norm of the kind's gradient in one pass (all its projections together).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

KINDS = ("attention", "mlp")
STATISTICS = ("mean", "std", "norm", "min", "max")

# columns of the summed moments
_ELEMENTS, _SUM, _SUMSQ, _PASSES = range(4)


class GradientStatistics:
    """Accumulators for ``num_layers`` layers, each on its layer's device (NCCL reduces CUDA tensors only).

    Args:
        devices: the device of each layer.
        projections: how many weights make up each kind (4 for q/k/v/o, 3 for gate/up/down): a backward pass
            calls the hook once per weight.
    """

    def __init__(self, devices: list[torch.device], projections: dict[str, int]) -> None:
        self.projections = projections
        self.moments = [torch.zeros(len(KINDS), 4, dtype=torch.float64, device=d) for d in devices]
        self.minimum = [torch.full((len(KINDS),), math.inf, dtype=torch.float64, device=d) for d in devices]
        self.maximum = [torch.full((len(KINDS),), -math.inf, dtype=torch.float64, device=d) for d in devices]

    def observe(self, layer: int, kind: str, grad: torch.Tensor) -> None:
        """Fold one weight's gradient in: three reductions (sum, sum of squares, min/max), no copy."""
        k = KINDS.index(kind)
        low, high = torch.aminmax(grad)
        row = torch.stack(
            [
                torch.sum(grad, dtype=torch.float32).double(),
                torch.linalg.vector_norm(grad, dtype=torch.float32).double().square(),
            ]
        )
        moments = self.moments[layer][k]
        moments[_ELEMENTS] += grad.numel()
        moments[_SUM : _SUMSQ + 1] += row
        moments[_PASSES] += 1.0 / self.projections[kind]
        low_slot, high_slot = self.minimum[layer][k : k + 1], self.maximum[layer][k : k + 1]
        torch.minimum(low_slot, low.double().view(1), out=low_slot)
        torch.maximum(high_slot, high.double().view(1), out=high_slot)

    def reduce(
        self,
        reduce_sum: Callable[[torch.Tensor], torch.Tensor],
        reduce_max: Callable[[torch.Tensor], torch.Tensor],
    ) -> None:
        """Combine the ranks: sums add, the minimum is the negated maximum of the negated minima."""
        self.moments = [reduce_sum(t.clone()) for t in self.moments]
        self.minimum = [-reduce_max(-t) for t in self.minimum]
        self.maximum = [reduce_max(t.clone()) for t in self.maximum]

    def summary(self) -> list[dict[str, dict[str, Any] | None]]:
        """Per layer, per kind: mean, std, norm, min, max, elements and backward passes (None if unseen)."""
        layers = []
        for moments, low, high in zip(self.moments, self.minimum, self.maximum, strict=True):
            entry: dict[str, dict[str, Any] | None] = {}
            for k, kind in enumerate(KINDS):
                n, total, total_sq, passes = (float(v) for v in moments[k].cpu())
                if n == 0:
                    entry[kind] = None
                    continue
                mean = total / n
                variance = max(total_sq / n - mean * mean, 0.0) if math.isfinite(total_sq) else total_sq
                entry[kind] = {
                    "mean": mean,
                    "std": math.sqrt(variance) if variance == variance else variance,
                    "norm": math.sqrt(total_sq / passes) if passes else 0.0,
                    "min": float(low[k]),
                    "max": float(high[k]),
                    "elements": int(n),
                    "passes": round(passes),
                }
            layers.append(entry)
        return layers
