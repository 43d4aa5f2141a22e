"""``analysis/gradient_statistics.json``: per layer and kind, the gradients, the importance and the rate.

One file holds everything the diagnosis, the plots and TensorBoard need that is not already in
``layer_report.json``: the gradient statistics gathered during calibration (None for forward criteria), the
statistics of the raw group scores with a histogram (TensorBoard's per-layer histograms are rebuilt from it),
and the pruning rate the ranking gave each layer.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from prunelight.importance.gradients import KINDS
from prunelight.ranking import RankingResult
from prunelight.ranking.table import GroupTable

SCHEMA_ID = "prunelight/gradient_statistics/1"
HISTOGRAM_BINS = 30


def score_statistics(scores: torch.Tensor, bins: int = HISTOGRAM_BINS) -> dict[str, Any]:
    """mean, std (population), L2 norm, min, max and a histogram of one layer's group scores."""
    x = scores.double().flatten()
    low, high = float(x.min()), float(x.max())
    finite = math.isfinite(low) and math.isfinite(high)
    bins = min(bins, x.numel())
    if finite and high > low:
        counts = torch.histc(x, bins=bins, min=low, max=high)
        edges = torch.linspace(low, high, bins + 1, dtype=torch.float64)
    else:  # all scores equal (or not finite): one bucket holds them all
        counts = torch.tensor([float(x.numel())])
        edges = torch.tensor([low, high if high > low else low + 1.0]) if finite else torch.tensor([0.0, 1.0])
    return {
        "mean": float(x.mean()),
        "std": float(x.std(unbiased=False)),
        "norm": float(torch.linalg.vector_norm(x)),
        "min": low,
        "max": high,
        "groups": x.numel(),
        "histogram": {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]},
    }


def gradient_statistics(
    criterion: str,
    table: GroupTable,
    result: RankingResult,
    gradients: list[dict[str, dict[str, Any] | None]] | None,
    mean_loss: float | None,
) -> dict[str, Any]:
    """The content of ``analysis/gradient_statistics.json`` (schema: :data:`SCHEMA_ID`)."""
    layers = []
    for index in range(table.num_layers):
        entry: dict[str, Any] = {"layer": index}
        for kind in KINDS:
            scores = table.attention[index] if kind == "attention" else table.mlp[index]
            allocation = result.stages.get(kind, {}).get("allocation")
            entry[kind] = {
                "gradient": gradients[index][kind] if gradients is not None else None,
                "importance": score_statistics(scores),
                "rate": allocation["rate"][index] if allocation else 0.0,
            }
        layers.append(entry)
    return {
        "schema": SCHEMA_ID,
        "criterion": criterion,
        "gradients_collected": gradients is not None,
        "calibration_loss": mean_loss,
        "num_layers": table.num_layers,
        "layers": layers,
    }


def series(statistics: dict[str, Any], kind: str, source: str, stat: str) -> list[float | None]:
    """One statistic of every layer, e.g. ``series(s, "mlp", "gradient", "norm")``; None where absent.

    ``source`` is ``gradient`` or ``importance``; ``series(s, kind, "rate", "")`` gives the pruning rates.
    """
    values: list[float | None] = []
    for entry in statistics["layers"]:
        part = entry[kind]
        if source == "rate":
            values.append(part["rate"])
        else:
            block = part.get(source)
            values.append(None if block is None else block[stat])
    return values
