"""A prune run's ``summary.md``: parameters and perplexities dense vs pruned, the diagnosis, the settings,
and the most and least pruned layers.

Rendered from ``analysis/prune.json``, ``layer_report.json`` and ``gradient_diagnosis.json`` alone, so
``prunelight report`` writes the same text again; :func:`zero_shot_lines` is shared with the sparse summary.
"""

from __future__ import annotations

import json
from typing import Any

from prunelight.diagnostics.layers import layer_rate
from prunelight.reports.recovery import results_table, zero_shot_note


def summary_markdown(
    report: dict[str, Any],
    layers: dict[str, Any],
    diagnosis: dict[str, Any] | None = None,
    search: dict[str, Any] | None = None,
) -> str:
    """Dense vs pruned parameters and perplexity, the diagnosis, the settings, the allocation search (from
    ``analysis/search.json`` when the run searched), the most and least pruned layers."""
    params, ppl = report["parameters"], report["perplexity"]
    lines = [
        f"# Pruning {report['model']}",
        "",
        "| | parameters | " + " | ".join(f"ppl {c}" for c in (ppl["pruned"] or {})) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in (ppl["pruned"] or {})) + " |",
    ]
    for which in ("dense", "pruned"):
        values = ppl.get(which) or {}
        cells = " | ".join(f"{values[c]:.4f}" if c in values else "-" for c in (ppl["pruned"] or {}))
        lines.append(f"| {which} | {params[which]:,} | {cells} |")
    lines += zero_shot_lines(report)
    evaluation = report.get("evaluation") or {}
    lines += [
        "",
        f"Removed {params['ratio']:.2%} of all parameters ({report['prunable']['removed']:,} of a target of "
        f"{report['prunable']['target']:,} prunable parameters). Perplexity: split "
        f"{evaluation.get('split', '-')}, seqlen {evaluation.get('seqlen', '-')}, "
        f"max_windows {evaluation.get('max_windows', '-')}.",
        "",
        *_diagnosis_lines(diagnosis),
        "## Settings",
        "",
        f"- importance: `{json.dumps(report['importance'])}`",
        f"- ranking: `{json.dumps(report['ranking'])}`",
        f"- tau used: `{json.dumps(layers['tau'])}`",
        f"- compensation: {report['compensation']}",
        *_reconstruction_lines(report.get("reconstruction")),
        f"- calibration: {report['calibration']['nsamples']} x {report['calibration']['seqlen']} tokens from "
        f"{report['calibration']['corpora']} ({report['calibration']['split']}), "
        f"{report['calibration']['seconds']:.1f} s",
        "",
        *search_lines(search),
    ]
    ordered = sorted(layers["layers"], key=layer_rate)
    for title, chosen in (("most", ordered[::-1][:10]), ("least", ordered[:10])):
        lines += [
            f"## The ten {title} pruned layers",
            "",
            "| layer | params removed | attention groups | MLP channels | block importance |",
            "| ---: | ---: | --- | --- | ---: |",
        ]
        for e in chosen:
            attn, mlp = e.get("attention"), e.get("mlp")
            lines.append(
                f"| {e['layer']} | {layer_rate(e):.1%}"
                + (" (layer removed)" if e["layer_removed"] else "")
                + f" | {_kind(attn)} | {_kind(mlp)} | {e['block_importance']:.4g} |"
            )
        lines.append("")
    lines += [
        "Per-layer scores at every ranking stage: `analysis/layer_report.json`; gradients and scores per "
        "layer: `analysis/gradient_statistics.json`. Plots: `visualization/gradient_analysis.png`, "
        "`visualization/pruning_rates.png`, `visualization/ranking_stages.png`. TensorBoard: "
        "`tensorboard --logdir tb`.",
        "",
    ]
    return "\n".join(lines)


