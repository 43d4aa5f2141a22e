"""One rank of a several-process gloo LoRA fit (launched by test_ddp_validation.py with torchrun-style
variables); every rank writes the validation it measured to ``<output>.<rank>``.

Usage: python val_worker.py <model folder> <lm|qa> <world size> <run folder> <output>

The first optimiser step has learning rate 0 (linear warm-up from 0), so the adapters do not move and the
validation after it measures the same model on any number of ranks: what differs is only how the
validation set is split between them.
"""

from __future__ import annotations

import sys
from typing import Any

import lightning as L
import torch

from prunelight.callbacks.overfitting import OverfittingMonitor
from prunelight.finetune import FinetuneModule, LoraSettings, TrainingSettings
from prunelight.finetune.data import InstructionDataModule, LanguageModelingDataModule
from prunelight.trainer import PrunelightTrainer


class Validations(L.Callback):
    """Per validation (not the sanity check): this rank's batches, padding included, and the synced metric,
    read before the module resets it (callbacks' epoch-end hooks run before the module's)."""

    def __init__(self) -> None:
        self.batches = 0
        self.summaries: list[dict[str, Any]] = []

    def on_validation_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        if not trainer.sanity_checking:
            self.batches += 1

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.summaries.append(pl_module.val_perplexity.summary())


def data(task: str, folder: str) -> L.LightningDataModule:
    """Uneven validation sets: 5 LM blocks or 5 questions in batches of 2 (batches of 2, 2 and 1)."""
    if task == "lm":
        return LanguageModelingDataModule(
            "ptb", "validation", "test", block_size=32, max_train_samples=4, max_val_samples=5, batch_size=2,
            shuffle=False, tokenizer=folder,
        )  # fmt: skip
    return InstructionDataModule(
        "squad", "validation", "validation", max_length=96, max_train_samples=4, max_val_samples=5,
        batch_size=2, shuffle=False, tokenizer=folder,
    )  # fmt: skip


def fit(folder: str, task: str, devices: int, root: str) -> dict[str, Any]:
    module = FinetuneModule(
        folder,
        dtype="float32",
        lora=LoraSettings(rank=4, dropout=0.0),
        training=TrainingSettings(warmup_steps=10),
    )
    monitor, validations = OverfittingMonitor(), Validations()
    trainer = PrunelightTrainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        max_steps=1,
        val_check_interval=1,
        callbacks=[monitor, validations],
        default_root_dir=root,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=data(task, folder))
    return {
        "val_loss": float(trainer.callback_metrics["val/loss"]),
        "history": monitor.history,
        "summaries": validations.summaries,
        "batches": validations.batches,
        "rank": trainer.global_rank,
        "world": trainer.world_size,
    }


if __name__ == "__main__":
    folder, task, world, root, out = sys.argv[1:6]
    measured = fit(folder, task, int(world), root)
    torch.save(measured, f"{out}.{measured['rank']}")
