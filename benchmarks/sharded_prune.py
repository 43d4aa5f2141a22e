"""Calibrate, rank, apply and save a random-weight model under FSDP2 (or DDP, or one device): the time of
each stage, the peak memory of every GPU, and a fingerprint of the plan to compare across GPU counts.

    torchrun --nproc_per_node 4 benchmarks/sharded_prune.py --shape llama-2-70b --strategy fsdp2 \\
        --nsamples 64 --seqlen 2048 --plan-out plans/70b-4.json
    torchrun --nproc_per_node 8 benchmarks/sharded_prune.py --shape llama-2-70b --strategy fsdp2 \\
        --nsamples 64 --seqlen 2048 --plan-out plans/70b-8.json
    python benchmarks/sharded_prune.py --shape llama-3-8b --strategy auto --criteria taylor   # one GPU
    torchrun --nproc_per_node 2 benchmarks/sharded_prune.py --shape llama-2-70b --layers 10 \
        --prefetch 0 --resident-layers 0 --calibration-only                # FSDP2's own scheduling

The weights never exist whole on one device: the model is built on the meta device, sharded, and every
parameter is then drawn from a generator seeded by its name, whole on the rank's device one tensor at a
time, keeping only the rank's shard. So every GPU count sees the same weights and the same windows
(random ids, seeded), and two runs' ``--plan-out`` files must be equal. ``--layers`` cuts the depth.
On CPU (``--device cpu``, gloo) the same script runs a tiny shape, as a check of the script itself.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import AutoConfig, AutoModelForCausalLM

from prunelight.apply import apply_plan
from prunelight.calibration import CalibrationDataModule, CalibrationModule
from prunelight.callbacks.importance import ImportanceCallback
from prunelight.data.windows import WindowSet
from prunelight.loops import calibrate
from prunelight.measure import peak_memory, reset_peak_memory
from prunelight.models.sharding import FullyShardedStrategy, is_sharded, unsharded_copy
from prunelight.ranking import RankingConfig, rank
from prunelight.save import save_pruned
from prunelight.trainer import PrunelightTrainer

sys.path.insert(0, str(Path(__file__).resolve().parent))

import calibration_cost  # noqa: E402  (the shapes the other benchmarks use)

SHAPES = {
    **calibration_cost.SHAPES,
    "tiny": dict(
        model_type="llama", hidden_size=64, intermediate_size=96, num_attention_heads=4,
        num_key_value_heads=2, num_hidden_layers=4, vocab_size=512, max_position_embeddings=256,
    ),
}  # fmt: skip


def _seed(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:6], "little")


def _draw(name: str, shape: torch.Size, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The whole parameter ``name``: norms are ones, the rest N(0, 0.02), from a generator seeded by name."""
    if len(shape) == 1:
        return torch.ones(shape, dtype=dtype, device=device)
    g = torch.Generator(device=device).manual_seed(_seed(name))
    return torch.randn(shape, generator=g, device=device, dtype=torch.float32).mul_(0.02).to(dtype)


class RandomWeights(CalibrationModule):
    """A calibration module whose model is built on meta and drawn after sharding (see the module doc)."""

    def configure_model(self) -> None:
        if self.model is not None and not any(p.is_meta for p in self.model.parameters()):
            return super().configure_model()
        super().configure_model()  # shards on meta under FSDP2; nothing happens otherwise
        device = self.trainer.strategy.root_device
        model = self.model.to_empty(device=device)
        with torch.no_grad():
            for name, p in model.named_parameters():
                whole = _draw(name, p.shape, p.dtype, device)
                if hasattr(p, "device_mesh"):  # a DTensor shard: keep this rank's part only
                    from torch.distributed.tensor import distribute_tensor

                    whole = distribute_tensor(whole, p.device_mesh, p.placements, src_data_rank=None)
                p.copy_(whole)
                del whole
            rotary = model.model.rotary_emb  # its buffers are computed at construction: redo them
            with torch.device("cpu"):
                fresh = type(rotary)(config=model.config)
            for key, buffer in fresh.named_buffers():
                rotary.register_buffer(key, buffer.to(device), persistent=False)


def build(args: argparse.Namespace) -> RandomWeights:
    shape = dict(SHAPES[args.shape])
    if args.layers:
        shape["num_hidden_layers"] = args.layers
    config = AutoConfig.for_model(shape.pop("model_type"), **shape)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, args.dtype))
    return RandomWeights.from_model(model, _NoTokenizer(), args.shape)


class _NoTokenizer:
    """The windows are random ids; nothing here tokenizes."""


def windows(args: argparse.Namespace, vocab: int) -> WindowSet:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (args.nsamples, args.seqlen), generator=g)
    return WindowSet(ids, torch.zeros(args.nsamples, dtype=torch.long), ["random"], [1.0], args.seqlen)


def fingerprint(plan: object) -> str:
    return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()[:16]


def differing_groups(a: dict, b: dict) -> int:
    """Attention groups and MLP channels removed by one plan and kept by the other."""
    count = 0
    for x, y in zip(a["plan"]["layers"], b["plan"]["layers"], strict=True):
        for key in ("attention_groups", "mlp_channels"):
            count += len(set(x[key]) ^ set(y[key]))
    return count


