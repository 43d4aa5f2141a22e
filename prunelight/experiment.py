"""``prunelight experiment``: a grid of prune runs from one base config, resumable, summarised in one table.

A grid names config keys and the values each takes (``data.corpora``, ``ranking.temperature``, ...); every
combination is a cell, run in-process through the same CLI a user types, into ``<output>/cells/<cell>/``.
A cell is finished when its ``summary.md`` exists (prune writes it last), so a rerun skips finished cells
(it never reaches the CLI's refusal of an existing run folder) and starts the unfinished ones again from
scratch: a cell runs like any CLI run into a hidden staging folder renamed when complete
(:mod:`prunelight.run_folder`), which clears what an interrupted one left there.

The table (``experiment.md``, ``experiment.json``) and a heatmap of pruned perplexities are written after
every cell, so an interrupted grid still has its table.
"""

from __future__ import annotations

import gc
import itertools
import json
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunelight.cli import cli, one_line_error
from prunelight.errors import ConfigError, PrunelightError
from prunelight.io import write_json


@dataclass
class Experiment:
    """One grid of runs.

    Attributes:
        name: the experiment's name; results go to ``<results_root>/experiments/<name>/`` unless ``output``.
        base_config: the YAML every cell starts from (a ``prune`` config), relative to the working directory.
        grid: config key -> the values it takes; the cells are the Cartesian product, in this order. Keys
            that must change together are joined by commas, with one list per value:
            ``data.nsamples,data.seqlen: [[64, 128], [32, 256]]``.
        overrides: config key -> value, the same for every cell (e.g. a shorter evaluation).
        subcommand: the stage every cell runs.
        results_root: where ``experiments/<name>/`` goes when ``output`` is not given.
        output: the experiment's folder.
        dense_once: evaluate the dense model in the first cell only (it is the same model in every cell).
    """

    name: str
    base_config: str
    grid: dict[str, list[Any]]
    overrides: dict[str, Any] = field(default_factory=dict)
    subcommand: str = "prune"
    results_root: str = "results"
    output: str | None = None
    dense_once: bool = True

    def __post_init__(self) -> None:
        if not Path(self.base_config).is_file():
            raise ConfigError(f"experiment {self.name!r}: base_config {self.base_config} does not exist")
        if not self.grid or any(not isinstance(v, list) or not v for v in self.grid.values()):
            raise ConfigError(
                f"experiment {self.name!r}: grid must map each key to a non-empty list of values"
            )

    @property
    def folder(self) -> Path:
        return Path(self.output) if self.output else Path(self.results_root) / "experiments" / self.name

    def cells(self) -> list[dict[str, Any]]:
        keys = list(self.grid)
        return [dict(zip(keys, values, strict=True)) for values in itertools.product(*self.grid.values())]


def label(value: Any) -> str:
    """A short readable name for a grid value: ``[{name: c4, split: train}]`` -> ``c4``."""
    if isinstance(value, list | tuple):
        joined = all(not isinstance(v, dict | list | tuple) for v in value)
        return ("," if joined else "+").join(label(v) for v in value)
    if isinstance(value, dict):
        name = str(value.get("name", ""))
        fmt = value.get("format")
        return f"{name}:{fmt}" if fmt else name or json.dumps(value, sort_keys=True)
    return "null" if value is None else str(value)


def cell_name(cell: dict[str, Any]) -> str:
    """A folder name for a cell: ``corpora=c4__ratio=0.2`` (last part of each key, unsafe characters out)."""
    parts = [
        ",".join(k.rsplit(".", 1)[-1] for k in key.split(",")) + f"={label(value)}"
        for key, value in cell.items()
    ]
    return re.sub(r"[^A-Za-z0-9=._+:-]", "_", "__".join(parts)).replace(":", "-")


def expand(cell: dict[str, Any]) -> dict[str, Any]:
    """Split joined keys (``a,b: [x, y]``) into one setting each."""
    settings: dict[str, Any] = {}
    for key, value in cell.items():
        keys = key.split(",")
        if len(keys) == 1:
            settings[key] = value
        elif not isinstance(value, list) or len(value) != len(keys):
            raise ConfigError(
                f"grid key {key!r} joins {len(keys)} settings; each value must list {len(keys)}"
            )
        else:
            settings.update(zip(keys, value, strict=True))
    return settings


def cell_args(experiment: Experiment, cell: dict[str, Any], folder: Path, first: bool) -> list[str]:
    """The command line of one cell, exactly what a user would type."""
    args = [experiment.subcommand, "--config", experiment.base_config]
    settings = {**experiment.overrides, **expand(cell)}
    if experiment.dense_once and not first:
        settings["evaluation.dense"] = False
    for key, value in settings.items():  # strings as typed (a quoted "wanda" is no Literal), the rest as JSON
        args.append(f"--{key}={value if isinstance(value, str) else json.dumps(value)}")
    return [*args, "--run_dir", str(folder)]


