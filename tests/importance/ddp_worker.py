"""One rank of a 2-process gloo calibration (launched by test_ddp.py with torchrun-style variables).

Usage: python ddp_worker.py <model folder> <criterion> <output file> [ddp|fsdp[:PREFETCH:RESIDENT]]
"""

from __future__ import annotations

import sys

import torch

from prunelight import loops
from prunelight.calibration import CalibrationDataModule, CalibrationModule
from prunelight.callbacks.importance import ImportanceCallback
from prunelight.models.sharding import FullyShardedStrategy, is_sharded, unsharded_copy
from prunelight.trainer import PrunelightTrainer


def calibrate(folder: str, criterion: str, devices: int, strategy: str | FullyShardedStrategy) -> dict:
    module = CalibrationModule(path=folder, dtype="float32")
    data = CalibrationDataModule(
        [{"name": "wikitext2", "split": "validation"}], nsamples=6, seqlen=32, batch_size=1
    )
    trainer = PrunelightTrainer(
        accelerator="cpu",
        devices=devices,
        strategy=strategy,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    result = loops.calibrate(trainer, module, data, ImportanceCallback(criterion, input_means=True))
    sharded = is_sharded(module.model)
    whole = unsharded_copy(module.model) if sharded else module.model  # a collective: every rank
    with torch.no_grad():
        logits = whole(input_ids=torch.arange(24)[None] % whole.config.vocab_size).logits
    return {
        "attention": result.table.attention,
        "mlp": result.table.mlp,
        "block": result.table.block_importance,
        "table": result.table,
        "means": result.input_means,
        "tokens": result.tokens,
        "gradients": result.gradients,
        "rank": trainer.global_rank,
        "world": trainer.world_size,
        "sharded": sharded,
        "logits": logits,
        "whole_is_sharded": is_sharded(whole),
    }


if __name__ == "__main__":
    folder, criterion, out = sys.argv[1:4]
    how = sys.argv[4] if len(sys.argv) > 4 else "ddp"
    if how.startswith("fsdp"):  # fsdp:P:R sets the strategy's prefetch and resident_layers
        knobs = dict(zip(("prefetch", "resident_layers"), map(int, how.split(":")[1:]), strict=False))
        strategy: str | FullyShardedStrategy = FullyShardedStrategy(**knobs)
    else:
        strategy = "ddp"
    scores = calibrate(folder, criterion, 2, strategy)
    if scores["rank"] == 0:
        torch.save(scores, out)
