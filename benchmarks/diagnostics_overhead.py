"""Time cost of the gradient statistics (diagnostics) during Taylor calibration, in the same run.

    python benchmarks/diagnostics_overhead.py --shape llama-2-7b --layers 2 --hidden 1024 --device cpu
    python benchmarks/diagnostics_overhead.py --shape llama-2-7b --dtype bfloat16 --device cuda \\
        --nsamples 64 --seqlen 2048 --batch-size 1 --rounds 3
    python benchmarks/diagnostics_overhead.py --model smollm2-135m --nsamples 32 --seqlen 128 --batch-size 8

Each round runs calibration with ``gradient_statistics=False`` and ``=True`` on the same windows, in
alternating order (off/on, then on/off, ...) so that drift cancels, after one untimed warm-up. Prints one
table: best and median seconds of each, the overhead (best on / best off - 1), tokens/s, peak memory both
ways, and whether both give bit-identical scores (``torch.equal`` on the group tables' attention and mlp
tensors of every layer); ``off/off`` says whether two runs without statistics agree, the floor of that check.
``--report`` also times ``write_diagnostics`` (diagnosis, plots, TensorBoard, summary) on a run folder
written from the last calibration with statistics (needs jsonschema, matplotlib, tensorboard).

Model and windows come from ``calibration_cost.py`` (``--model``, or ``--shape`` with random weights and
random ids, ``--layers`` to cut depth); ``--hidden``/``--intermediate`` shrink a ``--shape`` for a quick CPU
check (speed only: the weights are random anyway).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from calibration_cost import SHAPES, build, model_arguments, prunelight_calibration, windows_for  # noqa: E402

from prunelight.callbacks.importance import ImportanceCallback  # noqa: E402
from prunelight.data.windows import WindowSet  # noqa: E402
from prunelight.importance import Calibrated  # noqa: E402
from prunelight.measure import peak_memory, reset_peak_memory  # noqa: E402


def build_model(args: argparse.Namespace) -> tuple[torch.nn.Module, object]:
    """``calibration_cost.build``, with ``--hidden``/``--intermediate`` overriding the shape's sizes."""
    if args.shape and (args.hidden or args.intermediate):
        shape = dict(SHAPES[args.shape])
        shape["hidden_size"] = args.hidden or shape["hidden_size"]
        shape["intermediate_size"] = args.intermediate or shape["intermediate_size"]
        name = f"{args.shape}@{shape['hidden_size']}x{shape['intermediate_size']}"
        SHAPES[name] = shape  # the imported module's dict, in this process only
        args = argparse.Namespace(**{**vars(args), "shape": name})
    return build(args)


def calibrate(model, tokenizer, windows: WindowSet, args, criterion: str, stats: bool) -> tuple[float, Any]:
    """Seconds and result of one ``prunelight.loops.calibrate`` with the statistics on or off."""
    callback = ImportanceCallback(criterion, gradient_statistics=stats)
    return prunelight_calibration(model, tokenizer, windows, args, criterion, callback)


def identical(a: Calibrated, b: Calibrated) -> tuple[bool, float]:
    """Whether every layer's attention and mlp scores are bit-identical; else the largest relative gap."""
    same, gap = True, 0.0
    for x, y in zip(a.table.attention + a.table.mlp, b.table.attention + b.table.mlp, strict=True):
        if not torch.equal(x, y):
            same = False
            x, y = x.double(), y.double()
            gap = max(gap, float((x - y).abs().max() / y.abs().max().clamp_min(1e-300)))
    return same, gap


def time_report(calibrated: Calibrated, criterion: str, args, seconds: float, params: int) -> float:
    """Seconds of ``write_diagnostics`` on a run folder built as the prune stage builds it."""
    from prunelight.diagnostics.diagnosis import DiagnosisSettings
    from prunelight.diagnostics.layers import layer_report
    from prunelight.diagnostics.statistics import gradient_statistics
    from prunelight.io import write_json
    from prunelight.ranking import RankingConfig, rank
    from prunelight.reports import write_diagnostics
    from prunelight.stages.settings import ImportanceSettings

    ranking = RankingConfig(ratio=0.2)
    result = rank(calibrated.table, ranking)
    report = {
        "model": args.shape or args.model,
        "parameters": {"dense": params, "pruned": params - result.removed_params},
        "prunable": {"target": result.target_params, "removed": result.removed_params},
        "perplexity": {"dense": None, "pruned": None},
        "calibration": {
            "corpora": ["random" if args.shape else "wikitext2"],
            "nsamples": args.nsamples,
            "seqlen": args.seqlen,
            "batch_size": args.batch_size,
            "split": "validation",
            "seconds": seconds,
            "tokens": calibrated.tokens,
            "mean_loss": calibrated.mean_loss,
        },
        "importance": vars(ImportanceSettings(criterion=criterion)),
        "ranking": vars(ranking),
        "compensation": True,
        "evaluation": None,
        "diagnosis": vars(DiagnosisSettings()),
        "seconds": {"calibration": seconds},
    }
    report["parameters"]["ratio"] = result.removed_params / params
    with tempfile.TemporaryDirectory() as folder:
        run_dir = Path(folder)
        analysis = run_dir / "analysis"
        write_json(analysis / "layer_report.json", layer_report(calibrated.table, result))
        statistics_json = gradient_statistics(
            criterion, calibrated.table, result, calibrated.gradients, calibrated.mean_loss
        )
        write_json(analysis / "gradient_statistics.json", statistics_json)
        write_json(analysis / "prune.json", report)
        start = time.perf_counter()
        write_diagnostics(run_dir)
        return time.perf_counter() - start


