"""Where calibration's time goes beyond the bare passes: each hook switched off in turn, in one run.

    python benchmarks/calibration_breakdown.py --shape llama-2-7b --dtype bfloat16 --nsamples 128 \\
        --seqlen 2048 --batch-size 1 --criteria taylor,wanda --rounds 2 --profile 4

For each criterion, the same windows run through: the bare loop (``calibration_cost.bare_loop``), then
``prunelight.loops.calibrate`` as the prune stage runs it (the default), with the fused Triton kernels
off (``PRUNELIGHT_KERNELS=torch``: the plain torch hooks), without gradient statistics, and with the
compensation means on. Each row gives seconds (best of ``--rounds``), the ratio to the bare loop, and
how many groups its 20% global plan decides differently from the default's first run, with the largest
relative gap between the scores. The default's own row compares its second run with its first: on a GPU
the backward pass is not deterministic, and that row is the floor to read the others against.
``--profile N`` adds a torch.profiler table of N windows of the default: the top CUDA kernels and the
fraction of the wall time the GPU was busy.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from calibration_cost import bare_loop, build, model_arguments, prunelight_calibration, windows_for  # noqa: E402

from prunelight.callbacks.importance import ImportanceCallback  # noqa: E402
from prunelight.data.windows import WindowSet  # noqa: E402
from prunelight.importance.kernels import kernels_available  # noqa: E402
from prunelight.ranking import RankingConfig, rank  # noqa: E402

VARIANTS: dict[str, tuple[dict[str, Any], str]] = {
    "default": ({}, ""),
    "kernels off": ({}, "torch"),
    "no gradient statistics": ({"gradient_statistics": False}, ""),
    "with compensation means": ({"input_means": True}, ""),
}


@contextmanager
def kernels(setting: str):
    before = os.environ.get("PRUNELIGHT_KERNELS")
    os.environ["PRUNELIGHT_KERNELS"] = setting
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PRUNELIGHT_KERNELS")
        else:
            os.environ["PRUNELIGHT_KERNELS"] = before


def relative_gap(a, b) -> float:
    gap = 0.0
    for x, y in zip(a.table.attention + a.table.mlp, b.table.attention + b.table.mlp, strict=True):
        gap = max(gap, float((x - y).abs().max() / y.abs().max().clamp_min(1e-300)))
    return gap


def plan_difference(a, b) -> str:
    """How many attention groups and MLP channels one plan removes and the other keeps, over all removed."""
    removed = lambda plan: {  # noqa: E731
        (layer.layer, kind, i)
        for layer in plan.layers
        for kind, items in (("attention", layer.attention_groups), ("mlp", layer.mlp_channels))
        for i in items
    }
    x, y = removed(a), removed(b)
    return f"{len(x ^ y) // 2} of {len(y)}"


def first(windows: WindowSet, n: int) -> WindowSet:
    return dataclasses.replace(windows, input_ids=windows.input_ids[:n], source=windows.source[:n])


def profile(model, tokenizer, windows: WindowSet, args, criterion: str, top: int = 12) -> None:
    """torch.profiler over a short calibration: the top kernels and how busy the GPU was."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    short = first(windows, args.profile)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with torch_profile(activities=activities) as prof:
        start = time.perf_counter()
        prunelight_calibration(model, tokenizer, short, args, criterion)
        wall = time.perf_counter() - start
    cuda = torch.cuda.is_available()
    kind = torch.autograd.DeviceType.CUDA if cuda else torch.autograd.DeviceType.CPU
    events = [e for e in prof.key_averages() if e.device_type == kind]  # kernels only, not their ops too
    attr = "self_device_time_total" if cuda else "self_cpu_time_total"
    device_time = sum(getattr(e, attr) for e in events) / 1e6
    what = "GPU kernels" if cuda else "CPU ops"
    print(f"\nprofile: {criterion}, {len(short)} windows, wall {wall:.2f} s, {what} {device_time:.2f} s "
          f"(busy {device_time / wall:.0%})")  # fmt: skip
    print(f"| op | calls | self {'GPU' if cuda else 'CPU'} ms | share |")
    print("| --- | ---: | ---: | ---: |")
    ranked = sorted(events, key=lambda e: getattr(e, attr), reverse=True)[:top]
    for e in ranked:
        ms = getattr(e, attr) / 1e3
        print(f"| {e.key[:70]} | {e.count} | {ms:.1f} | {ms / 1e3 / device_time:.1%} |")


def main() -> None:
    parser = model_arguments(__doc__, nsamples=32, batch_size=8)
    parser.add_argument("--criteria", default="taylor,wanda")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--profile", type=int, default=0, help="windows to profile (0: none)")
    args = parser.parse_args()

    model, tokenizer = build(args)
    windows = windows_for(args, model, tokenizer)
    device = torch.device(args.device)
    fused = kernels_available(next(model.parameters()))
    bare_loop(model, windows, args.batch_size, True)  # warm-up
    prunelight_calibration(model, tokenizer, first(windows, 2), args, "taylor")  # warm-up: Triton compiles
    config = RankingConfig(ratio=0.2, temperature=1.0, tau=None)
    rows = []
    for criterion in args.criteria.split(","):
        backward = criterion in ("taylor", "taylor2")
        best = {"bare loop": float("inf")} | {name: float("inf") for name in VARIANTS}
        results: dict[str, list[Any]] = {name: [] for name in VARIANTS}
        for _ in range(args.rounds):
            best["bare loop"] = min(best["bare loop"], bare_loop(model, windows, args.batch_size, backward))
            for name, (options, setting) in VARIANTS.items():
                if not backward and "gradient" in name:
                    continue
                with kernels(setting):
                    callback = ImportanceCallback(criterion, **options)
                    seconds, result = prunelight_calibration(
                        model, tokenizer, windows, args, criterion, callback
                    )
                results[name].append(result)
                best[name] = min(best[name], seconds)
        reference = results["default"][0]
        plan = rank(reference.table, config).plan
        for name, seconds in best.items():
            if seconds == float("inf"):
                continue
            changed = gap = ""
            # against the first default run; the default's own row compares its second run with its first
            # (GPU nondeterminism: the floor every other row should be read against)
            runs = results.get(name, [])
            other = runs[1] if name == "default" and len(runs) > 1 else None
            if name != "default" and runs:
                other = runs[-1]
            if other is not None:
                changed = f"{plan_difference(rank(other.table, config).plan, plan)}"
                gap = f"{relative_gap(other, reference):.1e}"
            rows.append((criterion, name, seconds, seconds / best["bare loop"], changed, gap))

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    kernels_state = "on" if fused else "unavailable"
    print(f"\n{args.shape or args.model}, {args.dtype}, {where}, {len(windows)} x {windows.seqlen} tokens, "
          f"batch {args.batch_size}, best of {args.rounds}, fused kernels {kernels_state}")  # fmt: skip
    print("| criterion | variant | seconds | x bare loop | groups decided otherwise (20% plan) | score gap |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for criterion, name, seconds, ratio, changed, gap in rows:
        print(f"| {criterion} | {name} | {seconds:.2f} | {ratio:.3f} | {changed} | {gap} |")
    if args.profile:
        for criterion in args.criteria.split(","):
            profile(model, tokenizer, windows, args, criterion)


if __name__ == "__main__":
    main()
