"""Perplexity as a torchmetrics metric: exp of the mean next-token negative log-likelihood.

Sums are kept in float64 and reduced with ``sum`` across processes, so a DDP evaluation gives the same
number as one process over the same windows.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchmetrics import Metric


class Perplexity(Metric):
    """Next-token perplexity over windows that each start a fresh context.

    ``update(logits, input_ids)`` scores tokens 1..T-1 of each window from logits 0..T-2; positions whose
    label equals ``ignore_index`` are skipped.
    """

    full_state_update = False
    higher_is_better = False
    is_differentiable = False

    def __init__(self, ignore_index: int = -100, **kwargs) -> None:
        super().__init__(**kwargs)
        self.ignore_index = ignore_index
        self.add_state("nll_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("tokens", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("windows", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, input_ids: torch.Tensor) -> None:
        if logits.shape[:2] != input_ids.shape:
            raise ValueError(f"logits {tuple(logits.shape)} do not match input_ids {tuple(input_ids.shape)}")
        labels = input_ids[:, 1:]
        nll = F.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(),
            labels.flatten(),
            reduction="sum",
            ignore_index=self.ignore_index,
        )
        self.nll_sum += nll.double()
        self.tokens += (labels != self.ignore_index).sum()
        self.windows += input_ids.shape[0]

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