def search_lines(search: dict[str, Any] | None) -> list[str]:
    """The allocation search: each final candidate's held-out KL, and layer by layer where the T/tau plan
    and the search disagree (removed share of each kind's groups, in percent)."""
    if not search:
        return []
    held_out, chosen = search["held_out_kl"], search["chosen"]
    repaired = search.get("repaired")
    lines = [
        "## Allocation search",
        "",
        f"{len(search['history'])} generations, {search['evaluations']} evaluations, "
        f"{search['seconds']:.1f} s; candidates scored "
        + (f"after the {repaired['method']} repair" if repaired else "without a repair")
        + f"; KL to the dense model on {search['windows']['held_out']} held-out windows "
        f"(`analysis/search.json`, `visualization/allocation_search.png`):",
        "",
        "| candidate | held-out KL |",
        "| --- | ---: |",
        *(f"| {name}{' (chosen)' if name == chosen else ''} | {kl:.4g} |" for name, kl in held_out.items()),
        "",
    ]
    heuristic, found = search["rates"].get("T/tau plan"), search["rates"].get("search")
    if not heuristic or not found:
        return lines
    kinds = list(found)
    lines += [
        "Removed per layer, T/tau plan -> search (percent of the layer's groups of each kind; `*` where they "
        "differ):",
        "",
        "| layer | " + " | ".join(f"{kind} T/tau | {kind} search" for kind in kinds) + " |",
        "| ---: |" + " ---: | ---: |" * len(kinds),
    ]
    for layer in range(len(found[kinds[0]])):
        cells = []
        for kind in kinds:
            a, b = heuristic[kind][layer], found[kind][layer]
            cells.append(f"{a:.1%} | {b:.1%}{' *' if abs(a - b) > 1e-9 else ''}")
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _kind(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "-"
    return f"{entry['groups_before']} -> {entry['groups_after']} ({entry['rate']:.0%})"


def _diagnosis_lines(diagnosis: dict[str, Any] | None) -> list[str]:
    if diagnosis is None:
        return []
    lines = ["## Diagnosis", "", f"{diagnosis['summary']} (`analysis/gradient_diagnosis.json`).", ""]
    for issue in diagnosis["issues"]:
        lines.append(
            f"- **{issue['severity']}** {issue['id']}: {issue['message']}. Fix: {issue['recommendation']}."
        )
    return [*lines, ""] if diagnosis["issues"] else lines


def zero_shot_lines(report: dict[str, Any]) -> list[str]:
    """The dense and pruned zero-shot accuracies, when the run measured them."""
    measured = report.get("zero_shot") or {}
    rows = [
        {"name": which, "parameters": report["parameters"][which], "zero_shot": measured[which]}
        for which in ("dense", "pruned")
        if measured.get(which)
    ]
    return ["", *results_table(rows), "", *zero_shot_note(rows)] if rows else []


def _reconstruction_lines(reconstruction: dict[str, Any] | None) -> list[str]:
    """The repair after the cut and what it did to the layers' output errors (runs before it: nothing)."""
    layer_map = (reconstruction or {}).get("layers", "none")
    if not reconstruction or (reconstruction.get("method", "none") == "none" and layer_map == "none"):
        return [] if reconstruction is None else ["- reconstruction: none"]
    parts = []
    for name, label in (("o", "o_proj"), ("down", "down_proj")):
        error = (reconstruction.get("mean_error") or {}).get(name)
        if error:
            parts.append(
                f"{label} {error['before']:.4f} -> {error['after']:.4f} over {error['layers']} layers"
            )
    measured = (
        f"; mean relative output error of the repaired projections: {', '.join(parts)}" if parts else ""
    )
    if layer_map != "none":
        spans = (reconstruction.get("mean_error") or {}).get("map")
        measured += f"; layer map: {layer_map}" + (
            f", relative output error of the removed spans {spans['before']:.4f} -> {spans['after']:.4f} "
            f"over {spans['spans']} spans"
            if spans
            else " (no span to map)"
        )
    return [
        f"- reconstruction: {reconstruction['method']} (damping {reconstruction['damping']}){measured} "
        "(analysis/reconstruction.json; per layer: visualization/reconstruction.png)"
    ]
