"""Calibration: seeded windows (datamodule) run through the model (module) while callbacks score groups."""

from prunelight.calibration.datamodule import CalibrationDataModule
from prunelight.calibration.module import CalibrationModule

__all__ = ["CalibrationDataModule", "CalibrationModule"]
