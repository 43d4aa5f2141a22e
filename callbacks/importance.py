"""Accumulate importance statistics while the trainer runs calibration windows through the model."""

from __future__ import annotations

import time
from typing import Any, Literal

import lightning as L
import torch

from prunelight.callbacks.layer_inputs import sum_across_ranks
from prunelight.errors import ConfigError
from prunelight.importance import Calibrated, ImportanceAccumulator, criterion_info
from prunelight.models.sharding import is_fully_sharded


class ImportanceCallback(L.Callback):
    """Scores every attention group and MLP channel of a :class:`~prunelight.calibration.CalibrationModule`.

    Hooks go on when the test loop starts and come off when it ends; the accumulators are then summed across
    ranks (so N DDP processes give the scores of one) and turned into :attr:`result`.

    Args:
        criterion: magnitude, taylor, taylor2, wanda, fluctuation or block_influence.
        aggregation: for taylor/taylor2, ``batch`` (|W * g| of each batch's gradient, summed over batches)
            or ``sample`` (one backward per window).
        magnitude_norm: 1 or 2, for magnitude.
        gradient_statistics: with a gradient criterion, keep per-layer gradient statistics for the diagnosis.
        input_means: keep the o/down input means that FLAP bias compensation needs
            (``Calibrated.input_means``; the prune stage turns this on with ``compensation``); off, a run
            hooks only what its criterion reads.
    """

    def __init__(
        self,
        criterion: str = "taylor",
        aggregation: Literal["batch", "sample"] = "batch",
        magnitude_norm: Literal[1, 2] = 1,
        gradient_statistics: bool = True,
        input_means: bool = False,
    ) -> None:
        self.info = criterion_info(criterion)
        if self.info.sequential_scoring:
            raise ConfigError(
                f"criterion {criterion!r} is scored layer by layer by the prune stage, not in one "
                "calibration pass"
            )
        if aggregation not in ("batch", "sample"):
            raise ConfigError(f"aggregation must be 'batch' or 'sample', got {aggregation!r}")
        if magnitude_norm not in (1, 2):
            raise ConfigError(f"magnitude_norm must be 1 or 2, got {magnitude_norm!r}")
        self.criterion, self.aggregation, self.magnitude_norm = criterion, aggregation, magnitude_norm
        self.gradient_statistics, self.input_means = gradient_statistics, input_means
        self.accumulator: ImportanceAccumulator | None = None
        self.result: Calibrated | None = None
        self.seconds: float | None = None
        """The calibration loop's time, hooks to reduced result; it starts once every rank is there (a
        launcher that starts the other ranks at the first trainer call makes rank 0 wait for their start-up,
        which is not calibration)."""
        self._start = 0.0

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        if self.aggregation == "sample" and is_fully_sharded(trainer.strategy) and datamodule is not None:
            nsamples, batch_size = datamodule.nsamples, datamodule.batch_size
            if nsamples % batch_size:  # a short last batch would run fewer passes than the other ranks'
                raise ConfigError(
                    f"aggregation 'sample' under FSDP2 needs nsamples ({nsamples}) to be a multiple of "
                    f"batch_size ({batch_size}): every rank must run as many forward passes"
                )
        pl_module.backward = self.info.needs_gradients
        pl_module.per_sample = self.aggregation == "sample"
        pl_module.criterion = self.criterion
        self.accumulator = ImportanceAccumulator(
            pl_module.model,
            pl_module.adapter,
            self.criterion,
            self.magnitude_norm,
            self.gradient_statistics,
            self.input_means,
        )
        self.accumulator.attach()
        self.result = None
        trainer.strategy.barrier("calibration")
        self._start = time.perf_counter()

    def on_test_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int, *_: Any
    ) -> None:
        assert self.accumulator is not None
        self.accumulator.paused = bool(batch.get("padding", False))

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        *_: Any,
    ) -> None:
        assert self.accumulator is not None
        self.accumulator.count(outputs["tokens"], outputs["loss"])

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        assert self.accumulator is not None
        self.accumulator.detach()
        strategy = trainer.strategy
        self.accumulator.reduce(sum_across_ranks(trainer), lambda t: _max(strategy, t))
        self.result = self.accumulator.result()
        self.seconds = time.perf_counter() - self._start
        self.accumulator = None  # it holds the model: the stages that follow may replace it (FSDP2)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if self.accumulator is not None:
            self.accumulator.detach()


def _max(strategy: Any, tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum across ranks (Lightning's ``reduce`` only sums and averages)."""
    gathered = strategy.all_gather(tensor)
    return gathered.amax(dim=0) if gathered.dim() > tensor.dim() else gathered