def _peak(device: torch.device) -> float:
    return next(iter(peak_memory(device).values()))


def main() -> None:
    parser = model_arguments(__doc__, nsamples=8, batch_size=4)
    parser.add_argument("--hidden", type=int, default=None, help="--shape only: hidden size (CPU checks)")
    parser.add_argument("--intermediate", type=int, default=None, help="--shape only: MLP width")
    parser.add_argument("--criteria", default="taylor", help="comma-separated gradient criteria")
    parser.add_argument("--rounds", type=int, default=3, help="timed off/on pairs (order alternates)")
    parser.add_argument("--report", action="store_true", help="also time write_diagnostics")
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # one trainer per run: no banners

    model, tokenizer = build_model(args)
    windows = windows_for(args, model, tokenizer)
    device = torch.device(args.device)
    params = sum(p.numel() for p in model.parameters())
    weights_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    tokens = windows.input_ids.numel()
    peak_kind = next(iter(peak_memory(device)))
    rows, report_seconds = [], {}
    for criterion in args.criteria.split(","):
        calibrate(model, tokenizer, windows, args, criterion, False)  # warm-up: kernels, allocator, caches
        times: dict[bool, list[float]] = {False: [], True: []}
        peaks: dict[bool, float] = {False: 0.0, True: 0.0}
        results: dict[bool, list[Calibrated]] = {False: [], True: []}
        for r in range(args.rounds):
            for stats in (False, True) if r % 2 == 0 else (True, False):
                reset_peak_memory(device)
                seconds, result = calibrate(model, tokenizer, windows, args, criterion, stats)
                times[stats].append(seconds)
                peaks[stats] = max(peaks[stats], _peak(device))
                results[stats].append(result)
                print(f"{criterion} round {r + 1} statistics {'on ' if stats else 'off'}: {seconds:.3f} s")
        assert results[True][-1].gradients is not None and results[False][-1].gradients is None
        same, gap = identical(results[False][-1], results[True][-1])
        floor = identical(results[False][0], results[False][-1]) if args.rounds > 1 else None
        rows.append((criterion, times, peaks, same, gap, floor))
        if args.report:
            try:
                report_seconds[criterion] = time_report(
                    results[True][-1], criterion, args, min(times[True]), params
                )
            except ImportError as error:
                print(f"write_diagnostics not timed: {error}")

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    name = args.shape or args.model
    print(
        f"\nmodel {name}{f' x{args.layers} layers' if args.layers else ''} ({params / 1e6:.1f}M params, "
        f"{args.dtype}, {weights_mb:.0f} MiB), {where}, {len(windows)} x {windows.seqlen} tokens, "
        f"batch {args.batch_size}, {args.rounds} rounds (off/on alternating), torch {torch.__version__}"
    )
    print(
        "| criterion | off s (best / median) | on s (best / median) | overhead (best / median) | "
        f"tokens/s off / on | peak MiB off / on ({peak_kind}) | scores identical (off/on; off/off) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for criterion, times, peaks, same, gap, floor in rows:
        off, on = times[False], times[True]
        best = min(on) / min(off) - 1
        median = statistics.median(on) / statistics.median(off) - 1
        floor_text = "-" if floor is None else ("yes" if floor[0] else f"no (max rel. gap {floor[1]:.1e})")
        print(
            f"| {criterion} | {min(off):.3f} / {statistics.median(off):.3f} | {min(on):.3f} / "
            f"{statistics.median(on):.3f} | {best:+.2%} / {median:+.2%} | {tokens / min(off):,.0f} / "
            f"{tokens / min(on):,.0f} | {peaks[False]:.0f} / {peaks[True]:.0f} | "
            f"{'yes' if same else f'no (max rel. gap {gap:.1e})'}; {floor_text} |"
        )
    for criterion, seconds in report_seconds.items():
        print(f"\n{criterion}: write_diagnostics (diagnosis, 3 plots, TensorBoard, summary) {seconds:.2f} s")


if __name__ == "__main__":
    main()
