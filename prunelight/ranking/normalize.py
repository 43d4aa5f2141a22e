"""Stage 1 of the ranking: optional percentile clipping, then normalisation, per layer and kind.

Every method keeps the scores non-negative and, except for an all-zero layer under ``none``/``log``/``sqrt``,
gives each layer a positive mean. That matters because the layer correction (tau) divides by the layer's
mean score; a zero or negative mean would flip or destroy the ranking. Constant layers never produce NaN.

- ``none``: the raw scores.
- ``minmax``: ``(s - min) / (max - min) + EPS`` per layer, so every layer spans ``[EPS, 1 + EPS]``; the
  ``EPS`` keeps each layer's lowest group (and so the layer mean) strictly positive. A constant layer maps to
  ``0.5 + EPS``, the middle of the range: it says nothing about which of its groups matters, so it should
  neither go first nor last.
- ``zscore``: ``(s - mean) / std`` per layer (population std; a constant layer gives 0), then one shift for
  all layers of the kind so the lowest score of the kind becomes 1. A per-layer shift would make each
  layer's mean depend on how skewed that layer is; the common shift keeps the z-scores comparable across
  layers, which is the point of z-scoring. Every layer then has the same mean (the shift), so after
  ``zscore`` the tau correction only undoes what the block correction (T) did to the layer means.
- ``log``: ``log1p(s)``, which compresses large scores and keeps 0 at 0.
- ``sqrt``: ``sqrt(s)``, a milder compression.
"""

from __future__ import annotations

import torch

NORMALIZATIONS: tuple[str, ...] = ("none", "minmax", "zscore", "log", "sqrt")
EPS = 1e-6
"""Added after min-max scaling so that no layer's mean is 0."""


def clip_percentiles(scores: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Clamp one layer's scores to its ``low``-th and ``high``-th percentiles (0-100, linear interpolation).

    Clipping first stops a few outlier groups from setting a layer's range (minmax) or its mean (tau).
    """
    if scores.numel() == 0:
        return scores
    q = torch.quantile(scores, torch.tensor([low / 100.0, high / 100.0], dtype=scores.dtype))
    return scores.clamp(min=q[0].item(), max=q[1].item())


def _minmax(s: torch.Tensor) -> torch.Tensor:
    if s.numel() == 0:
        return s
    lo, hi = s.min(), s.max()
    if hi <= lo:
        return torch.full_like(s, 0.5 + EPS)
    return (s - lo) / (hi - lo) + EPS


def _zscore(s: torch.Tensor) -> torch.Tensor:
    if s.numel() == 0:
        return s
    std = s.std(unbiased=False)
    if std <= 0:
        return torch.zeros_like(s)
    return (s - s.mean()) / std


def normalize(scores: list[torch.Tensor], method: str) -> list[torch.Tensor]:
    """Normalise the scores of one kind, one tensor per layer (see the module docstring for each method).

    Takes all layers of the kind at once because ``zscore`` needs one shift common to all layers.
    """
    if method == "none":
        return [s.clone() for s in scores]
    if method == "minmax":
        return [_minmax(s) for s in scores]
    if method == "log":
        return [torch.log1p(s) for s in scores]
    if method == "sqrt":
        return [torch.sqrt(s) for s in scores]
    if method == "zscore":
        z = [_zscore(s) for s in scores]
        lowest = min((float(t.min()) for t in z if t.numel()), default=0.0)
        return [t - lowest + 1.0 for t in z]
    raise ValueError(f"unknown normalization {method!r}; expected one of {NORMALIZATIONS}")
