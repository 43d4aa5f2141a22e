"""``ranking.allocation: search`` end to end on a tiny model: its report, its budget, its plan, its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import launch_ddp, tiny_prune_args

from prunelight.main import main

WORKER = Path(__file__).resolve().parent / "cli_worker.py"

SEARCH = ["--importance.criterion", "taylor", "--ranking.ratio", "0.3", "--ranking.allocation", "search",
          "--search.levels", "4", "--search.generations", "3",
          "--search.offspring", "3",
          "--search.stage_windows", "[2, 3]", "--search.survivors", "[2]",
          "--search.holdout_windows", "2", "--data.nsamples", "6"]  # fmt: skip


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
    summary = (tmp_path / tiny_llama.name / "run" / "summary.md").read_text()
    assert "## Allocation search" in summary and f"| {report['chosen']} (chosen) |" in summary
    table = summary.split("| layer | attention T/tau | attention search | mlp T/tau | mlp search |")[1]
    rows = table.split("\n\n")[0].splitlines()[2:]  # after the header's rule, up to the blank line
    assert len(rows) == len(removed)  # one per layer: attention and MLP, T/tau and search
    differ = [
        layer
        for layer in range(len(removed))
        for kind in ("attention", "mlp")
        if report["rates"]["T/tau plan"][kind][layer] != report["rates"]["search"][kind][layer]
    ]
    assert sum(row.count(" *") for row in rows) == len(differ)
    assert (
        tmp_path / tiny_llama.name / "run" / "visualization" / "allocation_search.png"
    ).stat().st_size > 10_000


def test_a_joint_budget_meets_the_whole_target_and_says_so(tiny_llama, tmp_path):
    """``search.budget: joint``: the plan removes at least the whole target, split between the kinds as the
    search found best; the report records the budget."""
    main(tiny_prune_args(tiny_llama, tmp_path, *SEARCH, "--search.budget", "joint"))
    analysis = tmp_path / tiny_llama.name / "run" / "analysis"
    report = json.loads((analysis / "search.json").read_text())
    prune = json.loads((analysis / "prune.json").read_text())
    assert report["settings"]["budget"] == "joint"
    assert prune["prunable"]["removed"] >= sum(report["targets"].values())
    assert prune["prunable"]["removed"] == report["removed_params"][report["chosen"]]


def test_the_search_scores_repaired_candidates_when_the_run_repairs(tiny_llama, tmp_path):
    """With reconstruction.method lsq every candidate is scored with its cut layers refitted: the report
    says so, and the KLs are not those of the unrepaired search."""
    lsq = ["--reconstruction.method", "lsq"]
    main(tiny_prune_args(tiny_llama, tmp_path / "lsq", *SEARCH, *lsq))
    main(tiny_prune_args(tiny_llama, tmp_path / "plain", *SEARCH))
    repaired, plain = (
        json.loads((tmp_path / root / tiny_llama.name / "run" / "analysis" / "search.json").read_text())
        for root in ("lsq", "plain")
    )
    assert repaired["repaired"] == {"method": "lsq", "damping": 0.01} and plain["repaired"] is None
    assert repaired["seed_fitness"] != plain["seed_fitness"]


@pytest.mark.parametrize("repair", [[], ["--reconstruction.method", "lsq"]])
def test_two_ddp_processes_search_the_plan_of_one(tiny_llama, tmp_path, repair):
    """Each rank scores its share of every stage's windows and the sums are all-reduced: the same decisions,
    so the same plan, as one process that scores them all (with the repaired levels, whose input sums are
    all-reduced too)."""
    ddp = ["--trainer.strategy", "ddp", "--trainer.accelerator", "cpu", "--trainer.devices", "2"]
    launch_ddp(WORKER, *tiny_prune_args(tiny_llama, tmp_path / "two", *SEARCH, *repair, *ddp))
    main(tiny_prune_args(tiny_llama, tmp_path / "one", *SEARCH, *repair))
    one, two = (tmp_path / root / tiny_llama.name / "run" / "analysis" for root in ("one", "two"))
    assert (
        json.loads((two / "plan.json").read_text())["plan"]
        == json.loads((one / "plan.json").read_text())["plan"]
    )
    reports = [json.loads((folder / "search.json").read_text()) for folder in (one, two)]
    assert reports[0]["chosen"] == reports[1]["chosen"] and reports[0]["levels"] == reports[1]["levels"]
    for name, kl in reports[0]["held_out_kl"].items():
        assert reports[1]["held_out_kl"][name] == pytest.approx(kl, rel=1e-5)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--search.generations", "0"], "search.generations must be at least 1, got 0"),
        (["--data.nsamples", "4"], "search needs 5 calibration windows"),
        (
            ["--search.stage_windows", "[3, 2]"],
            "search.stage_windows must be positive and not decreasing",
        ),
        (
            ["--search.levels", "2", "--ranking.kinds", "[mlp]", "--ranking.ratio", "0.6"],
            "at most 50% of its mlp",
        ),
        (
            [
                "--search.levels",
                "2",
                "--search.budget",
                "joint",
                "--ranking.kinds",
                "[mlp]",
                "--ranking.ratio",
                "0.6",
            ],
            "at most 50% of its groups",
        ),
        (["--search.budget", "both"], "search.budget"),
    ],
)
def test_bad_search_settings_are_one_line_before_calibrating(tiny_llama, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as stop:
        main(tiny_prune_args(tiny_llama, tmp_path, *SEARCH, *extra))
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / tiny_llama.name).exists()
