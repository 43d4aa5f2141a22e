"""torch.profiler over sharded calibration (benchmarks/sharded_prune.py's model and windows), per rank.

    torchrun --nproc_per_node 2 benchmarks/sharded_profile.py --shape llama-2-70b --layers 10 --out prof
    python benchmarks/sharded_profile.py --shape llama-2-70b --layers 10 --strategy auto --out prof  # no FSDP

Profiles windows 3-4 of each rank (schedule wait=1, warmup=1, active=2; one step per test batch) and
writes, per rank, ``profile_rank{R}.txt``: the key_averages tables (by device time and by CPU time) and an
interval analysis of the GPU kernels from the chrome trace (kept as ``trace_{criterion}_rank{R}.json``):
NCCL time, compute time, their overlap, GPU idle time, per profiled window. What it found is in
docs/performance.md (two GPUs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import torch.distributed as dist
from torch.profiler import ProfilerActivity, profile, schedule

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sharded_prune as sp  # noqa: E402

from prunelight.calibration import CalibrationDataModule  # noqa: E402
from prunelight.callbacks.importance import ImportanceCallback  # noqa: E402
from prunelight.loops import calibrate  # noqa: E402
from prunelight.trainer import PrunelightTrainer  # noqa: E402


class Stepper(L.Callback):
    def __init__(self, prof: profile, device: torch.device) -> None:
        self.prof, self.device = prof, device

    def on_test_batch_end(self, *args, **kwargs) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.prof.step()


def union(iv: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[list[float]] = []
    for a, b in sorted(iv):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def length(iv: list[tuple[float, float]]) -> float:
    return sum(b - a for a, b in iv)


def intersect(x: list[tuple[float, float]], y: list[tuple[float, float]]) -> list[tuple[float, float]]:
    i = j = 0
    out = []
    while i < len(x) and j < len(y):
        a, b = max(x[i][0], y[j][0]), min(x[i][1], y[j][1])
        if a < b:
            out.append((a, b))
        if x[i][1] < y[j][1]:
            i += 1
        else:
            j += 1
    return out


def analyse(trace: Path) -> str:
    events = json.loads(trace.read_text())["traceEvents"]
    steps = [e for e in events if e.get("ph") == "X" and str(e.get("name", "")).startswith("ProfilerStep#")]
    gpu = [e for e in events if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    if not gpu:
        return "no GPU events in the trace\n"
    lines = []
    for step in sorted(steps, key=lambda e: e["ts"]):
        lo, hi = step["ts"], step["ts"] + step["dur"]
        inside = [e for e in gpu if lo <= e["ts"] < hi]
        nccl = union([(e["ts"], e["ts"] + e["dur"]) for e in inside if "nccl" in e["name"].lower()])
        comp = union([(e["ts"], e["ts"] + e["dur"]) for e in inside if "nccl" not in e["name"].lower()])
        busy = union(nccl + comp)
        both = intersect(nccl, comp)
        kinds: dict[str, list[float]] = {}
        for e in inside:
            if "nccl" in e["name"].lower():
                k = e["name"].split("(")[0][:60]
                kinds.setdefault(k, [0, 0.0])
                kinds[k][0] += 1
                kinds[k][1] += e["dur"]
        streams = sorted({e.get("args", {}).get("stream") for e in inside})
        ms = {
            "wall(CPU step)": step["dur"], "GPU busy": length(busy), "compute": length(comp),
            "NCCL": length(nccl), "NCCL overlapped with compute": length(both),
            "NCCL exposed": length(nccl) - length(both), "GPU idle": step["dur"] - length(busy),
        }  # fmt: skip
        cells = " | ".join(f"{k} {v / 1e3:.1f} ms" for k, v in ms.items())
        lines.append(f"{step['name']}: {cells} | kernels {len(inside)} | streams {streams}")
        for k, (n, d) in sorted(kinds.items(), key=lambda kv: -kv[1][1]):
            lines.append(f"    {k}: {n} launches, {d / 1e3:.1f} ms")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="llama-2-70b")
    parser.add_argument("--layers", type=int, default=10)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--strategy", default="fsdp2")
    parser.add_argument("--criteria", default="taylor,wanda")
    parser.add_argument("--nsamples", type=int, default=8)
    parser.add_argument("--seqlen", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--ratio", type=float, default=0.2)
    parser.add_argument("--prefetch", type=int, default=1)
    parser.add_argument("--resident-layers", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    args.out.mkdir(parents=True, exist_ok=True)
    report = []
    for criterion in args.criteria.split(","):
        module = sp.build(args)
        data = CalibrationDataModule(nsamples=args.nsamples, seqlen=args.seqlen, batch_size=args.batch_size)
        data.windows = sp.windows(args, module.config.vocab_size)
        trainer = PrunelightTrainer(
            accelerator="gpu" if args.device == "cuda" else "cpu",
            devices=world,
            strategy=sp.strategy(args),
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tempfile.gettempdir(),
        )
        device = trainer.strategy.root_device
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        prof = profile(activities=activities, schedule=schedule(wait=1, warmup=1, active=2, repeat=1))
        trainer.callbacks.append(Stepper(prof, device))
        start = time.perf_counter()
        with prof:
            calibrated = calibrate(
                trainer, module, data, ImportanceCallback(criterion, gradient_statistics=False)
            )
        seconds = time.perf_counter() - start
        trace = args.out / f"trace_{criterion}_rank{rank}.json"
        prof.export_chrome_trace(str(trace))
        ka = prof.key_averages()
        try:
            by_device = ka.table(sort_by="self_device_time_total", row_limit=30, max_name_column_width=70)
        except Exception:
            by_device = ka.table(sort_by="self_cuda_time_total", row_limit=30, max_name_column_width=70)
        by_cpu = ka.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=70)
        report.append(
            f"===== {args.shape} ({args.layers} layers) {criterion}, {args.strategy} "
            f"(prefetch {args.prefetch}, resident {args.resident_layers}), rank {rank} of {world}, "
            f"{args.nsamples} x {args.seqlen} windows, tokens scored on this rank {calibrated.tokens}, "
            f"calibration {seconds:.2f} s (profiled)\n\n"
            "--- per profiled step (windows 3 and 4 of this rank)\n"
            + analyse(trace)
            + "\n--- key_averages by self device time\n"
            + by_device
            + "\n--- key_averages by self CPU time\n"
            + by_cpu
            + "\n"
        )
        module.model = None
        del module, trainer, prof
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if dist.is_initialized():
            dist.barrier()
    (args.out / f"profile_rank{rank}.txt").write_text("\n".join(report))


if __name__ == "__main__":
    main()
