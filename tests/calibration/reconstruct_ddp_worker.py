"""One rank of a 2-process gloo prune with lsq reconstruction (``ddp``, or ``fsdp2``: every rank repairs a
whole copy gathered from the shards), scored by ``wanda`` (one pass) or ``obs`` (the sequential OBS pass),
launched by test_reconstruct_ddp.py.

Usage: python reconstruct_ddp_worker.py <model folder> <run folder> <output file> <criterion> <strategy>
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
        nsamples=5,  # odd: under FSDP2 one rank runs a padding batch, which the capture must drop
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
    model = module.model  # under FSDP2 only rank 0 keeps the pruned model
    weights = {k: v.detach().clone() for k, v in model.state_dict().items() if "proj" in k} if model else None
    return {
        "weights": weights,
        "errors": report["reconstruction"]["mean_error"],
        "rank": trainer.global_rank,
        "world": trainer.world_size,
    }


if __name__ == "__main__":
    folder, run, out, criterion, strategy = sys.argv[1:6]
    result = prune(folder, run, 2, strategy, criterion)
    if result["rank"] == 0:
        torch.save(result, out)
