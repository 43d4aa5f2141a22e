"""Evaluation: perplexity as a torchmetrics metric and the LightningModule that computes it."""

from prunelight.evaluate.module import PerplexityModule
from prunelight.evaluate.perplexity import Perplexity

__all__ = ["Perplexity", "PerplexityModule"]
