"""One rank of a 2-process gloo DDP sparse prune (launched by test_sparse_ddp.py).

Usage: python sparse_ddp_worker.py <model folder> <criterion> <pattern> <run folder> <output file>
"""

from __future__ import annotations

import sys

import torch

from prunelight.calibration import CalibrationDataModule, CalibrationModule
from prunelight.stages.settings import ImportanceSettings, SparsitySettings
from prunelight.trainer import PrunelightTrainer

PATTERNS = {
    "unstructured": dict(pattern="unstructured", sparsity=0.5),
    "nm": dict(pattern="nm", n=2, m=4, sparsegpt_block_size=16),
}


def prune(folder: str, criterion: str, pattern: str, run: str, devices: int, strategy: str) -> dict:
    module = CalibrationModule(path=folder, dtype="float32")
    data = CalibrationDataModule(
        [{"name": "wikitext2", "split": "validation"}],
        nsamples=6,
        seqlen=32,
        batch_size=1,
        split="validation",
    )
    trainer = PrunelightTrainer(
        accelerator="cpu",
        devices=devices,
        strategy=strategy,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=run,
    )
    trainer.prune(
        module,
        data,
        importance=ImportanceSettings(criterion),
        evaluation=None,
        save_model=False,
        sparsity=SparsitySettings(**PATTERNS[pattern]),
    )
    weights = {k: v.detach().clone() for k, v in module.model.state_dict().items() if "proj" in k}
    return {"weights": weights, "rank": trainer.global_rank, "world": trainer.world_size}


if __name__ == "__main__":
    folder, criterion, pattern, run, out = sys.argv[1:6]
    result = prune(folder, criterion, pattern, run, 2, "ddp")
    if result["rank"] == 0:
        torch.save(result, out)
