"""One rank of a several-process gloo distillation fit (launched by test_distillation.py with torchrun-style
variables), or the one-process reference; every rank writes its trained adapters to ``<output>.<rank>``.

Usage: python kd_worker.py <model folder> <world size> <run folder> <output>

The global batch is 4 sequences: one process takes them as one batch, two ranks as two batches of 2 (rank
0 the even items, rank 1 the odd ones, in order), so both see the same sequences per optimiser step.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, DistributedSampler

from prunelight.finetune import FinetuneModule, LoraSettings, TrainingSettings
from prunelight.finetune.distillation import DistillationSettings
from prunelight.models.loader import load_weights
from prunelight.models.spec import ModelSpec
from prunelight.trainer import PrunelightTrainer

STEPS = int(os.environ.get("KD_STEPS", "3"))
GLOBAL_BATCH = 4


def fit(folder: str, world: int, root: str) -> dict[str, Any]:
    # float64 throughout (the adapters too, through the default dtype): the ranks' mean gradient and one
    # process's differ only by rounding, which float32 leaves near 1e-6 after 3 Adam steps (measured);
    # in float64 the test can ask for 1e-10
    torch.set_default_dtype(torch.float64)
    L.seed_everything(0)
    module = FinetuneModule(
        folder, dtype="float32", lora=LoraSettings(rank=4, dropout=0.0),
        training=TrainingSettings(learning_rate=3e-3, scheduler="constant"),
    )  # fmt: skip
    module.load_base().double()
    teacher = load_weights(ModelSpec(folder, dtype="float32")).double()
    with torch.no_grad():
        teacher.model.norm.weight.mul_(4.0)  # a teacher the student differs from
    module.use_recovery("lm+kd", "lora", DistillationSettings(temperature=2.0, top_k=64), teacher)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, module.config.vocab_size, (STEPS * GLOBAL_BATCH, 16), generator=generator)
    items = [{"input_ids": row, "labels": row.clone()} for row in ids]
    trainer = PrunelightTrainer(
        accelerator="cpu", devices=world, strategy="ddp" if world > 1 else "auto", max_steps=STEPS,
        default_root_dir=root, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, use_distributed_sampler=False,
    )  # fmt: skip
    # rank r takes items r, r + world, ... in order (Lightning's own sampler would shuffle them)
    rank = int(os.environ.get("RANK", "0"))
    sampler = DistributedSampler(items, num_replicas=world, rank=rank, shuffle=False) if world > 1 else None
    trainer.fit(
        module, train_dataloaders=DataLoader(items, batch_size=GLOBAL_BATCH // world, sampler=sampler)
    )
    adapters = {n: p.detach().clone() for n, p in module.model.named_parameters() if p.requires_grad}
    torch.set_default_dtype(torch.float32)
    return {"adapters": adapters, "rank": trainer.global_rank, "world": trainer.world_size,
            "step": trainer.global_step}  # fmt: skip


if __name__ == "__main__":
    folder, world, root, out = sys.argv[1:5]
    measured = fit(folder, int(world), root)
    torch.save(measured, f"{out}.{measured['rank']}")
