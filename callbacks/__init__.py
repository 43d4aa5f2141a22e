"""Lightning callbacks of prunelight (the repository's ``callbacks/`` folder, installed as
``prunelight.callbacks``)."""

from prunelight.callbacks.evaluation_report import EvaluationReport
from prunelight.callbacks.mask import MaskCallback

__all__ = ["EvaluationReport", "MaskCallback"]
