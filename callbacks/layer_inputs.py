"""Calibration callbacks of sparse pruning: input statistics of every layer at once, or captured layer inputs.

Both run in the trainer's test loop (:func:`prunelight.loops.run_calibration`), so device placement, the
progress bar and DDP sharding of the windows are Lightning's, exactly as for the structured criteria.
"""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch

from prunelight.calibration.sequential import Captured, Catchers
from prunelight.importance.inputs import LayerInputs


class LayerInputsCallback(L.Callback):
    """One pass: :class:`LayerInputs` of every decoder layer of the dense model, summed across ranks.

    Args:
        hessian: also gather ``X^T X`` (SparseGPT).
    """

    def __init__(self, hessian: bool = False) -> None:
        self.hessian = hessian
        self.result: list[LayerInputs] | None = None

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.backward = False
        adapter = pl_module.adapter
        layers = adapter.decoder_layers(pl_module.model)
        self.result = [LayerInputs(adapter.modules(layer), self.hessian).attach() for layer in layers]

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        assert self.result is not None
        for inputs in self.result:
            inputs.detach()
            inputs.reduce(sum_across_ranks(trainer))

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        for inputs in self.result or []:
            inputs.detach()


class CaptureCallback(L.Callback):
    """Records this rank's first-layer inputs and every layer's keyword arguments (see :class:`Catchers`).

    Args:
        offload: keep the recorded hidden states in CPU memory (one batch at a time moves to the device),
            for calibration sets whose activations do not fit next to the model.
    """

    def __init__(self, offload: bool = False) -> None:
        self.offload = offload
        self._catchers: Catchers | None = None
        self.result: Captured | None = None

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.backward = False
        self._catchers = Catchers(pl_module.model, pl_module.adapter, self.offload).__enter__()

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: object,
        batch: dict,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        # a padding batch (FSDP2 keeps the ranks in step with them) ran for the collectives: drop its record
        if batch.get("padding") and self._catchers is not None:
            captured = self._catchers.captured
            captured.hidden.pop()
            for per_layer in captured.kwargs:
                per_layer.pop()

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._release()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._release()

    def _release(self) -> None:
        if self._catchers is not None:
            self._catchers.__exit__(None, None, None)
            self.result, self._catchers = self._catchers.captured, None


def sum_across_ranks(trainer: L.Trainer) -> Callable[[torch.Tensor], torch.Tensor]:
    """The trainer's all-reduce (sum) as a function of one tensor."""

    def reduce(tensor: torch.Tensor) -> torch.Tensor:
        return trainer.strategy.reduce(tensor, reduce_op="sum")

    return reduce
