"""Time and peak memory of the layer-by-layer repair (issue 22) against calibration alone, in one run.

    python benchmarks/reconstruction_cost.py --shape llama-2-7b --dtype bfloat16 --nsamples 128 \\
        --seqlen 2048 --batch-size 1 --layers 2
    python benchmarks/reconstruction_cost.py --shape tiny --device cpu --nsamples 4 --seqlen 64 --batch-size 2

A model of a known configuration with random weights (``--shape``, as in ``calibration_cost.py``; speed does
not depend on the weights' values, and no download is needed) on random token ids. The rows of the first
table, on the same windows, in this order (the last one changes the model):

1. **calibration alone**, the baseline: the Taylor one-pass calibration as the prune stage runs it
   (``calibration_cost.prunelight_calibration``: ``prunelight.loops.calibrate`` with the default
   ``ImportanceCallback``), after an untimed warm-up on two windows (kernels, Triton, allocator).
2. **capture**: the first decoder layer's inputs and every layer's keyword arguments, recorded by
   ``CaptureCallback`` (:class:`~prunelight.calibration.sequential.Catchers`) in the same Lightning loop the
   prune stage uses before a sequential pass; the decoder layers are stand-ins, so it costs the embeddings
   (and the final norm and head) only. Both sequential passes below start from this one capture; the prune
   stage captures once per pass.
3. **obs scoring**: ``obs_scores_sequentially`` (criterion ``obs``) on the dense model: per layer one pass
   that sums the o_proj and down_proj inputs (float64) and the block influence, then the full greedy grouped
   OBS of every attention group and every MLP channel (``obs_group_scores``: 11008 greedy steps per layer at
   the LLaMA-2-7B shape, the slow part), then the layer's outputs for the next layer. With
   ``--obs-batch-fraction F`` (default 1/64; 0 leaves it out) a second row runs it with
   ``reconstruction.obs_batch_fraction: F`` (the MLP channels' greedy removes F of the live ones per step).
4. **lsq repair**: ``reconstruct_sequentially`` with the ``lsq`` method on the 20% global plan that
   ``prunelight.ranking.rank`` makes of the baseline's Taylor table (``RankingConfig(ratio=0.2,
   temperature=1.0, tau=None)``, as ``calibration_breakdown.py``): per layer the o_proj input sums, the
   o_proj refit and the attention cut, the down_proj input sums (with the pruned attention), the down_proj
   refit and the MLP cut, then the repaired layer's outputs. The damping is the reconstruction's default.
   A layer that keeps every group of a kind skips that refit, so with ``--layers`` the first layers may
   not stand for the others: a note says so, and ``--allocation uniform`` (20% of every layer) avoids it.

``--layers K`` runs the obs and lsq passes on the first K decoder layers only (the model keeps all of them;
the baseline and the capture always run the whole model): ``layers run`` says how many ran, ``s / layer`` is
their mean, and ``full depth s`` extrapolates it to every layer (``s / layer x layers``), which is what
``x baseline`` compares with the baseline's seconds (the capture runs once per pass whatever the depth: its
``s / layer`` is its seconds spread over the layers, for comparison only). ``--depth N`` cuts the model
itself to N decoder layers (``calibration_cost``'s ``--layers``), for a shape that does not fit the device
whole. ``--skip-obs`` leaves out the obs row and the obs timings below. The estimates under the table add
the rows up as the prune stage runs them: a Taylor calibration then a capture and the lsq repair; the obs
criterion, a capture and its scoring (and a second capture and the repair with ``reconstruction.method:
lsq``).

The second table is the linear algebra of one layer alone, on random weights and a random positive definite
``H`` (``X^T X / n`` of Gaussian ``X``, well conditioned), each timed once on the device after a warm-up on a
small problem (cuSOLVER handles): ``lsq_refit`` of down_proj ``[hidden x intermediate]`` and of o_proj
``[hidden x hidden]`` keeping 80% of their columns (whole heads for o_proj), and ``obs_group_scores`` on both
(single columns for down_proj, one group of columns per key/value head for o_proj: 32 groups of 128 at the
LLaMA-2-7B shape), with the milliseconds per greedy step; and, with ``--obs-batch-fraction``, the batched
greedy on down_proj (``obs_greedy`` to the end with ``batch_fraction=F``: the same work as
``obs_group_scores``, which also counts the steps), its milliseconds per (batched) step and its speed-up over
the one-at-a-time row.

Peak memory is CUDA's allocator peak since the row started, the model's weights included (and the captured
inputs for the sequential rows); on a CPU it is the process's peak RSS so far, which cannot be reset, so only
its first row means anything there. Seconds are one timed run each.
"""

from __future__ import annotations

import gc
import logging
import math
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from calibration_breakdown import first  # noqa: E402
from calibration_cost import build, model_arguments, prunelight_calibration, windows_for  # noqa: E402

