"""Gradient statistics per decoder layer and kind, folded in while the gradients exist.

The importance hooks free every gradient as soon as it is scored, so the statistics must be taken in the
same hook: per (layer, kind) the element count, sum and sum of squares (float64, summed across ranks) and
the smallest and largest element (max-reduced across ranks). From those: mean and standard deviation over
all elements of all backward passes, and ``norm`` = sqrt(mean over backward passes of ||g||^2), the
root-mean-square L2 norm of the kind's gradient in one pass (all its projections together).

Cost is what matters here (a 7B model has 224 weight gradients per backward pass): the hook reads each
gradient twice (``var_mean``, one Welford pass; ``aminmax``) and launches three kernels, or, on a GPU with
Triton, takes the moments from the fused Taylor kernel that reads the gradient anyway
(:mod:`prunelight.importance.kernels`); the per-gradient results wait in a list and are folded into the
accumulators once per batch with a handful of index_add/scatter kernels. ``var_mean`` returns the
gradient's dtype, so on the torch path a bfloat16 model's statistics carry about three significant
digits (the kernel sums in float32).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from prunelight.importance.statistics import summable

KINDS = ("attention", "mlp")
STATISTICS = ("mean", "std", "norm", "min", "max")

# columns of the summed moments
_ELEMENTS, _SUM, _SUMSQ, _PASSES = range(4)


class GradientStatistics:
    """Accumulators for ``num_layers`` layers, kept per device (NCCL reduces CUDA tensors only; a model
    spread over several GPUs keeps each layer's rows on its own GPU).

    Args:
        devices: the device of each layer.
        projections: how many weights make up each kind (4 for q/k/v/o, 3 for gate/up/down): a backward pass
            calls the hook once per weight.
    """

    def __init__(self, devices: list[torch.device], projections: dict[str, int]) -> None:
        self.projections = projections
        rows = len(devices) * len(KINDS)
        self.moments = {d: torch.zeros(rows, 4, dtype=torch.float64, device=d) for d in set(devices)}
        self.minimum = {d: torch.full((rows,), math.inf, dtype=torch.float64, device=d) for d in set(devices)}
        self.maximum = {
            d: torch.full((rows,), -math.inf, dtype=torch.float64, device=d) for d in set(devices)
        }
        self._pending: dict[torch.device, list[tuple[int, int, torch.Tensor]]] = {}

    def observe(self, layer: int, kind: str, grad: torch.Tensor, moments: torch.Tensor | None = None) -> None:
        """Note one weight's gradient, folded in at the next :meth:`flush`.

        ``moments`` are rows of ``[sum, sum of squares, min, max]`` over disjoint parts of the gradient
        when the caller already has them (the fused Taylor kernel's per-tile partials, left unreduced so
        that combining them costs a few kernels per batch rather than per gradient); otherwise they are
        taken here, one row for the whole gradient."""
        if moments is None:
            from prunelight.importance.kernels import gradient_moments

            moments = gradient_moments(grad)
        row = layer * len(KINDS) + KINDS.index(kind)
        pending = self._pending.setdefault(grad.device, [])
        pending.append((row, grad.numel(), moments))

    def flush(self) -> None:
        """Fold the noted gradients into the accumulators (once per batch: a few kernels, not a few per
        gradient)."""
        for device, pending in self._pending.items():
            if not pending:
                continue
            parts = torch.cat([p[2].reshape(-1, 4) for p in pending]).double()
            counts = torch.tensor([p[2].numel() // 4 for p in pending])
            meta = torch.tensor([(p[0], p[1]) for p in pending], dtype=torch.float64)
            part_rows = torch.repeat_interleave(meta[:, 0].long(), counts).to(device)
            meta = meta.to(device)
            rows, n = meta[:, 0].long(), meta[:, 1]
            # columns: elements, sum, sum of squares, weight gradients seen (whole numbers: exact in any
            # order, where 1/3 of a pass per gradient added up differently on N ranks)
            moments = self.moments[device]
            moments[:, ::3].index_add_(0, rows, torch.stack([n, torch.ones_like(n)], dim=1))
            batch = torch.zeros_like(moments[:, 1:3]).index_add_(0, part_rows, parts[:, :2])
            moments[:, 1:3] += summable(batch)  # the batch's sums, exactly addable across batches and ranks
            self.minimum[device].scatter_reduce_(0, part_rows, parts[:, 2], "amin")
            self.maximum[device].scatter_reduce_(0, part_rows, parts[:, 3], "amax")
            pending.clear()

    def reduce(
        self,
        reduce_sum: Callable[[torch.Tensor], torch.Tensor],
        reduce_max: Callable[[torch.Tensor], torch.Tensor],
    ) -> None:
        """Combine the ranks: sums add, the minimum is the negated maximum of the negated minima."""
        self.flush()
        self.moments = {d: reduce_sum(t.clone()) for d, t in self.moments.items()}
        self.minimum = {d: -reduce_max(-t) for d, t in self.minimum.items()}
        self.maximum = {d: reduce_max(t.clone()) for d, t in self.maximum.items()}

    def summary(self) -> list[dict[str, dict[str, Any] | None]]:
        """Per layer, per kind: mean, std, norm, min, max, elements and backward passes (None if unseen)."""
        self.flush()
        moments = sum(t.cpu() for t in self.moments.values())
        minimum = torch.stack([t.cpu() for t in self.minimum.values()]).amin(dim=0)
        maximum = torch.stack([t.cpu() for t in self.maximum.values()]).amax(dim=0)
        layers = []
        for first in range(0, len(minimum), len(KINDS)):
            entry: dict[str, dict[str, Any] | None] = {}
            for k, kind in enumerate(KINDS):
                row = first + k
                n, total, total_sq, seen = (float(v) for v in moments[row])
                passes = seen / self.projections[kind]
                if n == 0:
                    entry[kind] = None
                    continue
                mean = total / n
                variance = max(total_sq / n - mean * mean, 0.0) if math.isfinite(total_sq) else total_sq
                entry[kind] = {
                    "mean": mean,
                    "std": math.sqrt(variance) if variance == variance else variance,
                    "norm": math.sqrt(total_sq / passes) if passes else 0.0,
                    "min": float(minimum[row]),
                    "max": float(maximum[row]),
                    "elements": int(n),
                    "passes": round(passes),
                }
            layers.append(entry)
        return layers
