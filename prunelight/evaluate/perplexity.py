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

SLICE_ELEMENTS = 2**26
"""Logits scored at once (256 MiB in float32): the shifted, flattened float32 copy and the log-softmax that
``cross_entropy`` makes are of one slice, not of the batch's logits (10 GB each for a 152k vocabulary at
8 x 2048 tokens)."""


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
        step = max(1, SLICE_ELEMENTS // (batch * vocab))
        for start in range(0, length - 1, step):  # a slice of positions at a time: no copy of all the logits
            end = min(start + step, length - 1)
            part, target = logits[:, start:end], targets[:, start:end]
            nll = F.cross_entropy(
                part.flatten(0, 1).float(), target.flatten(), reduction="sum", ignore_index=self.ignore_index
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