from prunelight.apply.reconstruction import lsq_refit, obs_greedy, obs_group_scores  # noqa: E402
from prunelight.calibration.obs_scores import obs_scores_sequentially  # noqa: E402
from prunelight.calibration.reconstruct import reconstruct_sequentially, reconstruction_named  # noqa: E402
from prunelight.callbacks.layer_inputs import CaptureCallback  # noqa: E402
from prunelight.measure import peak_memory, reset_peak_memory  # noqa: E402
from prunelight.models import adapter_for  # noqa: E402
from prunelight.ranking import RankingConfig, rank  # noqa: E402
from prunelight.ranking.plan import PruningPlan  # noqa: E402
from prunelight.stages.settings import ReconstructionSettings  # noqa: E402


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gb(device: torch.device) -> str:
    peak = peak_memory(device)
    if "peak_gpu_memory_mb" in peak:
        return f"{peak['peak_gpu_memory_mb'] / 1024:.1f}"
    return f"{peak['peak_rss_mb'] / 1024:.2f} (RSS)"


def fresh(device: torch.device) -> None:
    """Drop what the last row left, and start the peak from here."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    reset_peak_memory(device)


def timed(device: torch.device, run: Callable[[], Any]) -> tuple[float, Any, str]:
    """Seconds, result and peak memory of one synchronised call."""
    fresh(device)
    synchronize(device)
    start = time.perf_counter()
    result = run()
    synchronize(device)
    return time.perf_counter() - start, result, peak_gb(device)


@contextmanager
def first_layers(model, k: int | None) -> Iterator[int]:
    """The model's decoder layers cut to the first ``k`` for the block (all with None); yields how many."""
    layers = adapter_for(model).decoder_layers(model)
    kept = list(layers)
    k = len(kept) if k is None else min(k, len(kept))
    del layers[k:]
    try:
        yield k
    finally:
        layers.extend(kept[k:])


def random_spd(d: int, device: torch.device, seed: int) -> torch.Tensor:
    """``X^T X / n`` of a Gaussian ``X [2d x d]``, float64: eigenvalues in about [0.09, 2.9]."""
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(2 * d, d, dtype=torch.float64, device=device, generator=g)
    return x.T @ x / (2 * d)


def random_weight(d_out: int, d_in: int, dtype: torch.dtype, device: torch.device, seed: int) -> torch.Tensor:
    g = torch.Generator(device=device).manual_seed(seed)
    return (0.02 * torch.randn(d_out, d_in, device=device, generator=g)).to(dtype)


def kept(groups: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """The sorted columns of a random ``fraction`` of ``groups`` (rows of column ids)."""
    g = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(groups), generator=g)[: max(1, round(fraction * len(groups)))]
    return groups[chosen].flatten().sort().values


def linear_algebra(
    shapes: dict[str, tuple[int, int, int]],
    dtype: torch.dtype,
    device: torch.device,
    damping: float,
    obs: bool,
    batch_fraction: float = 0.0,
) -> list[tuple[str, str, str, float, str, str]]:
    """One layer's refits and greedy OBS scorings on random inputs, each timed once after a small warm-up.

    ``shapes``: name -> ``(d_out, d_in, groups)``, the columns split into ``groups`` equal consecutive groups.
    ``batch_fraction`` > 0 adds the batched greedy on the single-column shapes (down_proj).
    """
    w = random_weight(8, 16, dtype, device, 0)
    h = random_spd(16, device, 0)
    lsq_refit(w, h, torch.arange(12, device=device), damping)
    obs_group_scores(w, h, torch.arange(16, device=device).reshape(4, 4), damping)
    if batch_fraction:
        obs_greedy(w, h, torch.arange(16, device=device).reshape(16, 1), 15, damping, 0.25)
    synchronize(device)
    rows = []
    for seed, (name, (d_out, d_in, groups)) in enumerate(shapes.items()):
        columns = torch.arange(d_in, device=device).reshape(groups, -1)
        weight = random_weight(d_out, d_in, dtype, device, seed)
        hessian = random_spd(d_in, device, seed)
        keep = kept(columns.cpu(), 0.8, seed).to(device)
        seconds, _, peak = timed(device, partial(lsq_refit, weight, hessian, keep, damping))
        what = f"{len(keep)} of {d_in} columns"
        rows.append((f"lsq_refit {name}", f"{d_out} x {d_in}", what, seconds, "", peak))
        if obs:
            seconds, _, peak = timed(device, partial(obs_group_scores, weight, hessian, columns, damping))
            what = f"{groups} x {d_in // groups}"
            step = f"{seconds / (groups - 1) * 1e3:.2f}" if groups > 1 else ""
            rows.append((f"obs_group_scores {name}", f"{d_out} x {d_in}", what, seconds, step, peak))
            if batch_fraction and groups == d_in and groups > 1:
                exact = seconds
                run = partial(obs_greedy, weight, hessian, columns, groups - 1, damping, batch_fraction)
                seconds, result, peak = timed(device, run)
                steps = len(result.steps)
                what = f"{groups} x 1, {steps} steps, {exact / seconds:.1f}x the speed of one at a time"
                step = f"{seconds / steps * 1e3:.2f}"
                call = f"obs_greedy {name}, batch_fraction {batch_fraction:g}"
                rows.append((call, f"{d_out} x {d_in}", what, seconds, step, peak))
                del result
        del weight, hessian
    return rows


