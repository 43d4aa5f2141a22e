"""One rank of a several-process gloo perplexity evaluation (launched by test_ddp_eval.py with
torchrun-style variables); every rank writes what it measured to ``<output>.<rank>``.

Usage: python eval_worker.py <model folder> <ddp|fsdp2> <world size> <windows> <run folder> <output> [<lm-eval
cache folder>: also piqa zero-shot on 6 examples]
"""

from __future__ import annotations

import sys
from typing import Any

import lightning as L
import torch

from prunelight.data.datamodule import PerplexityDataModule
from prunelight.evaluate import PerplexityModule, ZeroShotSettings
from prunelight.trainer import PrunelightTrainer


class BatchCounter(L.Callback):
    """The batches this rank ran, padding included (ranks must run as many: each FSDP2 forward is a
    collective)."""

    def __init__(self) -> None:
        self.batches = 0

    def on_test_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self.batches += 1


def piqa(cache: str) -> ZeroShotSettings:
    return ZeroShotSettings(tasks=["piqa"], limit=6, batch_size=4, cache_dir=cache, log_samples=True)


def evaluate(
    folder: str, strategy: str, devices: int, windows: int, root: str, zero_shot: str | None = None
) -> dict[str, Any]:
    module = PerplexityModule(path=folder, dtype="float32")
    data = PerplexityDataModule(corpora=["wikitext2"], seqlen=32, batch_size=1, max_windows=windows)
    counter = BatchCounter()
    trainer = PrunelightTrainer(
        accelerator="cpu",
        devices=devices,
        strategy=strategy,
        callbacks=[counter],
        default_root_dir=root,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    report = trainer.evaluate(module, data, piqa(zero_shot) if zero_shot else None)
    return {
        "corpus": report["corpora"]["wikitext2"],
        "zero_shot": report.get("zero_shot"),
        "batches": counter.batches,
        "rank": trainer.global_rank,
        "world": trainer.world_size,
    }


if __name__ == "__main__":
    folder, strategy, world, windows, root, out = sys.argv[1:7]
    measured = evaluate(folder, strategy, int(world), int(windows), root, *sys.argv[7:8])
    torch.save(measured, f"{out}.{measured['rank']}")
