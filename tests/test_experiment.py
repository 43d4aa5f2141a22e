"""The experiment subcommand: study configs parse cell by cell, a 2 x 2 grid runs, and a rerun resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

from prunelight.experiment import Experiment, cell_args, cell_name
from prunelight.main import main

STUDIES = sorted((ROOT / "configs").glob("study_*.yaml"))


def _experiment(config: Path) -> Experiment:
    settings = yaml.safe_load(config.read_text())
    return Experiment(**settings)


def _holds(parsed, expected) -> bool:
    """``parsed`` has every value of ``expected`` (parsed corpora carry their defaults too)."""
    if isinstance(expected, list):
        return len(parsed) == len(expected) and all(map(_holds, parsed, expected))
    if isinstance(expected, dict):
        return all(_holds(parsed.get(k), v) for k, v in expected.items())
    return parsed == expected


@pytest.mark.parametrize("config", STUDIES, ids=lambda p: p.name)
def test_every_cell_of_every_study_parses(config, capsys, monkeypatch):
    """Each cell's command line is a valid prune command whose config holds the cell's values."""
    monkeypatch.chdir(ROOT)
    assert config.read_text().startswith(f"# python train.py experiment --config configs/{config.name}")
    experiment = _experiment(config)
    cells = experiment.cells()
    assert len(cells) >= 3
    assert len({cell_name(c) for c in cells}) == len(cells)
    for index, cell in enumerate(cells):
        with pytest.raises(SystemExit):
            main([*cell_args(experiment, cell, Path("unused"), first=index == 0), "--print_config"])
        printed = yaml.safe_load(capsys.readouterr().out)
        for joined, value in cell.items():
            keys = joined.split(",")
            for key, part in zip(keys, value if len(keys) > 1 else [value], strict=True):
                section, name = key.split(".")
                parsed = printed[section]["init_args"] if section == "data" else printed[section]
                assert _holds(parsed[name], part), (key, parsed[name], part)
        assert printed["evaluation"]["dense"] is (index == 0)


def _grid(tmp_path: Path, tiny_llama: Path) -> Path:
    base = {
        "model": {"path": str(tiny_llama), "dtype": "float32"},
        "data": {"corpora": [{"name": "wikitext2", "split": "validation"}], "nsamples": 4, "seqlen": 32},
        "importance": {"criterion": "wanda"},
        "evaluation": {
            "corpora": [{"name": "wikitext2", "split": "validation"}, {"name": "ptb", "split": "validation"}],
            "split": "validation",
            "seqlen": 64,
            "max_windows": 2,
        },
        "save_model": False,
        "trainer": {"enable_progress_bar": False},
    }
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    grid = {
        "name": "tiny",
        "base_config": str(tmp_path / "base.yaml"),
        "output": str(tmp_path / "out"),
        "grid": {"ranking.ratio": [0.2, 0.4], "importance.criterion": ["wanda", "magnitude"]},
    }
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(grid, sort_keys=False))
    return tmp_path / "grid.yaml"


def test_a_two_by_two_grid_runs_and_resumes(tiny_llama, tmp_path, capsys):
    config = _grid(tmp_path, tiny_llama)
    main(["experiment", "--config", str(config)])
    out = tmp_path / "out"
    cells = sorted((out / "cells").iterdir())
    assert [c.name for c in cells] == [
        "ratio=0.2__criterion=magnitude",
        "ratio=0.2__criterion=wanda",
        "ratio=0.4__criterion=magnitude",
        "ratio=0.4__criterion=wanda",
    ]
    table = json.loads((out / "experiment.json").read_text())
    assert [r["status"] for r in table["rows"]] == ["finished"] * 4
    assert set(table["dense"]) == {"wikitext2", "ptb"}
    removed = {r["cell"]: r["parameters_removed"] for r in table["rows"]}
    assert removed["ratio=0.4__criterion=wanda"] > removed["ratio=0.2__criterion=wanda"]
    assert "| 0.4 | magnitude |" in (out / "experiment.md").read_text()
    assert (out / "heatmap.png").stat().st_size > 0
    first = capsys.readouterr().out
    assert first.count(": running") == 4

    # rerun: nothing is recomputed; an unfinished cell (no summary.md) runs again
    stamps = {c.name: (c / "summary.md").stat().st_mtime_ns for c in cells}
    (cells[1] / "summary.md").unlink()
    main(["experiment", "--config", str(config)])
    second = capsys.readouterr().out
    assert second.count("finished earlier, skipped") == 3
    assert "ratio=0.2__criterion=wanda: running" in second
    for cell in cells:
        if cell != cells[1]:
            assert (cell / "summary.md").stat().st_mtime_ns == stamps[cell.name]
    assert (cells[1] / "summary.md").is_file()
    again = json.loads((out / "experiment.json").read_text())
    for rows in (again["rows"], table["rows"]):
        for row in rows:
            row.pop("calibration_seconds")
    assert again == table  # the rerun cell gives the same numbers


def test_a_missing_base_config_is_one_clear_line(tmp_path, capsys):
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        yaml.safe_dump({"name": "x", "base_config": "nowhere.yaml", "grid": {"ranking.ratio": [0.1]}})
    )
    with pytest.raises(SystemExit) as exit_:
        main(["experiment", "--config", str(grid)])
    assert exit_.value.code == 2
    assert "base_config nowhere.yaml does not exist" in capsys.readouterr().err


def test_a_failing_cell_is_one_line_and_the_others_run(tiny_llama, tmp_path, capsys):
    """A cell whose value the parser refuses fails with the one line the command line prints for it (not
    jsonargparse's multi-line report); the other cells still run."""
    config = _grid(tmp_path, tiny_llama)
    grid = yaml.safe_load(config.read_text())
    grid["grid"] = {"ranking.ratio": [0.2], "importance.criterion": ["wanda", "wandaa"]}
    config.write_text(yaml.safe_dump(grid, sort_keys=False))
    with pytest.raises(SystemExit) as exit_:
        main(["experiment", "--config", str(config)])
    assert exit_.value.code == 2
    out, err = capsys.readouterr()
    failed = [line for line in out.splitlines() if ": failed: " in line]
    assert len(failed) == 1 and "importance.criterion" in failed[0] and "wandaa" in failed[0], out
    assert "ratio=0.2__criterion=wanda: done" in out
    last = err.strip().splitlines()[-1]  # before it: the good cell's loading bars
    assert last.startswith("prunelight: error: 1 of 2 cells failed") and "is not one of" in last
