"""Evaluation: perplexity as a torchmetrics metric and the LightningModule that computes it; zero-shot
accuracy through lm-eval (lm-eval is imported only when zero_shot runs)."""

from prunelight.evaluate.module import PerplexityModule
from prunelight.evaluate.perplexity import Perplexity
from prunelight.evaluate.zeroshot import ZeroShotSettings, check_tasks, write_zero_shot, zero_shot

__all__ = [
    "Perplexity",
    "PerplexityModule",
    "ZeroShotSettings",
    "check_tasks",
    "write_zero_shot",
    "zero_shot",
]
