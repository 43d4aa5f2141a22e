"""Ranking, apply and save of a structured plan at 7B scale: seconds and peak host memory of each step.

    python benchmarks/plan_apply_save.py --shape llama-2-7b --dtype bfloat16
    python benchmarks/plan_apply_save.py --shape llama-2-7b --dtype bfloat16 --device cpu

The model is built from the configuration with random weights on ``--device`` (magnitude scores: what is
timed does not depend on which groups go), ranked globally to 20% with T = 1 and adaptive tau, pruned in
place, and saved with :func:`prunelight.save.save_pruned` into a temporary folder. Host memory is the
process's peak resident set (it only grows), read after each step, next to the weights' own size.
"""

from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.calibration_cost import build, model_arguments
from benchmarks.inference_speed import magnitude_table
from prunelight.apply import apply_plan
from prunelight.ranking import RankingConfig, rank
from prunelight.save import save_pruned


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    parser = model_arguments(__doc__, nsamples=1, batch_size=1)
    parser.add_argument("--ratio", type=float, default=0.2)
    args = parser.parse_args()

    start = time.perf_counter()
    model, _ = build(args)
    weights_gib = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30
    rows = [("build (random init)", time.perf_counter() - start, peak_rss_gib())]
    start = time.perf_counter()
    table = magnitude_table(model)
    rows.append(("magnitude scores", time.perf_counter() - start, peak_rss_gib()))
    start = time.perf_counter()
    plan = rank(table, RankingConfig(ratio=args.ratio, temperature=1.0, tau=None)).plan
    rows.append(("ranking", time.perf_counter() - start, peak_rss_gib()))
    start = time.perf_counter()
    apply_plan(model, plan)
    _sync()
    rows.append((f"apply on {args.device}", time.perf_counter() - start, peak_rss_gib()))
    pruned_gib = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        save_pruned(model, None, Path(folder) / "pruned_model")
        rows.append(("save (safetensors)", time.perf_counter() - start, peak_rss_gib()))

    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    name = args.shape or args.model
    print(f"\n{name}, {args.dtype}, weights {weights_gib:.1f} GiB -> {pruned_gib:.1f} GiB, ", end="")
    print(f"{args.ratio:.0%} global, device {where}")
    print("| step | seconds | peak host RSS GiB (so far) |")
    print("| --- | ---: | ---: |")
    for step, seconds, rss in rows:
        print(f"| {step} | {seconds:.2f} | {rss:.1f} |")


if __name__ == "__main__":
    main()
