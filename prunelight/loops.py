"""The Lightning loops every stage stands on: calibrate, run the calibration windows, measure perplexity.

A stage never drives Lightning's loops itself and never calls a subcommand method of the trainer; it calls
these functions with the trainer it was given. Each runs Lightning's ``test`` loop (no optimiser, no DDP
gradient synchronisation, each rank sees its shard of the batches) with one callback attached for that run
only, and keeps the module on its device afterwards. They take any :class:`lightning.Trainer`, so a plain
``L.Trainer`` calibrates as well as a :class:`~prunelight.trainer.PrunelightTrainer`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L

from prunelight.callbacks.evaluation_report import EvaluationReport
from prunelight.callbacks.importance import ImportanceCallback
from prunelight.importance import Calibrated


@contextmanager
def attached(trainer: L.Trainer, callback: L.Callback) -> Iterator[None]:
    """``callback`` among the trainer's callbacks for the block only (unless it was there already)."""
    added = callback not in trainer.callbacks
    if added:
        trainer.callbacks.append(callback)
    try:
        yield
    finally:
        if added:
            trainer.callbacks.remove(callback)


@contextmanager
def kept_on_device(module: L.LightningModule) -> Iterator[None]:
    """Keep ``module`` on its device when the run ends.

    Lightning's strategy teardown moves the module to the CPU after every ``test``; prunelight runs several
    stages on one in-memory model (calibrate, evaluate, apply, evaluate again), and for a 7B model each
    round trip over PCIe costs seconds (measured: it made calibration 3.5x slower than a bare loop on an
    H100). The instance attribute shadows ``cpu()`` only while the block runs.
    """
    module.cpu = lambda: module  # type: ignore[method-assign]
    try:
        yield
    finally:
        del module.cpu


def run_calibration(
    trainer: L.Trainer, module: L.LightningModule, datamodule: L.LightningDataModule, callback: L.Callback
) -> None:
    """The calibration windows through ``module`` with ``callback`` attached: it decides what runs (forward
    only or backward too) and what is kept. Inference mode is off so that gradients can flow."""
    inference_mode, trainer.test_loop.inference_mode = trainer.test_loop.inference_mode, False
    try:
        with attached(trainer, callback), kept_on_device(module):
            trainer.test(module, datamodule=datamodule, verbose=False)
    finally:
        trainer.test_loop.inference_mode = inference_mode


def calibrate(
    trainer: L.Trainer,
    module: L.LightningModule,
    datamodule: L.LightningDataModule,
    importance: ImportanceCallback | None = None,
) -> Calibrated:
    """Run the calibration windows through ``module`` with ``importance`` attached; return its scores.

    Without ``importance``, an :class:`ImportanceCallback` among the trainer's callbacks is used (or a
    default one: Taylor).
    """
    if importance is None:
        given = [c for c in trainer.callbacks if isinstance(c, ImportanceCallback)]
        importance = given[0] if given else ImportanceCallback()
    run_calibration(trainer, module, datamodule, importance)
    assert importance.result is not None
    return importance.result


def measure_perplexity(
    trainer: L.Trainer,
    module: L.LightningModule,
    datamodule: L.LightningDataModule | None,
    report: EvaluationReport,
) -> dict[str, Any]:
    """``test`` a perplexity module with ``report`` attached for this run; return what it wrote."""
    with attached(trainer, report), kept_on_device(module):
        trainer.test(module, datamodule=datamodule, verbose=False)
    return report.report or {}
