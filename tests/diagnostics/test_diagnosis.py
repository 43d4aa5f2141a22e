"""The diagnosis on constructed runs: it names the right layers when something is wrong, nothing otherwise."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from prunelight.diagnostics.diagnosis import DiagnosisSettings, diagnose
from prunelight.diagnostics.layers import layer_report
from prunelight.diagnostics.schema import validate
from prunelight.diagnostics.statistics import gradient_statistics
from prunelight.errors import ConfigError
from prunelight.ranking import RankingConfig, rank
from prunelight.ranking.table import GroupTable

LAYERS = 12


def _table(scales: list[float], seed: int = 0) -> GroupTable:
    """32 attention groups and 256 MLP channels per layer, scores in [0.5, 1] x the layer's scale."""
    g = torch.Generator().manual_seed(seed)
    attention = [(0.5 + 0.5 * torch.rand(32, generator=g, dtype=torch.float64)) * s for s in scales]
    mlp = [(0.5 + 0.5 * torch.rand(256, generator=g, dtype=torch.float64)) * s for s in scales]
    return GroupTable(
        attention=attention,
        mlp=mlp,
        attention_group_params=[40] * len(scales),
        mlp_channel_params=[12] * len(scales),
        layer_params=[32 * 40 + 256 * 12 + 8] * len(scales),
        total_params=len(scales) * 5000,
        block_importance=torch.ones(len(scales), dtype=torch.float64),
    )


def _gradients(norms: list[float]) -> list[dict]:
    def stats(norm: float) -> dict:
        return {"mean": 0.0, "std": norm / 100, "norm": norm, "min": -norm / 10, "max": norm / 10,
                "elements": 10_000, "passes": 4}  # fmt: skip

    return [{"attention": stats(n), "mlp": stats(n)} for n in norms]


def _run(scales, config: RankingConfig, gradients=None, loss: float | None = 2.5):
    table = _table(scales)
    result = rank(table, config)
    statistics = gradient_statistics("taylor", table, result, gradients, loss)
    validate("gradient_statistics", statistics)
    diagnosis = diagnose(statistics, layer_report(table, result))
    validate("gradient_diagnosis", diagnosis)
    return diagnosis


def _ids(diagnosis) -> dict[tuple[str, str | None], dict]:
    return {(i["id"], i["kind"]): i for i in diagnosis["issues"]}


EARLY_TINY = [1e-3, 1e-3, 1e-3] + [1.0] * (LAYERS - 3)
RAW = RankingConfig(ratio=0.3, temperature=0.0, tau=0.0)


def test_tiny_early_scores_are_reported_as_early_layers_over_pruned():
    diagnosis = _run(EARLY_TINY, RAW, _gradients([1.0] * LAYERS))
    found = _ids(diagnosis)
    assert diagnosis["status"] == "issues_found"
    for kind in ("attention", "mlp"):
        issue = found[("early_layers_over_pruned", kind)]
        assert issue["layers"] == [0, 1, 2]
        assert issue["severity"] == "error"  # raw global ranking takes (almost) all of them
        assert all(r["rate"] > 0.9 for r in issue["evidence"]["rates"])
        assert "ranking.first_layers: 3" in issue["recommendation"]
        spread = found[("scale_spread", kind)]
        assert spread["severity"] == "warning" and spread["evidence"]["spread"] > 100
        assert spread["layers"][0] in (0, 1, 2)
        assert "ranking.tau" in spread["recommendation"]
    assert {c["id"]: c["status"] for c in diagnosis["checks"]}["gradients"] == "passed"


def test_a_balanced_run_reports_nothing():
    diagnosis = _run([1.0] * LAYERS, RAW, _gradients([1.0 + 0.1 * i for i in range(LAYERS)]))
    assert diagnosis["status"] == "no_issues"
    assert diagnosis["issues"] == []
    assert diagnosis["summary"].startswith("no issue found")
    assert {c["status"] for c in diagnosis["checks"]} == {"passed"}