def main() -> None:
    parser = model_arguments(__doc__, nsamples=32, batch_size=8)
    # model_arguments' --layers (which cuts the model in calibration_cost) means here: run the obs and lsq
    # passes on the first K decoder layers only; --depth cuts the model
    parser.add_argument("--depth", type=int, default=None, help="cut the model to N decoder layers")
    parser.add_argument("--skip-obs", action="store_true", help="leave out the obs scoring and its timings")
    parser.add_argument(
        "--obs-batch-fraction",
        type=float,
        default=1 / 64,
        help="also time obs with reconstruction.obs_batch_fraction F (the MLP greedy's share a step; 0: no)",
    )
    parser.add_argument(
        "--allocation",
        choices=("global", "uniform"),
        default="global",
        help="the 20%% plan's ranking.allocation (uniform: every layer loses 20%%, so each one run is refit)",
    )
    offload = "keep the captured inputs in CPU memory (reconstruction.offload_inputs)"
    parser.add_argument("--offload-inputs", action="store_true", help=offload)
    args = parser.parse_args()
    if args.layers is not None and args.layers < 1:
        parser.error("--layers must be at least 1")
    if not 0 <= args.obs_batch_fraction <= 1:
        parser.error("--obs-batch-fraction must be in [0, 1]")
    batch = 0.0 if args.skip_obs else args.obs_batch_fraction
    run_layers, args.layers = args.layers, args.depth  # build() cuts the model to args.layers
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # one trainer per row: no banners

    device = torch.device(args.device)
    torch.manual_seed(0)  # the same random weights, hence the same plan, in every run
    model, tokenizer = build(args)
    windows = windows_for(args, model, tokenizer)
    adapter = adapter_for(model)
    depth = len(adapter.decoder_layers(model))
    m = adapter.modules(adapter.decoder_layers(model)[0])
    head_dim = adapter.layout(model.config).head_dim
    shapes = {
        "down_proj": (m.down.out_features, m.down.in_features, m.down.in_features),
        "o_proj": (m.o.out_features, m.o.in_features, m.k.out_features // head_dim),
    }
    damping = ReconstructionSettings().damping
    params = sum(p.numel() for p in model.parameters())
    weights_gb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"

    print("$ python " + " ".join(shlex.quote(a) for a in sys.argv))
    print(f"device: {where}, torch {torch.__version__}")
    print(
        f"model: {args.shape or args.model} ({params / 1e6:.1f}M params, {args.dtype}, {weights_gb:.2f} GB), "
        f"{depth} decoder layers, hidden {m.o.out_features}, intermediate {m.down.in_features}, "
        f"{m.q.out_features // head_dim} heads / {m.k.out_features // head_dim} kv heads of {head_dim}"
    )
    print(
        f"windows: {len(windows)} x {windows.seqlen} = {windows.input_ids.numel():,} tokens, "
        f"batch {args.batch_size}, {'random ids' if tokenizer is None else 'WikiText-2'}"
    )
    k = depth if run_layers is None else min(run_layers, depth)
    print(
        f"obs / lsq passes: first {k} of {depth} layers, damping {damping}, captured inputs on "
        f"{'the CPU' if args.offload_inputs else 'the device'}; one timed run each"
    )

    rows: list[tuple[str, str, float, float, float, str]] = []  # what, layers run, s, s/layer, full s, peak

    prunelight_calibration(model, tokenizer, first(windows, min(2, len(windows))), args, "taylor")  # warm-up
    fresh(device)
    baseline, calibrated = prunelight_calibration(model, tokenizer, windows, args, "taylor")
    rows.append(("calibration alone (taylor, one pass)", f"{depth}", baseline, baseline / depth, baseline,
                 peak_gb(device)))  # fmt: skip
    config = RankingConfig(ratio=0.2, allocation=args.allocation, temperature=1.0, tau=None)
    plan = rank(calibrated.table, config).plan
    del calibrated

    # calibrate() runs any callback that leaves a .result: here the capture the sequential passes start from
    fresh(device)
    capture_s, captured = prunelight_calibration(
        model, tokenizer, windows, args, "taylor", CaptureCallback(args.offload_inputs)
    )
    rows.append(("capture of layer 0's inputs (Catchers)", "embeddings only", capture_s, capture_s / depth,
                 capture_s, peak_gb(device)))  # fmt: skip

    # the linear algebra's first call on the device (cuSOLVER handles) is not the sequential passes' cost
    linear_algebra({"warm-up": (8, 16, 4)}, model.dtype, device, damping, obs=not args.skip_obs)
    batched_full = math.nan

    if not args.skip_obs:
        with first_layers(model, run_layers) as k:
            scoring = partial(obs_scores_sequentially, model, adapter, captured, damping, progress=False)
            seconds, _, peak = timed(device, scoring)
        obs_full = seconds / k * depth
        rows.append(("obs scoring (obs_scores_sequentially)", f"{k} of {depth}", seconds, seconds / k,
                     obs_full, peak))  # fmt: skip
        if batch:
            with first_layers(model, run_layers) as k:
                seconds, _, peak = timed(device, partial(scoring, batch_fraction=batch))
            batched_full = seconds / k * depth
            what = f"obs scoring, obs_batch_fraction {batch:g}"
            rows.append((what, f"{k} of {depth}", seconds, seconds / k, batched_full, peak))

    with first_layers(model, run_layers) as k:
        part = PruningPlan([p for p in plan.layers if p.layer < k])
        lsq = reconstruction_named("lsq")
        repair = partial(
            reconstruct_sequentially, model, adapter, captured, part, lsq, damping, False, progress=False
        )
        seconds, report, peak = timed(device, repair)
    lsq_full = seconds / k * depth
    rows.append(("lsq repair, 20% plan (reconstruct_sequentially)", f"{k} of {depth}", seconds, seconds / k,
                 lsq_full, peak))  # fmt: skip
    groups = sum(len(p.attention_groups) for p in part.layers)
    channels = sum(len(p.mlp_channels) for p in part.layers)
    errors = [(e[name]["before"], e[name]["after"]) for e in report for name in ("o", "down") if e.get(name)]
    spared = {name: sum(1 for e in report if not e.get(name)) for name in ("o", "down")}

    dtype = str(model.dtype).removeprefix("torch.")
    del model, captured, report, m  # m: layer 0's modules
    algebra = linear_algebra(shapes, getattr(torch, dtype), device, damping, not args.skip_obs, batch)

    print("\n| what ran | layers run | seconds | s / layer | full depth s | x baseline | peak GB |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for what, layers, seconds, per_layer, full, peak in rows:
        print(f"| {what} | {layers} | {seconds:.2f} | {per_layer:.3f} | {full:.2f} | {full / baseline:.2f} "
              f"| {peak} |")  # fmt: skip
    cut, refit = _mean(e[0] for e in errors), _mean(e[1] for e in errors)
    print(
        f"\nthe 20% plan in the layers run: {groups} attention groups, {channels} MLP channels removed; "
        f"{len(errors)} refits, mean relative error {cut:.3g} cut -> {refit:.3g} refit "
        "(random weights: a sanity check, not a quality number)"
    )
    if any(spared.values()):
        print(
            f"note: of the {k} layers run, {spared['o']} keep every attention group and {spared['down']} "
            "every MLP channel under this plan, and their refit is skipped: the lsq row's full depth s "
            "stands for a model pruned like these layers; --allocation uniform refits every layer"
        )
    estimates = [("taylor + reconstruction lsq", baseline + capture_s + lsq_full)]
    if not args.skip_obs:
        estimates += [
            ("criterion obs", capture_s + obs_full),
            ("criterion obs + reconstruction lsq", 2 * capture_s + obs_full + lsq_full),
        ]
    if batch:
        estimates += [
            (f"criterion obs, obs_batch_fraction {batch:g}", capture_s + batched_full),
            (f"criterion obs, obs_batch_fraction {batch:g} + reconstruction lsq",
             2 * capture_s + batched_full + lsq_full),
        ]  # fmt: skip
    print("the prune stage's calibration and repair at full depth, from the rows (ranking not included):")
    for what, seconds in estimates:
        print(f"- {what}: {seconds:.2f} s, {seconds / baseline:.2f} x calibration alone")

    print(f"\none layer's linear algebra ({dtype} weights, float64 H, damping {damping}), each timed once:")
    print("| call | weight | kept / groups | seconds | ms / greedy step | peak GB |")
    print("| --- | --- | --- | ---: | ---: | ---: |")
    for call, weight, what, seconds, step, peak in algebra:
        print(f"| {call} | {weight} | {what} | {seconds:.3f} | {step} | {peak} |")


def _mean(values: Iterator[float]) -> float:
    values = list(values)
    return sum(values) / len(values) if values else math.nan


if __name__ == "__main__":
    main()
