"""The settings of the ``prune`` stage that are not a model or a datamodule, as YAML-friendly dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from prunelight.data.corpora import CorpusSpec
from prunelight.importance.criteria import Criterion


@dataclass
class ImportanceSettings:
    """How groups are scored (DESIGN: Importance criteria).

    Attributes:
        criterion: magnitude, taylor, taylor2, wanda, fluctuation or block_influence.
        aggregation: taylor/taylor2 only: ``batch`` sums |W * g| of each batch's gradient, ``sample`` runs one
            backward per window.
        magnitude_norm: 1 (sum of |W|) or 2 (L2 norm) for magnitude.
        gradient_statistics: with taylor/taylor2, keep per-layer gradient mean/std/norm/min/max for
            ``analysis/gradient_statistics.json`` and the diagnosis (its cost:
            benchmarks/diagnostics_overhead.py).
    """

    criterion: Criterion = "taylor"
    aggregation: Literal["batch", "sample"] = "batch"
    magnitude_norm: Literal[1, 2] = 1
    gradient_statistics: bool = True


@dataclass
class EvaluationSettings:
    """Perplexity of the dense and the pruned model.

    Attributes:
        corpora: evaluation corpora (wikitext2, ptb, c4, c4_zh, local files).
        split: ``test`` as in the literature.
        seqlen: tokens per window; 2048 makes numbers comparable with the literature.
        max_windows: only the first N windows of each corpus (None: the whole split).
        batch_size: windows per forward pass.
        dense: also evaluate the model before pruning (the baseline of the summary).
    """

    corpora: list[str | CorpusSpec] = field(default_factory=lambda: ["wikitext2"])
    split: str = "test"
    seqlen: int = 2048
    max_windows: int | None = None
    batch_size: int = 1
    dense: bool = True
