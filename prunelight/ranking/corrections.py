"""Stages 2-4 of the ranking: the block (temperature) and layer (tau) corrections, and the depth weight.

Raw group scores of different layers live on different scales (early layers' scores are often orders of
magnitude smaller), so a global ranking of raw scores prunes early layers almost entirely. The corrections
rescale whole layers, never groups within a layer, so each layer's own order is always kept:

- block: ``s' = s * w[l]`` with ``w[l] = (B[l] / mean(B)) ** T``; the layer's block importance decides how
  much its groups are worth relative to other layers' groups.
- layer: ``s'' = s' / mean_g(s'[l]) ** tau``; ``tau = 1`` makes all layer means equal, so only each layer's
  own spread decides. An all-zero layer (mean 0) is left as it is rather than divided by zero.
- depth: ``s *= 1 + depth_weight * (L - 1 - l) / (L - 1)``, a plain prior that earlier layers matter more.
"""

from __future__ import annotations

import math

import torch


def block_weights(block_importance: torch.Tensor | None, temperature: float, num_layers: int) -> torch.Tensor:
    """``w[l] = (B[l] / mean(B)) ** T``; all ones when ``T == 0`` (block importance is then not needed)."""
    if temperature == 0:
        return torch.ones(num_layers, dtype=torch.float64)
    assert block_importance is not None, "checked by rank()"
    b = block_importance.to(torch.float64)
    return (b / b.mean()) ** temperature


def scale_layers(scores: list[torch.Tensor], factors: torch.Tensor) -> list[torch.Tensor]:
    """Multiply every score of layer ``l`` by ``factors[l]``."""
    return [s * float(f) for s, f in zip(scores, factors, strict=True)]


def layer_means(scores: list[torch.Tensor]) -> torch.Tensor:
    """Mean score of every layer (0 for a layer without groups)."""
    return torch.tensor([float(s.mean()) if s.numel() else 0.0 for s in scores], dtype=torch.float64)


def adaptive_tau(means: torch.Tensor, factor: float) -> float:
    """Smallest ``tau`` in [0, 1] for which the largest and smallest layer means differ by at most ``factor``.

    After the correction a layer's mean is ``m ** (1 - tau)``, so the ratio of means becomes
    ``(max / min) ** (1 - tau)``, which is ``<= factor`` exactly when
    ``tau >= 1 - log(factor) / log(max / min)``.
    Layers with mean 0 are ignored (no tau changes them); with fewer than two positive means tau is 0.
    """
    positive = means[means > 0]
    if positive.numel() < 2:
        return 0.0
    ratio = float(positive.max() / positive.min())
    if ratio <= factor:
        return 0.0
    if factor <= 1.0:
        return 1.0
    return min(1.0, max(0.0, 1.0 - math.log(factor) / math.log(ratio)))


def layer_correction(scores: list[torch.Tensor], tau: float) -> list[torch.Tensor]:
    """``s'' = s' / mean(s'[l]) ** tau`` per layer; layers with mean 0 (all scores 0) stay as they are."""
    if tau == 0:
        return [s.clone() for s in scores]
    means = layer_means(scores)
    divisors = torch.where(means > 0, means.clamp(min=torch.finfo(torch.float64).tiny) ** tau, 1.0)
    return [s / float(d) for s, d in zip(scores, divisors, strict=True)]


def depth_factors(num_layers: int, depth_weight: float) -> torch.Tensor:
    """``1 + depth_weight * (L - 1 - l) / (L - 1)``: the first layer gets ``1 + depth_weight``, the last 1."""
    if num_layers <= 1 or depth_weight == 0:
        return torch.ones(num_layers, dtype=torch.float64)
    depth = torch.arange(num_layers, dtype=torch.float64)
    return 1.0 + depth_weight * (num_layers - 1 - depth) / (num_layers - 1)
