"""From a run's ``analysis/`` JSON to every file a person opens: diagnosis, plots, TensorBoard, summary.

``prune`` calls :func:`write_diagnostics` at its end and ``prunelight report`` calls it on a finished run,
so both produce the same files from the same inputs; ``prunelight compare`` reads several runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prunelight.diagnostics.diagnosis import DiagnosisSettings, diagnose
from prunelight.diagnostics.layers import layer_rate
from prunelight.diagnostics.schema import load, validate
from prunelight.errors import ConfigError
from prunelight.io import check_creatable, write_json
from prunelight.reports import plots
from prunelight.reports.recovery import recovery_section
from prunelight.reports.sparse import write_sparse_report
from prunelight.reports.summary import summary_markdown
from prunelight.reports.tensorboard import write_tensorboard

VISUALIZATION = "visualization"


def _inputs(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    analysis = run_dir / "analysis"
    if not analysis.is_dir():
        raise ConfigError(f"{run_dir} has no analysis/ folder: give the folder of a finished prune run")
    statistics = load(analysis / "gradient_statistics.json", "gradient_statistics")
    return statistics, load(analysis / "layer_report.json"), load(analysis / "prune.json")


def write_diagnostics(run_dir: Path) -> list[Path]:
    """Write gradient_diagnosis.json, the three PNGs (reconstruction.png after a repair, allocation_search.png
    after a search), the
    TensorBoard events and summary.md (last); for a sparse run, its sparsity plot, TensorBoard curves and
    summary."""
    if (run_dir / "analysis" / "sparsity.json").is_file():
        return write_sparse_report(run_dir)
    statistics, layers, report = _inputs(run_dir)
    settings = DiagnosisSettings(**(report.get("diagnosis") or {}))
    diagnosis = diagnose(statistics, layers, settings)
    validate("gradient_diagnosis", diagnosis)
    figures = run_dir / VISUALIZATION
    repair = run_dir / "analysis" / "reconstruction.json"
    reconstruction = load(repair, "reconstruction") if repair.is_file() else None
    searched = run_dir / "analysis" / "search.json"
    search = load(searched) if searched.is_file() else None
    written = [
        write_json(run_dir / "analysis" / "gradient_diagnosis.json", diagnosis),
        plots.gradient_analysis(statistics, figures / "gradient_analysis.png"),
        plots.pruning_rates(layers, figures / "pruning_rates.png"),
        plots.ranking_stages(layers, figures / "ranking_stages.png"),
        write_tensorboard(run_dir, statistics, layers, report, reconstruction, search),
    ]
    if reconstruction is not None:
        written.append(plots.reconstruction(reconstruction, figures / "reconstruction.png"))
    if search is not None:
        written.append(plots.allocation_search(search, figures / "allocation_search.png"))
    summary = run_dir / "summary.md"
    summary.write_text(recovery_section(run_dir) + summary_markdown(report, layers, diagnosis, search))
    return [*written, summary]


rebuild = write_diagnostics


def compare(runs: list[Path], output: Path) -> list[Path]:
    """compare.md (settings, parameters and perplexities of each run) and compare_rates.png."""
    if len(runs) < 2:
        raise ConfigError("compare needs at least two run folders")
    check_creatable(output, "output")
    labels = _labels(runs)
    reports = {label: load(run / "analysis" / "prune.json") for label, run in zip(labels, runs, strict=True)}
    layers = {label: _layer_fractions(run) for label, run in zip(labels, runs, strict=True)}
    corpora: list[str] = []
    for report in reports.values():
        corpora += [c for c in (report["perplexity"].get("pruned") or {}) if c not in corpora]
    lines = [
        "# Comparison",
        "",
        "| run | criterion | pattern | target | T | tau | removed | most pruned layer | "
        + " | ".join(f"ppl {c}" for c in corpora)
        + " |",
        "| --- | --- | --- | ---: | ---: | --- | ---: | --- | " + " | ".join("---:" for _ in corpora) + " |",
    ]
    for label, report in reports.items():
        ranking, ppl = report["ranking"], report["perplexity"].get("pruned") or {}
        worst = max(layers[label]["layers"], key=layer_rate)
        cells = [f"{ppl[c]:.4g}" if c in ppl else "-" for c in corpora]
        tau = "adaptive" if ranking["tau"] is None else ranking["tau"]
        criterion = report["importance"]["criterion"]
        if report.get("kind") == "sparse":  # zeroed weights of the prunable projections
            pattern, target, removed = (
                report["sparsity"]["pattern"],
                report["sparsity_target"],
                report["sparsity_reached"],
            )
        else:  # removed parameters of the whole model
            pattern, target, removed = "structured", ranking["ratio"], report["parameters"]["ratio"]
        lines.append(
            f"| {label} | {criterion} | {pattern} | {target:.4g} | {ranking['temperature']} | {tau} "
            f"| {removed:.1%} | {worst['layer']} ({layer_rate(worst):.0%}) | " + " | ".join(cells) + " |"
        )
    dense = next((r["perplexity"]["dense"] for r in reports.values() if r["perplexity"].get("dense")), None)
    if dense:
        lines += ["", "Dense: " + ", ".join(f"{c} {v:.4g}" for c, v in dense.items()) + "."]
    lines += [
        "",
        "Runs: " + ", ".join(f"`{label}` = {run}" for label, run in zip(labels, runs, strict=True)),
        "",
    ]
    output.mkdir(parents=True, exist_ok=True)
    table = output / "compare.md"
    table.write_text("\n".join(lines))
    return [table, plots.compare_rates(layers, output / "compare_rates.png")]


def _layer_fractions(run: Path) -> dict[str, Any]:
    """Per layer, parameters before and after: the layer report of a structured run; for a sparse run, its
    measured zeros (and removed structures) out of the dense projection weights."""
    sparsity = run / "analysis" / "sparsity.json"
    if not sparsity.is_file():
        return load(run / "analysis" / "layer_report.json")
    entries = load(sparsity)["layers"]
    return {
        "layers": [
            {
                "layer": e["layer"],
                "params_before": e["dense"],
                "params_after": e["dense"] - e["zeros"] - e["removed"],
            }
            for e in entries
        ]
    }


def _labels(runs: list[Path]) -> list[str]:
    """The shortest distinct names: the folder name, or more of the path where two runs share it."""
    for depth in range(1, max(len(r.resolve().parts) for r in runs) + 1):
        labels = ["/".join(r.resolve().parts[-depth:]) for r in runs]
        if len(set(labels)) == len(labels):
            return labels
    return [str(r) for r in runs]
