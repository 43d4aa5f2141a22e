"""Importance: per-group scores from weights, activations and gradients seen during calibration."""

from prunelight.importance.accumulator import Calibrated, ImportanceAccumulator
from prunelight.importance.criteria import CRITERIA, criterion_info
from prunelight.importance.statistics import LayerStatistics

__all__ = ["CRITERIA", "Calibrated", "ImportanceAccumulator", "LayerStatistics", "criterion_info"]
