"""The files a person opens after a sparse run: the sparsity plot, TensorBoard curves and ``summary.md``.

Built only from ``analysis/sparsity.json`` and ``analysis/prune.json``, so ``prunelight report`` rebuilds
them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prunelight.diagnostics.schema import load
from prunelight.models.projections import PROJECTIONS
from prunelight.reports import plots
from prunelight.reports.recovery import recovery_section
from prunelight.reports.summary import zero_shot_lines
from prunelight.reports.tensorboard import FOLDER, fresh_writer, write_hparams


def write_sparse_report(run_dir: Path) -> list[Path]:
    """Write visualization/sparsity.png, tb/diagnostics events and summary.md (last)."""
    sparsity = load(run_dir / "analysis" / "sparsity.json")
    report = load(run_dir / "analysis" / "prune.json")
    written = [plots.sparsity_layers(sparsity, run_dir / "visualization" / "sparsity.png")]
    written.append(_tensorboard(run_dir, sparsity, report))
    summary = run_dir / "summary.md"
    summary.write_text(recovery_section(run_dir) + sparse_summary(report, sparsity))
    return [*written, summary]


def _tensorboard(run_dir: Path, sparsity: dict[str, Any], report: dict[str, Any]) -> Path:
    writer = fresh_writer(run_dir)
    try:
        for entry in sparsity["layers"]:
            writer.add_scalar("sparsity/layer", entry["sparsity"], entry["layer"])
            for name, row in entry["projections"].items():
                writer.add_scalar(f"sparsity/{name}", row["sparsity"], entry["layer"])
        write_hparams(writer, report)
    finally:
        writer.close()
    return run_dir / FOLDER


def sparse_summary(report: dict[str, Any], sparsity: dict[str, Any]) -> str:
    """Perplexity dense vs pruned, sparsity reached overall and per layer, and the settings."""
    ppl = report["perplexity"]
    corpora = list(ppl.get("pruned") or ppl.get("dense") or {})
    overall = sparsity["overall"]
    settings = report["sparsity"]
    evaluation = report.get("evaluation") or {}
    lines = [
        f"# Sparse pruning {report['model']}",
        "",
        "| | sparsity of prunable weights | " + " | ".join(f"ppl {c}" for c in corpora) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in corpora) + " |",
    ]
    for which, value in (("dense", 0.0), ("pruned", overall["sparsity"])):
        values = ppl.get(which) or {}
        cells = " | ".join(f"{values[c]:.4f}" if c in values else "-" for c in corpora)
        lines.append(f"| {which} | {value:.2%} | {cells} |")
    lines += zero_shot_lines(report)
    tiers = (
        f"{overall['removed']:,} removed as structures, {overall['tile_zeros']:,} zeroed as whole "
        f"{settings['block'][0]}x{settings['block'][1]} tiles, "
        f"{overall['zeros'] - overall['tile_zeros']:,} as single weights"
    )
    lines += [
        "",
        f"Pattern **{settings['pattern']}**, criterion **{report['importance']['criterion']}**, target "
        f"{sparsity['target']:.2%}, reached {overall['sparsity']:.4%} of {overall['dense']:,} prunable "
        f"weights (measured on the weights: {tiers}). Perplexity: split {evaluation.get('split', '-')}, "
        f"seqlen {evaluation.get('seqlen', '-')}, max_windows {evaluation.get('max_windows', '-')}.",
        "",
        "## Sparsity per layer",
        "",
        "| layer | target | reached | " + " | ".join(PROJECTIONS) + " |",
        "| ---: | ---: | ---: | " + " | ".join("---:" for _ in PROJECTIONS) + " |",
    ]
    for entry in sparsity["layers"]:
        target = "-" if entry.get("target") is None else f"{entry['target']:.2%}"
        cells = " | ".join(f"{entry['projections'][p]['sparsity']:.1%}" for p in PROJECTIONS)
        lines.append(f"| {entry['layer']} | {target} | {entry['sparsity']:.2%} | {cells} |")
    calibration = report["calibration"]
    lines += [
        "",
        "## Settings",
        "",
        f"- sparsity: `{json.dumps(settings)}`",
        f"- importance: `{json.dumps(report['importance'])}`",
        f"- calibration: {', '.join(calibration['passes']) or 'none (magnitude needs no data)'}"
        + (
            f"; {calibration['nsamples']} x {calibration['seqlen']} tokens from {calibration['corpora']}"
            if "nsamples" in calibration
            else ""
        )
        + f"; pruning took {report['seconds']['pruning']:.1f} s",
        "",
        "Per layer and projection: `analysis/sparsity.json`. Plot: `visualization/sparsity.png`. "
        "TensorBoard: `tensorboard --logdir tb`.",
        "",
    ]
    return "\n".join(lines)
