"""Lightning callbacks of prunelight (an installed package of its own, next to ``prunelight``)."""

from callbacks.evaluation_report import EvaluationReport
from callbacks.mask import MaskCallback

__all__ = ["EvaluationReport", "MaskCallback"]
