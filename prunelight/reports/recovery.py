"""The tables a person reads after fine-tuning: parameters, perplexities and zero-shot accuracies side by
side, one row per model state (before/after, or dense/pruned/recovered for the pipeline).

A ``finetune`` run's ``summary.md`` is :func:`write_finetune_summary`; a pipeline's ``summary.md`` starts
with :func:`recovery_section`, rendered from ``analysis/recovery.json`` so ``prunelight report`` keeps it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RECOVERY_FILE = "analysis/recovery.json"
"""The pipeline's rows; when a run folder has it, its ``summary.md`` starts with the recovery table (also
when ``report`` rebuilds the summary)."""


def results_table(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown table lines; each row has ``name``, ``parameters`` and optional ``perplexity`` (corpus ->
    value) and ``zero_shot`` (a :func:`prunelight.evaluate.zeroshot.zero_shot` result)."""
    corpora: list[str] = []
    tasks: list[str] = []
    for row in rows:
        corpora += [c for c in row.get("perplexity") or {} if c not in corpora]
        tasks += [t for t in (row.get("zero_shot") or {}).get("tasks", {}) if t not in tasks]
    header = ["", "parameters", *(f"ppl {c}" for c in corpora), *tasks]
    if tasks:
        header.append("mean acc")
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    for row in rows:
        ppl = row.get("perplexity") or {}
        zero_shot = row.get("zero_shot") or {}
        results = zero_shot.get("tasks", {})
        cells = [row["name"], f"{row['parameters']:,}" if row.get("parameters") else "-"]
        cells += [f"{ppl[c]:.3f}" if c in ppl else "-" for c in corpora]
        cells += [_accuracy(results[t]) if t in results else "-" for t in tasks]
        if tasks:
            cells.append(f"{zero_shot['mean_acc']:.4f}" if zero_shot.get("mean_acc") is not None else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _accuracy(result: dict[str, Any]) -> str:
    """acc ± stderr, and acc_norm in parentheses where the task has it."""
    if result.get("acc") is None:
        return "-"
    text = f"{result['acc']:.4f}"
    if result.get("acc_stderr") is not None:
        text += f" ± {result['acc_stderr']:.4f}"
    if result.get("acc_norm") is not None:
        text += f" (norm {result['acc_norm']:.4f})"
    return text


def zero_shot_note(rows: list[dict[str, Any]]) -> list[str]:
    settings = next((r["zero_shot"]["settings"] for r in rows if r.get("zero_shot")), None)
    if settings is None:
        return []
    sources = next(r["zero_shot"]["tasks"] for r in rows if r.get("zero_shot"))
    where = ", ".join(
        f"{t}: {v.get('source', '?')} ({v.get('examples', '?')} examples)" for t, v in sources.items()
    )
    reason = settings.get("source_reason")
    why = f" Source: {settings.get('source_used')} ({reason})." if reason else ""
    return [
        f"Zero-shot accuracies through lm-eval, {settings.get('num_fewshot', 0)}-shot, acc ± standard error "
        f"(acc_norm in parentheses). Data: {where}.{why}",
        "",
    ]


def finetune_summary(report: dict[str, Any]) -> str:
    """``summary.md`` of a ``finetune`` run."""
    first, second = report["labels"]
    rows = [
        {
            "name": label,
            "parameters": report["parameters"],
            "perplexity": report["perplexity"][label],
            "zero_shot": report["zero_shot"][label],
        }
        for label in (first, second)
    ]
    return "\n".join(
        [
            f"# Fine-tuning {report['model']}",
            "",
            *results_table(rows),
            "",
            *zero_shot_note(rows),
            *training_lines(report),
        ]
    )


def write_finetune_summary(run_dir: Path, report: dict[str, Any]) -> Path:
    """Write a ``finetune`` run's ``summary.md`` from its report (what ``analysis/finetune.json`` holds)."""
    summary = run_dir / "summary.md"
    summary.write_text(finetune_summary(report))
    return summary


def training_lines(report: dict[str, Any]) -> list[str]:
    """What the fine-tuning did and what the overfitting monitor saw."""
    trainer, lora, data = report["trainer"], report["lora"], report["data"]
    overfitting = report["overfitting"]
    recovery = report.get("recovery") or {}
    distillation = recovery.get("distillation")
    trained = (
        f"- LoRA rank {lora['rank']}, alpha {lora['alpha']}, dropout {lora['dropout']} on "
        f"{', '.join(lora['targets'])}: {report['trainable_parameters']:,} trainable parameters."
        if lora
        else f"- every weight trained (`recovery.train: full`): {report['trainable_parameters']:,} "
        "parameters."
    )
    objective = recovery.get("objective", "lm")
    if distillation:
        top_k = distillation["top_k"] or "all"
        objective += (
            f" (teacher `{distillation['teacher']}`, temperature {distillation['temperature']:g}, "
            f"top-k {top_k}"
            + (f", kd weight {distillation['kd_weight']:g}" if objective == "lm+kd" else "")
            + ")"
        )
    lines = [
        "## Fine-tuning",
        "",
        trained,
        f"- objective: {objective}; TensorBoard has `train/lm_loss` and `train/kd_loss` beside `train/loss`"
        if distillation
        else "- objective: lm (the next-token loss).",
        f"- {trainer['global_step']} optimiser steps (accumulating {trainer['accumulate_grad_batches']} "
        f"batches), precision {trainer['precision']}, {report['seconds']:.1f} s"
        + (" (resumed)" if trainer.get("resumed_from") else "")
        + (" (stopped early)" if trainer.get("stopped_early") else "")
        + ".",
        f"- data: `{json.dumps(data)}`",
        f"- training settings: `{json.dumps(report['training'])}`",
    ]
    if report.get("sparsity_kept") is not None:
        lines.append(
            f"- sparsity kept by the masks: {report['sparsity_kept']:.2%} of the projections' weights."
        )
    lines += ["", "## Overfitting monitor", "", f"Verdict: **{overfitting['verdict']}**.", ""]
    if overfitting["history"]:
        lines += ["| step | train loss | val loss | val ppl | gap |", "| ---: | ---: | ---: | ---: | ---: |"]
        for e in overfitting["history"]:
            train = "-" if e["train_loss"] is None else f"{e['train_loss']:.4f}"
            gap = "-" if e["gap"] is None else f"{e['gap']:+.4f}"
            lines.append(f"| {e['step']} | {train} | {e['val_loss']:.4f} | {e['val_ppl']:.3f} | {gap} |")
        lines.append("")
    lines += [f"- {w['message']}" for w in overfitting["warnings"]]
    lines += [
        "",
        ("Files: `adapter/` (LoRA), `finetuned_model/` (merged; " if lora else "Files: `finetuned_model/` (")
        + "`prunelight.load_pruned`), `checkpoints/`, "
        "`analysis/finetune.json`, `analysis/overfitting.json`. TensorBoard: `tensorboard --logdir tb`.",
        "",
    ]
    return lines


def recovery_section(run_dir: Path) -> str:
    """The pipeline's table (dense / pruned / recovered) and its fine-tuning facts, or '' for other runs."""
    path = run_dir / RECOVERY_FILE
    if not path.is_file():
        return ""
    recovery = json.loads(path.read_text())
    rows = recovery["rows"]
    lines = [
        f"# Pipeline: {recovery['model']}",
        "",
        *results_table(rows),
        "",
        *zero_shot_note(rows),
        *training_lines(recovery["finetune"]),
    ]
    return "\n".join(lines) + "\n"
