"""Quality of sparse (mask) pruning on a real model: every pattern and criterion of the sparse study.

    python benchmarks/sparse_quality.py --model smollm2-135m --nsamples 32 --max-windows none \\
        --output results/sparse_quality/smollm2-135m
    python benchmarks/sparse_quality.py --model qwen2.5-coder-0.5b --nsamples 16 --max-windows 16 \\
        --output results/sparse_quality/qwen2.5-coder-0.5b
    python benchmarks/sparse_quality.py --model smollm2-135m --cells wanda-unstructured --output ...

The grid is the one of ``configs/study_sparse_patterns.yaml`` (read at run time): 50% unstructured
magnitude / wanda / sparsegpt, 2:4 wanda / sparsegpt, 16x16 blocks at 50% (wanda) and the three-tier
hybrid at 50% (wanda), each a ``prune`` run of ``prunelight experiment`` in ``<output>/cells/``. The
experiment is resumable: finished cells are skipped, and one that already measured the dense model goes
first, so the dense model is evaluated once. Calibration: WikiText-2 validation, ``--nsamples`` windows of
the base config's seqlen; evaluation: WikiText-2 test at seqlen 2048, the first ``--max-windows`` windows
(``none``: the whole split). Prints a markdown table and writes it to ``<output>/sparse_quality.md`` (the
numbers also to ``<output>/sparse_quality.json``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import yaml

from prunelight.experiment import cell_name, expand
from prunelight.main import main as prunelight_main

STUDY = "configs/study_sparse_patterns.yaml"
CORPUS = "wikitext2"


def method_id(cell: dict[str, Any]) -> str:
    """``criterion-pattern`` of a grid cell (``wanda-nm``), the names ``--cells`` takes."""
    settings = expand(cell)
    return f"{settings['importance.criterion']}-{settings['sparsity.pattern']}"


def method_label(settings: dict[str, Any]) -> str:
    criterion, pattern = settings["importance.criterion"], settings["sparsity.pattern"]
    rate = settings.get("sparsity.sparsity")
    if pattern == "nm":
        return f"{criterion} 2:4"
    if pattern == "block":
        return f"{criterion} 16x16 block {rate:.0%}"
    return f"{criterion} {pattern} {rate:.0%}"


def study_cells(study: dict[str, Any]) -> list[dict[str, Any]]:
    """The study's grid as a list of cells (joined keys kept joined, as the experiment writes them)."""
    keys = list(study["grid"])
    if len(keys) != 1:
        raise SystemExit(f"{STUDY}: expected one (joined) grid key, found {keys}")
    return [{keys[0]: value} for value in study["grid"][keys[0]]]


def read_report(cell_dir: Path) -> dict[str, Any] | None:
    path = cell_dir / "analysis" / "prune.json"
    if not (cell_dir / "summary.md").is_file() or not path.is_file():
        return None
    return json.loads(path.read_text())


def has_dense(report: dict[str, Any] | None) -> bool:
    return bool(report and (report["perplexity"].get("dense") or {}).get(CORPUS))


