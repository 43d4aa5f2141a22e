"""A repaired run's reconstruction plot and TensorBoard curves, written by prune and rebuilt by report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import tiny_prune_args
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from prunelight.diagnostics.schema import load, validate
from prunelight.errors import ConfigError
from prunelight.main import main
from prunelight.reports import plots
from prunelight.reports.plots import SIZES

TAGS = (
    "reconstruction/o_before",
    "reconstruction/o_after",
    "reconstruction/down_before",
    "reconstruction/down_after",
)


@pytest.fixture(scope="module")
def runs(tiny_llama, tmp_path_factory) -> dict[str, Path]:
    folders = {}
    for name, extra in (("lsq", ("--reconstruction.method", "lsq")), ("plain", ())):
        root = tmp_path_factory.mktemp(name)
        main(tiny_prune_args(tiny_llama, root, "--ranking.ratio", "0.3", "--save_model", "false", *extra))
        folders[name] = next(root.glob("*/run"))
    return folders


def _scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run / "tb" / "diagnostics"), size_guidance={"scalars": 0})
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)]
        for tag in events.Tags()["scalars"]
        if tag.startswith("reconstruction/")
    }


def _assert_png(path: Path) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == SIZES["reconstruction"]
        assert len(image.convert("RGB").getcolors(1_000_000) or []) > 10


def test_a_repaired_run_plots_and_logs_its_errors_per_layer(runs):
    run = runs["lsq"]
    _assert_png(run / "visualization" / "reconstruction.png")
    data = load(run / "analysis" / "reconstruction.json", "reconstruction")
    assert data["method"] == "lsq" and data["layer_map"] == "none"
    scalars = _scalars(run)
    assert set(scalars) == set(TAGS)
    for name in ("o", "down"):
        for stage in ("before", "after"):
            expected = [(e["layer"], e[name][stage]) for e in data["layers"] if e[name]]
            logged = scalars[f"reconstruction/{name}_{stage}"]
            assert [step for step, _ in logged] == [layer for layer, _ in expected]  # the layer is the step
            assert [v for _, v in logged] == pytest.approx([v for _, v in expected], rel=1e-6)
    assert "visualization/reconstruction.png" in (run / "summary.md").read_text()


def test_a_run_without_reconstruction_has_no_plot_and_no_curves(runs):
    run = runs["plain"]
    assert not (run / "analysis" / "reconstruction.json").exists()
    assert not (run / "visualization" / "reconstruction.png").exists()
    assert (run / "visualization" / "pruning_rates.png").is_file()
    assert _scalars(run) == {}


def test_report_rebuilds_the_plot_and_the_curves(runs, tmp_path):
    original = runs["lsq"]
    copy = tmp_path / "copy"
    shutil.copytree(original / "analysis", copy / "analysis")
    (copy / "analysis" / "gradient_diagnosis.json").unlink()
    main(["report", str(copy)])
    _assert_png(copy / "visualization" / "reconstruction.png")
    assert _scalars(copy) == _scalars(original)
    assert (copy / "summary.md").read_text() == (original / "summary.md").read_text()


def test_a_broken_reconstruction_file_is_one_clear_line(runs, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(runs["lsq"] / "analysis", copy / "analysis")
    path = copy / "analysis" / "reconstruction.json"
    data = json.loads(path.read_text())
    data["layers"][0]["layer"] = "zero"
    path.write_text(json.dumps(data))
    with pytest.raises(SystemExit) as exit_:
        main(["report", str(copy)])
    assert exit_.value.code == 2


def test_the_plot_marks_layer_map_spans_and_survives_missing_refits(tmp_path):
    data = {
        "method": "none",
        "damping": 0.01,
        "layer_map": "lsq",
        "layers": [
            {"layer": 0, "removed": False, "o": {"before": 0.2, "after": 0.01}, "down": None},
            {"layer": 1, "removed": True, "o": None, "down": None,
             "map": {"span": [1, 3], "into_layer": 0, "tokens": 64, "before": 0.5, "after": 0.3, "fit": 0.4}},
            {"layer": 2, "removed": True, "o": None, "down": None},
            {"layer": 3, "removed": False, "o": {"before": 1e-4, "after": float("nan")}, "down": None},
            {"layer": 4, "removed": True, "o": None, "down": None},
        ],
    }  # fmt: skip
    validate("reconstruction", data)
    _assert_png(plots.reconstruction(data, tmp_path / "r.png"))
    with pytest.raises(ConfigError, match="layers/0"):
        validate("reconstruction", {**data, "layers": [{"layer": -1, "removed": False}]})
