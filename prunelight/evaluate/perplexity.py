"""Perplexity as a torchmetrics metric: exp of the mean next-token negative log-likelihood.

Sums are kept in float64 and reduced with ``sum`` across processes, so N ranks that score disjoint shares
of the windows (:mod:`prunelight.data.batches`) give the number of one process. Each batch adds one float32
NLL sum per slice of positions, the same numbers on any rank as on one process (the same windows in the
same batch, sliced the same way); float64 adds float32 values without rounding while their exact sum fits
its 53 bits (24 per value, plus their spread in powers of two and log2 of their count: any realistic
evaluation), so the order in which the ranks' sums are added does not change the result, which is then
bitwise that of one process.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchmetrics import Metric

from prunelight.data.batches import IGNORE_INDEX
from prunelight.models.logits import position_slices


class Perplexity(Metric):
    """Next-token perplexity over windows that each start a fresh context.

    ``update(logits, labels)`` scores tokens 1..T-1 of each window from logits 0..T-2 (``labels`` is the
    window's ``input_ids``, or a copy with ``ignore_index`` where no loss is taken); ignored positions are
    skipped, and a window counts only when one of its tokens is scored, so a padding batch whose labels are
    all ignored changes nothing.
    """

    full_state_update = False
    higher_is_better = False
    is_differentiable = False

    def __init__(self, ignore_index: int = IGNORE_INDEX, **kwargs) -> None:
        super().__init__(**kwargs)
        self.ignore_index = ignore_index
        self.add_state("nll_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("tokens", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("windows", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        if logits.shape[:2] != labels.shape:
            raise ValueError(f"logits {tuple(logits.shape)} do not match labels {tuple(labels.shape)}")
        targets = labels[:, 1:]
        batch, length, vocab = logits.shape
        for at in position_slices(batch, length - 1, vocab):  # cross_entropy's copies are of one slice
            nll = F.cross_entropy(
                logits[:, at].flatten(0, 1).float(),
                targets[:, at].flatten(),
                reduction="sum",
                ignore_index=self.ignore_index,
            )
            self.nll_sum += nll.double()
        scored = targets != self.ignore_index
        self.tokens += scored.sum()
        self.windows += scored.any(dim=1).sum()

    def compute(self) -> torch.Tensor:
        return torch.exp(self.nll_sum / self.tokens)

    def summary(self) -> dict[str, float | int]:
        """The number with what it was measured on; synced across processes like ``compute``."""
        with self.sync_context():
            nll, tokens, windows = self.nll_sum.item(), int(self.tokens), int(self.windows)
        mean = nll / tokens if tokens else float("nan")
        return {
            "perplexity": math.exp(mean) if tokens else float("nan"),
            "nll_mean": mean,
            "tokens_scored": tokens,
            "windows": windows,
        }
