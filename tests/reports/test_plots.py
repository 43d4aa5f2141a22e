"""Every plot is a real PNG of its fixed size with something drawn on it, on synthetic runs (good and bad)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from PIL import Image

from prunelight.reports import plots
from prunelight.reports.plots import SIZES

LAYERS = 12


def _scale(layer: int) -> float:
    """1e-6 at the first layer to 1e2 at the last: the spread that log axes must show."""
    return 10.0 ** (-6 + 8 * layer / (LAYERS - 1))


def _block(layer: int, sign: float = 1.0) -> dict[str, Any]:
    size = _scale(layer)
    return {"mean": sign * size / 10, "std": size, "norm": 3 * size, "min": -2 * size, "max": 2 * size}


def _statistics(gradients: bool = True) -> dict[str, Any]:
    layers = []
    for layer in range(LAYERS):
        entry: dict[str, Any] = {"layer": layer}
        for kind, factor in (("attention", 1.0), ("mlp", 0.1)):
            gradient = {**_block(layer, -1.0 if layer % 2 else 1.0), "elements": 64, "passes": 4}
            gradient = {name: value * factor for name, value in gradient.items()}
            importance = {**_block(layer), "groups": 8, "histogram": {"edges": [0.0, 1.0], "counts": [8]}}
            importance["mean"] = factor * _scale(layer)
            entry[kind] = {
                "gradient": gradient if gradients else None,
                "importance": importance,
                "rate": layer / LAYERS * factor,
            }
        layers.append(entry)
    return {
        "schema": "prunelight/gradient_statistics/1",
        "criterion": "taylor" if gradients else "wanda",
        "gradients_collected": gradients,
        "calibration_loss": 6.25,
        "num_layers": LAYERS,
        "layers": layers,
    }


def _report(layers: int = LAYERS, flat: bool = False) -> dict[str, Any]:
    entries = []
    for layer in range(layers):
        entry: dict[str, Any] = {
            "layer": layer,
            "params_before": 1000,
            "params_after": 1000 - 50 * (layer % 10),
        }
        entry.update(layer_removed=False, protected=layer == 0, block_importance=1.0, block_weight=1.0)
        for kind in ("attention", "mlp"):
            stages = {"raw": _scale(layer), "normalized": _scale(layer) ** 0.5, "block": 1.0 + layer / 100}
            stages["layer"] = stages["depth"] = 1.0 if flat else 1.0 + layer / 50
            scores = {
                name: {"mean": m, "std": m / 10, "min": m / 2, "max": 2 * m} for name, m in stages.items()
            }
            entry[kind] = {"groups_before": 8, "groups_after": 6, "rate": 0.25 + layer / 50, "scores": scores}
        entries.append(entry)
    return {
        "tau": {"attention": 0.5, "mlp": 0.5},
        "target_params": 3000,
        "removed_params": 3000,
        "layers": entries,
    }


def _broken_report() -> dict[str, Any]:
    """A bad run: a removed layer, a layer without attention, NaN / inf / None values."""
    report = _report()
    layers = report["layers"]
    layers[3].update(layer_removed=True, params_after=0)
    layers[3]["mlp"]["rate"] = 1.0
    del layers[5]["attention"]
    layers[6]["mlp"]["rate"] = math.nan
    layers[7]["attention"]["scores"]["raw"]["mean"] = math.inf
    layers[8]["params_after"] = None
    layers[9]["mlp"]["scores"]["normalized"]["mean"] = -0.5  # a negative stage mean forces symlog
    return report


def _broken_statistics() -> dict[str, Any]:
    statistics = _statistics()
    statistics["layers"][2]["attention"]["gradient"]["norm"] = math.nan
    statistics["layers"][4]["mlp"]["gradient"]["min"] = -math.inf
    statistics["layers"][5]["mlp"]["gradient"] = None
    statistics["layers"][6]["attention"]["importance"]["mean"] = None
    return statistics


def _assert_png(path, name: str) -> None:
    assert path.is_file()
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == SIZES[name]
        assert len(image.convert("RGB").getcolors(1_000_000) or []) > 10, "the image is blank"


@pytest.mark.parametrize(
    "statistics",
    [_statistics(), _statistics(gradients=False), _broken_statistics()],
    ids=["taylor", "wanda", "bad"],
)
def test_gradient_analysis(tmp_path, statistics):
    path = plots.gradient_analysis(statistics, tmp_path / "nested" / "gradients.png")
    assert path == tmp_path / "nested" / "gradients.png"
    _assert_png(path, "gradient_analysis")


@pytest.mark.parametrize("report", [_report(), _broken_report()], ids=["good", "bad"])
def test_pruning_rates(tmp_path, report):
    _assert_png(plots.pruning_rates(report, tmp_path / "rates.png"), "pruning_rates")


def test_pruning_rates_with_one_kind(tmp_path):
    report = _report()
    for entry in report["layers"]:
        del entry["attention"]
    _assert_png(plots.pruning_rates(report, tmp_path / "rates.png"), "pruning_rates")


@pytest.mark.parametrize(
    "report", [_report(), _report(flat=True), _broken_report()], ids=["good", "flat", "bad"]
)
def test_ranking_stages(tmp_path, report):
    _assert_png(plots.ranking_stages(report, str(tmp_path / "stages.png")), "ranking_stages")


def test_compare_rates_with_different_layer_counts(tmp_path):
    runs = {"taylor 12 layers": _report(), "wanda 8 layers": _report(layers=8), "bad": _broken_report()}
    _assert_png(plots.compare_rates(runs, tmp_path / "compare.png"), "compare_rates")


@pytest.mark.parametrize(
    "values",
    [
        [[21.3, 25.1, 33.0], [20.1, None, 88.8], [25.0, 400.0, math.inf]],  # positive: log colours
        [[-1.5, 0.0, 2.5], [math.nan, 1.0, 3.0], [0.5, None, -2.0]],  # signed: linear colours
        [[None, None, None], [None, None, None], [None, None, None]],  # nothing finite at all
    ],
    ids=["log", "linear", "empty"],
)
def test_heatmap(tmp_path, values):
    path = plots.heatmap(
        ["taylor", "wanda", "magnitude"], ["10%", "20%", "50%"], values, tmp_path / "h.png", "ppl"
    )
    _assert_png(path, "heatmap")


def test_heatmap_without_results(tmp_path):
    _assert_png(plots.heatmap([], [], [], tmp_path / "h.png", "nothing yet"), "heatmap")


def test_heatmap_rejects_a_ragged_grid(tmp_path):
    with pytest.raises(ValueError, match="2 rows x 2 columns"):
        plots.heatmap(["a", "b"], ["x", "y"], [[1.0, 2.0], [3.0]], tmp_path / "h.png", "ragged")


def test_writing_twice_replaces_the_file_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "rates.png"
    plots.pruning_rates(_report(), path)
    first = path.read_bytes()
    plots.pruning_rates(_broken_report(), path)
    assert path.read_bytes() != first
    assert [p.name for p in tmp_path.iterdir()] == ["rates.png"]
    _assert_png(path, "pruning_rates")
