"""Importance: per-group scores from weights, activations and gradients seen during calibration."""

from prunelight.importance.accumulator import Calibrated, ImportanceAccumulator
from prunelight.importance.criteria import CRITERIA, criterion_info

__all__ = ["CRITERIA", "Calibrated", "ImportanceAccumulator", "criterion_info"]
