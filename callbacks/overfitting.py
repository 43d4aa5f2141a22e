"""Watch a fine-tuning run for overfitting: the train/validation gap and the validation trend.

Recovery fine-tuning runs on small corpora (a few thousand blocks of WikiText-2), where a LoRA model can
memorise the training text within an epoch. The monitor compares, at every validation, the validation loss
with the mean training loss since the previous validation, and warns (once per kind) when

- the validation loss rose for ``patience`` validations in a row while the training loss fell, or
- the validation loss exceeds the training loss by more than ``max_gap`` nats.

It only warns; Lightning's ``EarlyStopping`` on ``val/loss`` stops (``early_stopping_patience``). The history
and the warnings go to ``analysis/overfitting.json`` and to TensorBoard (``monitor/gap``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn

from prunelight.errors import ConfigError
from prunelight.io import write_json


@dataclass
class MonitorSettings:
    """Thresholds of the overfitting monitor.

    Attributes:
        patience: validations in a row with rising validation loss (and falling training loss) that warn.
        max_gap: validation minus training loss, in nats per token, above which it warns.
    """

    patience: int = 2
    max_gap: float = 0.5

    def __post_init__(self) -> None:
        if self.patience < 1:
            raise ConfigError(f"monitor.patience must be at least 1, got {self.patience}")


class OverfittingMonitor(L.Callback):
    """Records (step, train loss, validation loss, gap) at each validation and warns on overfitting.

    The training loss is read from ``pl_module.last_train_loss`` after every batch (the loss of that batch,
    not divided by gradient accumulation), and averaged since the previous validation.

    Args:
        settings: patience and gap thresholds.
        path: where the JSON goes (``<run_dir>/analysis/overfitting.json``); None keeps it in memory only.
    """

    def __init__(self, settings: MonitorSettings = MonitorSettings(), path: str | Path | None = None) -> None:  # noqa: B008
        self.settings = settings
        self.path = Path(path) if path is not None else None
        self.history: list[dict[str, Any]] = []
        self.warnings: list[dict[str, Any]] = []
        self._losses: list[float] = []

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = getattr(pl_module, "last_train_loss", None)
        if loss is not None:
            self._losses.append(float(loss))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or "val/loss" not in trainer.callback_metrics:
            return
        val = float(trainer.callback_metrics["val/loss"])
        train = sum(self._losses) / len(self._losses) if self._losses else None
        self._losses = []
        entry = {
            "step": trainer.global_step,
            "train_loss": train,
            "val_loss": val,
            "val_ppl": math.exp(val),
            "gap": None if train is None else val - train,
        }
        self.history.append(entry)
        for warning in self._check():
            if warning["kind"] not in {w["kind"] for w in self.warnings}:
                self.warnings.append(warning)
                rank_zero_warn(warning["message"])
        if entry["gap"] is not None and trainer.logger is not None:
            trainer.logger.log_metrics({"monitor/gap": entry["gap"]}, step=trainer.global_step)
        self.write(trainer)

    def _check(self) -> list[dict[str, Any]]:
        last, found = self.history[-1], []
        if last["gap"] is not None and last["gap"] > self.settings.max_gap:
            message = (
                f"overfitting: validation loss {last['val_loss']:.3f} is {last['gap']:.3f} nats above the "
                f"training loss at step {last['step']} (limit {self.settings.max_gap}); use fewer steps, a "
                "smaller learning rate or more training data"
            )
            found.append({"kind": "gap", "step": last["step"], "message": message})
        if self._rising_while_training_falls():
            message = (
                f"overfitting: validation loss rose for {self.settings.patience} validations in a row (to "
                f"{last['val_loss']:.3f} at step {last['step']}) while the training loss fell; stop earlier "
                "(trainer.max_steps) or set early_stopping_patience"
            )
            found.append({"kind": "trend", "step": last["step"], "message": message})
        return found

    def _rising_while_training_falls(self) -> bool:
        window = self.history[-(self.settings.patience + 1) :]
        if len(window) < self.settings.patience + 1:
            return False
        val_rising = all(b["val_loss"] > a["val_loss"] for a, b in zip(window, window[1:], strict=False))
        trains = [e["train_loss"] for e in window]
        return val_rising and None not in trains and trains[-1] < trains[0]

    def report(self) -> dict[str, Any]:
        best = min(self.history, key=lambda e: e["val_loss"]) if self.history else None
        return {
            "settings": vars(self.settings),
            "history": self.history,
            "warnings": self.warnings,
            "best": best,
            "verdict": "overfitting" if self.warnings else "no overfitting detected",
        }

    def write(self, trainer: L.Trainer) -> None:
        if self.path is not None and trainer.is_global_zero:
            write_json(self.path, self.report())
