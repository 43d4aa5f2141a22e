"""The per-layer curves, score histograms and hyperparameters of a run, as TensorBoard events.

Layers are the step axis, so TensorBoard's scalar view draws each statistic along the depth of the model,
and the histogram view stacks the score distributions layer after layer. Everything is written from the
run's JSON into ``tb/diagnostics/`` with the old events removed first, so ``prunelight report`` replaces
them instead of adding a second copy.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from prunelight.diagnostics.layers import layer_rate
from prunelight.importance.gradients import KINDS, STATISTICS

FOLDER = Path("tb") / "diagnostics"
STAGES = ("raw", "normalized", "block", "layer")


def _scalar(writer: SummaryWriter, tag: str, value: float | None, step: int) -> None:
    if value is not None and math.isfinite(value):
        writer.add_scalar(tag, value, step)


def _hparam_value(value: Any) -> int | float | str | bool:
    if isinstance(value, bool | int | float | str):
        return value
    return "null" if value is None else str(value)


def hyperparameters(report: dict[str, Any]) -> tuple[dict[str, Any], dict[str, float]]:
    """Settings as flat ``section/key`` hparams; final perplexities and the removed fraction as metrics."""
    params: dict[str, Any] = {}
    for section in ("importance", "ranking", "sparsity"):  # sparsity: mask runs only
        for key, value in (report.get(section) or {}).items():
            params[f"{section}/{key}"] = _hparam_value(value)
    calibration = report.get("calibration") or {}
    for key in ("corpora", "nsamples", "seqlen", "split"):
        if key in calibration:
            params[f"calibration/{key}"] = _hparam_value(calibration[key])
    params["compensation"] = bool(report.get("compensation"))
    metrics = {"parameters/removed_fraction": float(report["parameters"]["ratio"])}
    if "sparsity_reached" in report:
        metrics["sparsity/reached"] = float(report["sparsity_reached"])
    for which, values in (report.get("perplexity") or {}).items():
        for corpus, value in (values or {}).items():
            metrics[f"perplexity/{which}/{corpus}"] = float(value)
    return params, metrics


def fresh_writer(run_dir: Path) -> SummaryWriter:
    """A writer into ``tb/diagnostics/`` with the old events removed, so a rebuild replaces them."""
    folder = run_dir / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("events.out.tfevents.*"):
        old.unlink()
    return SummaryWriter(log_dir=str(folder))


def write_hparams(writer: SummaryWriter, report: dict[str, Any]) -> None:
    """The run's settings as hparams, with its final numbers as metrics (also as step-0 scalars)."""
    params, metrics = hyperparameters(report)
    for summary in hparams(params, metrics):
        writer.file_writer.add_summary(summary)
    for tag, value in metrics.items():
        _scalar(writer, tag, value, 0)


def write_tensorboard(
    run_dir: Path,
    statistics: dict[str, Any],
    layer_report: dict[str, Any],
    report: dict[str, Any],
    reconstruction: dict[str, Any] | None = None,
    search: dict[str, Any] | None = None,
) -> Path:
    """Write the events (with ``analysis/reconstruction.json``'s per-layer errors and
    ``analysis/search.json``'s fitness per generation when given); return their folder."""
    writer = fresh_writer(run_dir)
    try:
        for entry in statistics["layers"]:
            step = entry["layer"]
            for kind in KINDS:
                part = entry[kind]
                _scalar(writer, f"rate/{kind}", part["rate"], step)
                for source in ("gradient", "importance"):
                    for stat in STATISTICS:
                        _scalar(writer, f"{source}/{kind}/{stat}", (part[source] or {}).get(stat), step)
                imp = part["importance"]
                if all(math.isfinite(imp[s]) for s in ("min", "max", "mean", "norm")):
                    writer.add_histogram_raw(
                        f"importance/{kind}/scores",
                        min=imp["min"],
                        max=imp["max"],
                        num=imp["groups"],
                        sum=imp["mean"] * imp["groups"],
                        sum_squares=imp["norm"] ** 2,
                        bucket_limits=imp["histogram"]["edges"][1:],
                        bucket_counts=imp["histogram"]["counts"],
                        global_step=step,
                    )
        for entry in layer_report["layers"]:
            step = entry["layer"]
            _scalar(writer, "layer/params_removed", layer_rate(entry), step)
            for kind in KINDS:
                if kind in entry:
                    for stage in STAGES:
                        _scalar(
                            writer, f"ranking/{kind}/{stage}_mean", entry[kind]["scores"][stage]["mean"], step
                        )
        for entry in (reconstruction or {}).get("layers", []):
            for name in ("o", "down"):
                for stage in ("before", "after"):
                    _scalar(
                        writer,
                        f"reconstruction/{name}_{stage}",
                        (entry[name] or {}).get(stage),
                        entry["layer"],
                    )
        for entry in (search or {}).get("history", []):
            _scalar(writer, "search/kl", entry["fitness"], entry["generation"])
        write_hparams(writer, report)
    finally:
        writer.close()
    return run_dir / FOLDER