def write_experiment(args: argparse.Namespace, cells: list[dict[str, Any]], study: dict[str, Any]) -> Path:
    """The experiment YAML: the study's grid (``cells``, in this order) and overrides, plus this run's."""
    output = Path(args.output)
    key = list(study["grid"])[0]
    overrides = {
        **study.get("overrides", {}),
        "model.path": args.model,
        "data.nsamples": args.nsamples,
        "data.corpora": [CORPUS],
        "data.split": "validation",
        "evaluation.corpora": [CORPUS],
        "evaluation.split": "test",
        "evaluation.seqlen": args.seqlen,
        "evaluation.max_windows": args.max_windows,
        "save_model": False,
    }
    config = {
        "name": f"sparse_quality_{args.model}",
        "base_config": study["base_config"],
        "grid": {key: [cell[key] for cell in cells]},
        "overrides": overrides,
        "output": str(output),
    }
    path = output / "experiment_config.yaml"
    output.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def table(args: argparse.Namespace, cells: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """The markdown table (dense first, then the cells in the study's order) and its numbers."""
    output = Path(args.output)
    rows, dense, windows, calibration = [], None, None, None
    for cell in cells:
        cell_dir = output / "cells" / cell_name(cell)
        report = read_report(cell_dir)
        settings = expand(cell)
        row: dict[str, Any] = {
            "id": method_id(cell),
            "method": method_label(settings),
            "cell": cell_name(cell),
        }
        if report is None:
            rows.append({**row, "status": "missing"})
            continue
        if has_dense(report):
            dense = report["perplexity"]["dense"][CORPUS]
        evaluated = cell_dir / "analysis" / "perplexity_pruned.json"
        if evaluated.is_file():
            corpus = json.loads(evaluated.read_text())["corpora"][CORPUS]
            windows = windows or (corpus["windows"], corpus["seqlen"])
        if report["calibration"].get("nsamples"):
            calibration = calibration or (report["calibration"]["nsamples"], report["calibration"]["seqlen"])
        rows.append(
            {
                **row,
                "status": "finished",
                "sparsity_reached": report["sparsity_reached"],
                "perplexity": (report["perplexity"].get("pruned") or {}).get(CORPUS),
                "pruning_seconds": report["seconds"]["pruning"],
            }
        )
    if windows is None:
        scope = "no finished cell"
    elif args.max_windows is None:
        scope = f"the full test split ({windows[0]} windows of {windows[1]} tokens)"
    else:
        scope = (
            f"the first {windows[0]} windows of {windows[1]} tokens of the test split (NOT the full split)"
        )
    calib = (
        f"{calibration[0]} x {calibration[1]} = {calibration[0] * calibration[1]:,} tokens of WikiText-2 "
        "validation"
        if calibration
        else "none"
    )
    lines = [
        f"**{args.model}**: WikiText-2 test perplexity at seqlen {args.seqlen}, on {scope}; "
        f"calibration {calib} (magnitude uses none).",
        "",
        "| method | reached sparsity | ppl wikitext2 test | ratio to dense | pruning seconds |",
        "| --- | ---: | ---: | ---: | ---: |",
        f"| dense | 0.0% | {dense:.3f} | 1.00x | - |" if dense else "| dense | 0.0% | - | - | - |",
    ]
    for row in rows:
        if row["status"] != "finished":
            lines.append(f"| {row['method']} | {row['status']} | - | - | - |")
            continue
        ppl = row["perplexity"]
        ratio = f"{ppl / dense:.2f}x" if ppl and dense else "-"
        lines.append(
            f"| {row['method']} | {row['sparsity_reached']:.1%} | {ppl:.3f} | {ratio} | "
            f"{row['pruning_seconds']:.1f} |"
        )
    numbers = {
        "model": args.model,
        "seqlen": args.seqlen,
        "max_windows": args.max_windows,
        "windows": windows[0] if windows else None,
        "calibration": {"nsamples": calibration[0], "seqlen": calibration[1]} if calibration else None,
        "dense": dense,
        "rows": rows,
    }
    return "\n".join(lines) + "\n", numbers


def windows_arg(value: str) -> int | None:
    return None if value.lower() in ("none", "null", "all", "full") else int(value)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m", help="a zoo name or a Hugging Face folder")
    parser.add_argument(
        "--nsamples", type=int, default=32, help="calibration windows (WikiText-2 validation)"
    )
    parser.add_argument(
        "--max-windows",
        type=windows_arg,
        default=None,
        help="test windows to evaluate; none: the whole split",
    )
    parser.add_argument("--seqlen", type=int, default=2048, help="evaluation window length")
    parser.add_argument("--output", required=True, help="the experiment's folder")
    parser.add_argument(
        "--cells", default=None, help="comma-separated subset, e.g. wanda-unstructured,sparsegpt-nm"
    )
    parser.add_argument("--table-only", action="store_true", help="rebuild the table from finished cells")
    args = parser.parse_args()

    study = yaml.safe_load(Path(STUDY).read_text())
    every = study_cells(study)
    cells = every
    if args.cells:
        known = {method_id(c): c for c in every}
        wanted = [name.strip() for name in args.cells.split(",") if name.strip()]
        unknown = [name for name in wanted if name not in known]
        if unknown:
            raise SystemExit(f"unknown cells {unknown}; the study has: {', '.join(known)}")
        cells = [known[name] for name in wanted]

    if not args.table_only:
        # dense_once evaluates the dense model in the grid's first cell: put a finished cell that already
        # measured it first, so a resumed or extended grid does not evaluate the dense model again
        output = Path(args.output)
        done = [c for c in cells if has_dense(read_report(output / "cells" / cell_name(c)))]
        order = done[:1] + [c for c in cells if c not in done[:1]]
        config = write_experiment(args, order, study)
        start = time.perf_counter()
        prunelight_main(["experiment", "--config", str(config)])
        print(f"experiment: {time.perf_counter() - start:.0f} s wall-clock", flush=True)

    markdown, numbers = table(args, [c for c in every if c in cells])
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "sparse_quality.md").write_text(markdown)
    (output / "sparse_quality.json").write_text(json.dumps(numbers, indent=2) + "\n")
    print(markdown)


if __name__ == "__main__":
    main()