def test_the_layer_correction_fixes_the_early_layers_and_the_diagnosis_says_so():
    diagnosis = _run(EARLY_TINY, RankingConfig(ratio=0.3, temperature=0.0, tau=1.0))
    found = _ids(diagnosis)
    assert not any(issue_id == "early_layers_over_pruned" for issue_id, _ in found)
    assert found[("scale_spread", "mlp")]["severity"] == "info"
    assert diagnosis["status"] == "no_issues"  # notes alone are not problems
    assert {c["id"]: c["status"] for c in diagnosis["checks"]}["gradients"] == "skipped"


def test_many_layers_over_pruned():
    scales = [1.0 if i % 2 else 1e-2 for i in range(LAYERS)]  # every other layer looks unimportant
    found = _ids(_run(scales, RankingConfig(ratio=0.45, temperature=0.0, tau=0.0)))
    issue = found[("many_layers_over_pruned", "mlp")]
    assert issue["layers"] == [i for i in range(LAYERS) if i % 2 == 0]
    assert "max_rate" in issue["recommendation"]


def test_vanishing_exploding_and_non_finite_gradients_and_loss():
    norms = [1.0] * LAYERS
    norms[4], norms[7] = 1e-7, 1e5
    found = _ids(_run([1.0] * LAYERS, RAW, _gradients(norms)))
    assert found[("vanishing_gradients", "attention")]["layers"] == [4]
    assert found[("exploding_gradients", "mlp")]["layers"] == [7]

    norms[7] = math.inf
    broken = _run([1.0] * LAYERS, RAW, _gradients(norms), loss=math.nan)
    found = _ids(broken)
    assert found[("non_finite_gradients", "attention")]["layers"] == [7]
    assert found[("calibration_loss_not_finite", None)]["severity"] == "error"
    assert broken["counts"]["error"] >= 3


def test_thresholds_are_settings():
    table = _table([1.0] * LAYERS)
    result = rank(table, RAW)
    statistics = gradient_statistics("taylor", table, result, None, 2.0)
    strict = DiagnosisSettings(early_min_rate=0.0, early_rate_factor=0.5)
    found = _ids(diagnose(statistics, layer_report(table, result), strict))
    assert found[("early_layers_over_pruned", "mlp")]["layers"] == [0, 1, 2]


def test_the_schema_rejects_a_broken_file_with_the_field_named():
    table = _table([1.0] * LAYERS)
    statistics = gradient_statistics("taylor", table, rank(table, RAW), None, 2.0)
    broken = copy.deepcopy(statistics)
    del broken["layers"][3]["mlp"]["importance"]["max"]
    with pytest.raises(ConfigError, match=r"layers/3/mlp/importance: 'max' is a required property"):
        validate("gradient_statistics", broken, "analysis/gradient_statistics.json")
    broken = copy.deepcopy(statistics)
    broken["layers"][0]["attention"]["rate"] = 1.5
    with pytest.raises(ConfigError, match="rate"):
        validate("gradient_statistics", broken)


def _hand_run(early_removed: int) -> dict:
    """8 layers of 3 attention groups; layer 0 loses ``early_removed``, layers 1-7 one group in three."""
    removed = [early_removed, 1, 0, 0, 1, 0, 0, 1]
    entry = {"mean": 1.0, "std": 0.1, "norm": 2.0, "min": 0.9, "max": 1.1}
    layers = [
        {"layer": i, "attention": {"groups_before": 3, "groups_after": 3 - r, "rate": r / 3, "limits": [0, 2],
                                   "scores": {"layer": {"mean": 1.0}}}}
        for i, r in enumerate(removed)
    ]  # fmt: skip
    statistics = {
        "gradients_collected": False,
        "calibration_loss": 1.0,
        "layers": [
            {"layer": i, "attention": {"gradient": None, "importance": {**entry, "groups": 3}, "rate": r / 3},
             "mlp": {"gradient": None, "importance": {**entry, "groups": 3}, "rate": 0.0}}
            for i, r in enumerate(removed)
        ],
    }  # fmt: skip
    return diagnose(statistics, {"tau": {}, "layers": layers})


def test_one_group_of_granularity_is_not_over_pruning():
    assert _hand_run(1)["issues"] == []  # 33% of 3 groups is the smallest cut there is
    issue = _ids(_hand_run(2))[("early_layers_over_pruned", "attention")]
    assert issue["layers"] == [0]
