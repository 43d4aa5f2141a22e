"""Training speed and memory of the recovery objectives against LM-loss LoRA, measured in the same run.

    python benchmarks/recovery_objectives.py --teacher smollm2-135m --student results/.../pruned_model \\
        --device cuda --dtype bfloat16 --batch 8 --seqlen 1024 --steps 20
    python benchmarks/recovery_objectives.py --teacher smollm2-135m --variants lm-lora,kd-lora,kd-full

Each variant is a :class:`~prunelight.finetune.FinetuneModule` trained by Lightning (``recovery.objective``
and ``recovery.train`` as ``prunelight finetune`` sets them) for ``--warmup`` + ``--steps`` optimiser steps
on random token windows (speed does not depend on the text); the timed steps are the last ``--steps``.
Prints training tokens/s, seconds per step and the peak GPU memory of each variant, with the ratios
against ``lm-lora``. Without ``--student`` the teacher itself is the student (the cost is the same shape).
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from prunelight.finetune import FinetuneModule, LoraSettings, TrainingSettings
from prunelight.finetune.distillation import DistillationSettings
from prunelight.measure import peak_memory, reset_peak_memory
from prunelight.models.loader import load_weights
from prunelight.models.spec import ModelSpec
from prunelight.trainer import PrunelightTrainer

VARIANTS = ("lm-lora", "kd-lora", "lm+kd-lora", "lm-full", "kd-full")


class StepClock(L.Callback):
    """Wall time of the optimiser steps after the first ``warmup`` (the device synchronised at each end)."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.seconds = warmup, 0.0, 0.0
        self.peak: float | None = None

    def _sync(self, module: L.LightningModule) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        if trainer.global_step == self.warmup:
            self._sync(module)
            reset_peak_memory(module.device)
            self.start = time.perf_counter()

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._sync(module)
        self.seconds = time.perf_counter() - self.start
        # GPU only: on a CPU peak_memory gives the whole process's RSS, not this variant's
        self.peak = peak_memory(module.device).get("peak_gpu_memory_mb")


def run(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    objective, train = variant.rsplit("-", 1)
    L.seed_everything(0)
    module = FinetuneModule(
        args.student or args.teacher,
        dtype=args.dtype,
        lora=LoraSettings(rank=args.rank, dropout=0.0),
        training=TrainingSettings(learning_rate=1e-4, scheduler="constant"),
    )
    module.load_base()
    teacher = None if objective == "lm" else load_weights(ModelSpec(args.teacher, dtype=args.dtype))
    module.use_recovery(objective, train, DistillationSettings(top_k=args.top_k), teacher)
    steps = args.warmup + args.steps
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, module.config.vocab_size, (steps * args.batch, args.seqlen), generator=generator)
    loader = DataLoader([{"input_ids": x, "labels": x.clone()} for x in ids], batch_size=args.batch)
    clock = StepClock(args.warmup)
    trainer = PrunelightTrainer(
        accelerator="gpu" if args.device == "cuda" else "cpu", devices=1, max_steps=steps,
        precision="bf16-true" if args.dtype == "bfloat16" else "32-true", callbacks=[clock], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=str(args.root),
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=loader)
    trainable = sum(p.numel() for p in module.model.parameters() if p.requires_grad)
    peak = None if clock.peak is None else clock.peak / 1024
    del module, teacher, trainer
    gc.collect()
    if args.device == "cuda":
        torch.cuda.empty_cache()
    tokens = args.steps * args.batch * args.seqlen
    return {
        "variant": variant, "trainable": trainable, "seconds": clock.seconds,
        "tokens_per_second": tokens / clock.seconds, "seconds_per_step": clock.seconds / args.steps,
        "peak_gib": peak,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--teacher", default="smollm2-135m", help="the dense model (zoo name or folder)")
    parser.add_argument("--student", default=None, help="the pruned model folder (default: the teacher)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="OBJECTIVE-TRAIN, comma-separated")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank")
    parser.add_argument("--top-k", type=int, default=None, help="distillation top_k (default: whole vocab)")
    parser.add_argument("--root", type=Path, default=Path("/tmp/recovery_objectives"))
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args()
    variants = args.variants.split(",")
    unknown = [v for v in variants if v.rsplit("-", 1)[0] not in ("lm", "kd", "lm+kd")
               or v.rsplit("-", 1)[-1] not in ("lora", "full")]  # fmt: skip
    if unknown:
        parser.error(f"unknown variants {unknown}: use OBJECTIVE-TRAIN with lm|kd|lm+kd and lora|full")
    rows = [run(variant, args) for variant in variants]
    base = next((r for r in rows if r["variant"] == "lm-lora"), rows[0])
    name = base["variant"]
    print(f"\n{args.student or args.teacher} taught by {args.teacher}: {args.batch} x {args.seqlen} tokens a "
          f"step, {args.steps} timed steps after {args.warmup}, {args.dtype} on {args.device}, "
          f"top_k {args.top_k}")  # fmt: skip
    print(f"| variant | trainable | tokens/s | s/step | x {name} time | peak GiB | x {name} memory |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        memory = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.2f}"
        ratio = "-" if r["peak_gib"] is None else f"{r['peak_gib'] / base['peak_gib']:.2f}"
        time_ratio = r["seconds"] / base["seconds"]
        print(f"| {r['variant']} | {r['trainable']:,} | {r['tokens_per_second']:,.0f} | "
              f"{r['seconds_per_step']:.3f} | {time_ratio:.2f} | {memory} | {ratio} |")  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps({"settings": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1)
        )


if __name__ == "__main__":
    main()