def compare(files: list[Path]) -> None:
    """Print, per criterion, how many groups each plan file's plan differs from the first one's in."""
    plans = [json.loads(f.read_text()) for f in files]
    print("| criterion | " + " | ".join(f.stem for f in files[1:]) + f" | (against {files[0].stem})")
    print("| --- " * len(files) + "|")
    for criterion, first in plans[0].items():
        cells = [str(differing_groups(first, p[criterion])) if criterion in p else "-" for p in plans[1:]]
        print(f"| {criterion} | " + " | ".join(cells) + " |")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def strategy(args: argparse.Namespace) -> str | FullyShardedStrategy:
    """The trainer's strategy: FSDP2 with the run's prefetch and resident layers, or the name given."""
    if args.strategy != "fsdp2":
        return args.strategy
    return FullyShardedStrategy(prefetch=args.prefetch, resident_layers=args.resident_layers)


def run(args: argparse.Namespace, criterion: str, world: int) -> dict:
    module = build(args)
    data = CalibrationDataModule(nsamples=args.nsamples, seqlen=args.seqlen, batch_size=args.batch_size)
    data.windows = windows(args, module.config.vocab_size)
    trainer = PrunelightTrainer(
        accelerator="gpu" if args.device == "cuda" else "cpu",
        devices=world,
        strategy=strategy(args),
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tempfile.gettempdir(),
    )
    seconds: dict[str, float] = {}
    device = trainer.strategy.root_device
    reset_peak_memory(device)
    start = time.perf_counter()
    importance = ImportanceCallback(criterion, gradient_statistics=False)
    calibrated = calibrate(trainer, module, data, importance)
    _sync(device)
    seconds["calibration"] = time.perf_counter() - start  # with the model's sharding and weight drawing
    seconds["calibration loop"] = importance.seconds
    memory = peak_memory(device)
    start = time.perf_counter()
    result = rank(calibrated.table, RankingConfig(ratio=args.ratio))
    seconds["ranking"] = time.perf_counter() - start
    plan = result.to_dict()
    if args.calibration_only:
        return _finish(module, trainer, None, device, memory, plan, seconds, calibrated.tokens)
    start = time.perf_counter()
    model = module.model
    model = unsharded_copy(model, keep=trainer.is_global_zero) if is_sharded(model) else model.cpu()
    module.model = None  # the sharded model's GPU memory goes before the next criterion's run
    seconds["unshard / to CPU"] = time.perf_counter() - start
    if trainer.is_global_zero:
        start = time.perf_counter()
        apply_plan(model, result.plan)
        seconds["apply"] = time.perf_counter() - start
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as folder:
            save_pruned(model, None, Path(folder) / "pruned")
        seconds["save"] = time.perf_counter() - start
    return _finish(module, trainer, model, device, memory, plan, seconds, calibrated.tokens)


def _finish(*held: object) -> dict:
    """Free the run's model (the next criterion's run needs the GPU memory) and gather every rank's peak."""
    module, trainer, model, device, memory, plan, seconds, tokens = held
    module.model = None
    del module, trainer, model, held
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    peaks = [memory]
    if dist.is_initialized():
        peaks = [None] * dist.get_world_size()
        dist.all_gather_object(peaks, memory)
    return {"seconds": seconds, "peaks": peaks, "plan": plan, "tokens": tokens}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--dtype", default="bfloat16")
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", choices=["cuda", "cpu"], default=default_device)
    parser.add_argument("--strategy", default="fsdp2", help="fsdp2, ddp or auto (one device)")
    parser.add_argument("--criteria", default="taylor,wanda")
    parser.add_argument("--nsamples", type=int, default=64)
    parser.add_argument("--seqlen", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--ratio", type=float, default=0.2)
    parser.add_argument(
        "--prefetch", type=int, default=1, help="FSDP2: layers gathered ahead (0: FSDP2's own)"
    )
    parser.add_argument("--resident-layers", type=int, default=1, help="FSDP2: last layers kept gathered")
    parser.add_argument("--calibration-only", action="store_true", help="stop after ranking (no apply/save)")
    parser.add_argument("--plan-out", type=Path, default=None, help="JSON of each criterion's plan")
    parser.add_argument("--compare", type=Path, nargs="+", help="only compare these --plan-out files")
    args = parser.parse_args()
    if args.compare:
        return compare(args.compare)
    world = int(os.environ.get("WORLD_SIZE", "1"))

    rows, plans = [], {}
    for criterion in args.criteria.split(","):
        out = run(args, criterion, world)
        rows.append((criterion, out))
        plans[criterion] = out["plan"]
    if int(os.environ.get("RANK", "0")) != 0:
        return
    layers = args.layers or SHAPES[args.shape]["num_hidden_layers"]
    where = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"\n{args.shape} ({layers} layers, random {args.dtype}), ", end="")
    print(f"{args.strategy} on {world} x {where}, ", end="")
    print(f"{args.nsamples} x {args.seqlen} tokens, batch {args.batch_size}, {args.ratio:.0%} global", end="")
    if args.strategy == "fsdp2":
        print(f", prefetch {args.prefetch}, resident layers {args.resident_layers}", end="")
    print()
    stages = ["calibration", "calibration loop", "ranking", "unshard / to CPU", "apply", "save"]
    print("| criterion | " + " | ".join(f"{s} s" for s in stages) + " | peak MiB per rank | plan |")
    print("| --- " * (len(stages) + 3) + "|")
    for criterion, out in rows:
        key = next(iter(out["peaks"][0]))
        peaks = " / ".join(f"{p[key]:.0f}" for p in out["peaks"])
        times = " | ".join(f"{out['seconds'].get(s, float('nan')):.2f}" for s in stages)
        print(f"| {criterion} | {times} | {peaks} ({key}) | {fingerprint(out['plan'])} |")
    if args.plan_out:
        args.plan_out.parent.mkdir(parents=True, exist_ok=True)
        args.plan_out.write_text(json.dumps(plans, sort_keys=True))


if __name__ == "__main__":
    main()