def run_experiment(experiment: Experiment) -> dict[str, Any]:
    """Run the unfinished cells, then write the table; return the table."""
    folder = experiment.folder
    cells = experiment.cells()
    failures = []
    for index, cell in enumerate(cells):
        name = cell_name(cell)
        cell_dir = folder / "cells" / name
        if (cell_dir / "summary.md").is_file():
            print(f"[{index + 1}/{len(cells)}] {name}: finished earlier, skipped", flush=True)
            continue
        # a cell folder without summary.md (written by a version without staging folders) starts again
        shutil.rmtree(cell_dir, ignore_errors=True)
        print(f"[{index + 1}/{len(cells)}] {name}: running", flush=True)
        start = time.perf_counter()
        try:
            cli(cell_args(experiment, cell, cell_dir, first=index == 0))
        except Exception as err:  # one bad cell must not cost the others
            why = one_line_error(err) or f"{type(err).__name__}: {' '.join(str(err).split())}"
            failures.append(f"{name}: {why}")
            print(f"[{index + 1}/{len(cells)}] {name}: failed: {why}", flush=True)
        else:
            print(
                f"[{index + 1}/{len(cells)}] {name}: done in {time.perf_counter() - start:.0f} s", flush=True
            )
        gc.collect()
        if index < len(cells) - 1:  # the table after every cell; the last one is written below
            write_table(experiment)
    table = write_table(experiment)
    if failures:
        raise PrunelightError(
            f"{len(failures)} of {len(cells)} cells failed (rerun the same command to retry them): "
            + "; ".join(failures)
        )
    return table


def collect(experiment: Experiment) -> dict[str, Any]:
    """Every cell's settings and results, read back from its ``analysis/prune.json``."""
    rows, dense, corpora = [], {}, []
    for cell in experiment.cells():
        name = cell_name(cell)
        path = experiment.folder / "cells" / name / "analysis" / "prune.json"
        row: dict[str, Any] = {"cell": name, "settings": {k: label(v) for k, v in cell.items()}}
        if (path.parent.parent / "summary.md").is_file():
            report = json.loads(path.read_text())
            ppl = report["perplexity"]
            dense = dense or (ppl.get("dense") or {})
            row.update(
                status="finished",
                perplexity=ppl.get("pruned") or {},
                parameters_removed=report["parameters"]["ratio"],
                calibration_seconds=report["calibration"]["seconds"],
            )
            corpora += [c for c in row["perplexity"] if c not in corpora]
        else:
            row["status"] = "missing"
        rows.append(row)
    return {
        "name": experiment.name,
        "base_config": experiment.base_config,
        "grid": {k: [label(v) for v in values] for k, values in experiment.grid.items()},
        "overrides": experiment.overrides,
        "evaluation_corpora": corpora,
        "dense": dense,
        "rows": rows,
    }


def markdown(table: dict[str, Any]) -> str:
    keys, corpora = list(table["grid"]), table["evaluation_corpora"]
    lines = [
        f"# Experiment {table['name']}",
        "",
        f"Base config `{table['base_config']}`; pruned perplexity per evaluation corpus "
        "(relative to the dense model in brackets).",
        "",
        "| " + " | ".join(keys) + " | removed | " + " | ".join(corpora) + " |",
        "| " + " | ".join("---" for _ in keys) + " | ---: | " + " | ".join("---:" for _ in corpora) + " |",
    ]
    if table["dense"]:
        cells = [f"{table['dense'][c]:.4g}" if c in table["dense"] else "-" for c in corpora]
        lines.append("| " + " | ".join("dense" for _ in keys) + " | 0 | " + " | ".join(cells) + " |")
    for row in table["rows"]:
        ppl = row.get("perplexity", {})
        cells = []
        for c in corpora:
            if c not in ppl:
                cells.append("-")
            elif c in table["dense"]:
                cells.append(f"{ppl[c]:.4g} ({ppl[c] / table['dense'][c]:.2f}x)")
            else:
                cells.append(f"{ppl[c]:.4g}")
        removed = f"{row['parameters_removed']:.1%}" if "parameters_removed" in row else row["status"]
        lines.append(
            "| " + " | ".join(row["settings"].values()) + f" | {removed} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines) + "\n"


def heatmap_values(
    table: dict[str, Any],
) -> tuple[list[str], list[str], list[list[float | None]], str] | None:
    """One grid axis: rows = its values, columns = evaluation corpora. Two axes: rows x columns = the axes'
    values, on the first evaluation corpus. More axes: no heatmap."""
    keys, corpora, rows = list(table["grid"]), table["evaluation_corpora"], table["rows"]
    if not corpora:
        return None
    if len(keys) == 1:
        values = [[row.get("perplexity", {}).get(c) for c in corpora] for row in rows]
        return table["grid"][keys[0]], corpora, values, f"pruned perplexity: {keys[0]} x evaluation corpus"
    if len(keys) == 2:
        first, second = table["grid"][keys[0]], table["grid"][keys[1]]
        found = {(r["settings"][keys[0]], r["settings"][keys[1]]): r.get("perplexity", {}) for r in rows}
        values = [[found.get((a, b), {}).get(corpora[0]) for b in second] for a in first]
        return (
            first,
            second,
            values,
            f"pruned perplexity on {corpora[0]}: {keys[0]} (rows) x {keys[1]} (columns)",
        )
    return None


def write_table(experiment: Experiment) -> dict[str, Any]:
    from prunelight.reports.plots import heatmap

    table = collect(experiment)
    folder = experiment.folder
    write_json(folder / "experiment.json", table)
    (folder / "experiment.md").write_text(markdown(table))
    found = heatmap_values(table)
    if found is not None and any(v is not None for row in found[2] for v in row):
        rows, columns, values, title = found
        heatmap(rows, columns, values, folder / "heatmap.png", title)
    return table
