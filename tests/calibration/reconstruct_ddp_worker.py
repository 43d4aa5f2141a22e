"""One rank of a 2-process gloo DDP prune with lsq reconstruction, scored by ``wanda`` (one pass) or ``obs``
(the sequential OBS pass), launched by test_reconstruct_ddp.py.

Usage: python reconstruct_ddp_worker.py <model folder> <run folder> <output file> <criterion>
"""

from __future__ import annotations

import sys

import torch

from prunelight.calibration import CalibrationDataModule, CalibrationModule
from prunelight.ranking import RankingConfig
from prunelight.stages.settings import ImportanceSettings, ReconstructionSettings
from prunelight.trainer import PrunelightTrainer


def prune(folder: str, run: str, devices: int, strategy: str, criterion: str = "wanda") -> dict:
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
    report = trainer.prune(
        module,
        data,
        importance=ImportanceSettings(criterion),
        ranking=RankingConfig(ratio=0.3),
        compensation=True,
        evaluation=None,
        save_model=False,
        reconstruction=ReconstructionSettings("lsq"),
    )
    weights = {k: v.detach().clone() for k, v in module.model.state_dict().items() if "proj" in k}
    return {
        "weights": weights,
        "errors": report["reconstruction"]["mean_error"],
        "rank": trainer.global_rank,
        "world": trainer.world_size,
    }


if __name__ == "__main__":
    folder, run, out, criterion = sys.argv[1:5]
    result = prune(folder, run, 2, "ddp", criterion)
    if result["rank"] == 0:
        torch.save(result, out)
