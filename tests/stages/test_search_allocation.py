"""``ranking.allocation: search`` end to end on a tiny model: its report, its budget, its plan, its errors."""

from __future__ import annotations

import json

import pytest
from conftest import tiny_prune_args

from prunelight.main import main

SEARCH = ["--importance.criterion", "taylor", "--ranking.ratio", "0.3", "--ranking.allocation", "search",
          "--ranking.search.levels", "4", "--ranking.search.generations", "3",
          "--ranking.search.offspring", "3",
          "--ranking.search.stage_windows", "[2, 3]", "--ranking.search.survivors", "[2]",
          "--ranking.search.holdout_windows", "2", "--data.nsamples", "6"]  # fmt: skip


def test_search_writes_its_report_and_plans_within_the_budget(tiny_llama, tmp_path):
    main(tiny_prune_args(tiny_llama, tmp_path, *SEARCH))
    analysis = tmp_path / tiny_llama.name / "run" / "analysis"
    report = json.loads((analysis / "search.json").read_text())
    prune = json.loads((analysis / "prune.json").read_text())
    plan = json.loads((analysis / "plan.json").read_text())
    held_out = report["held_out_kl"]
    assert set(held_out) >= {"T/tau plan", "T/tau on the ladder", "search"}
    assert held_out[report["chosen"]] == min(held_out.values())
    assert len(report["history"]) == 3 and report["windows"] == {"searched": 4, "held_out": 2, "seqlen": 32}
    assert prune["prunable"]["removed"] >= prune["prunable"]["target"]
    assert prune["prunable"]["removed"] == report["removed_params"][report["chosen"]]
    removed = [len(layer["mlp_channels"]) for layer in plan["plan"]["layers"]]
    rates = report["rates"][report["chosen"]]["mlp"]
    assert all(abs(c / 64 - r) < 1e-9 for c, r in zip(removed, rates, strict=True))  # 64 MLP channels
    assert any(c > 0 for c in removed)
    assert prune["seconds"]["search"] > 0
    assert (tmp_path / tiny_llama.name / "run" / "visualization" / "allocation_search.png").stat().st_size > 10_000


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--ranking.search.generations", "0"], "search.generations must be at least 1, got 0"),
        (["--data.nsamples", "4"], "search needs 5 calibration windows"),
        (
            ["--ranking.search.stage_windows", "[3, 2]"],
            "search.stage_windows must be positive and not decreasing",
        ),
    ],
)
def test_bad_search_settings_are_one_line_before_calibrating(tiny_llama, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as stop:
        main(tiny_prune_args(tiny_llama, tmp_path, *SEARCH, *extra))
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / tiny_llama.name).exists()
