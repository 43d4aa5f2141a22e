"""A prune run's diagnostics files, read back: schemas, images, TensorBoard tags; report and compare."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from prunelight.diagnostics.schema import load
from prunelight.main import main
from prunelight.reports.plots import SIZES

WIKI_VALID = "[{name: wikitext2, split: validation}]"
FIGURES = ("gradient_analysis", "pruning_rates", "ranking_stages")
JSON = ("gradient_statistics", "layer_report", "prune")


def _prune(model: Path, root: Path, name: str, criterion: str) -> Path:
    main([
        "prune", "--model.path", str(model), "--model.dtype", "float32",
        "--data.corpora", WIKI_VALID, "--data.nsamples", "4", "--data.seqlen", "32", "--data.batch_size", "2",
        "--importance.criterion", criterion, "--ranking.ratio", "0.3",
        "--evaluation.corpora", WIKI_VALID, "--evaluation.split", "validation", "--evaluation.seqlen", "64",
        "--evaluation.max_windows", "2", "--save_model", "false",
        "--run_dir", str(root / name), "--trainer.enable_progress_bar", "false",
    ])  # fmt: skip
    return root / name


@pytest.fixture(scope="module")
def runs(tiny_llama, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {c: _prune(tiny_llama, root, c, c) for c in ("taylor", "wanda")}


def _events(folder: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0, "histograms": 0})
    accumulator.Reload()
    return accumulator


def test_the_json_files_follow_their_schemas(runs):
    for criterion, run in runs.items():
        statistics = load(run / "analysis/gradient_statistics.json", "gradient_statistics")
        load(run / "analysis/gradient_diagnosis.json", "gradient_diagnosis")
        assert statistics["gradients_collected"] is (criterion == "taylor")
        assert statistics["num_layers"] == len(statistics["layers"]) == 2
        rates = [e["mlp"]["rate"] for e in statistics["layers"]]
        report = json.loads((run / "analysis/layer_report.json").read_text())
        assert rates == [e["mlp"]["rate"] for e in report["layers"]]


def test_the_figures_are_real_images_of_the_expected_size(runs):
    for run in runs.values():
        for name in FIGURES:
            with Image.open(run / "visualization" / f"{name}.png") as image:
                assert image.format == "PNG"
                assert image.size == SIZES[name]
                assert len(image.convert("RGB").getcolors(1_000_000) or []) > 10


def test_tensorboard_holds_the_per_layer_curves_histograms_and_hparams(runs):
    events = _events(runs["taylor"] / "tb" / "diagnostics")
    tags = events.Tags()
    for kind in ("attention", "mlp"):
        for tag in (
            f"rate/{kind}",
            f"gradient/{kind}/norm",
            f"importance/{kind}/mean",
            f"ranking/{kind}/raw_mean",
        ):
            assert tag in tags["scalars"], tag
            assert [e.step for e in events.Scalars(tag)] == [0, 1]  # the layer is the step
        assert [e.step for e in events.Histograms(f"importance/{kind}/scores")] == [0, 1]
    statistics = json.loads((runs["taylor"] / "analysis/gradient_statistics.json").read_text())
    logged = [e.value for e in events.Scalars("gradient/mlp/norm")]
    assert logged == pytest.approx([e["mlp"]["gradient"]["norm"] for e in statistics["layers"]], rel=1e-6)
    assert "perplexity/pruned/wikitext2" in tags["scalars"]
    assert "_hparams_/experiment" in events.PluginTagToContent("hparams")
    assert not any(
        t.startswith("gradient/") for t in _events(runs["wanda"] / "tb" / "diagnostics").Tags()["scalars"]
    )


def test_report_rebuilds_the_same_files_from_the_json(runs, tmp_path, capsys):
    original = runs["taylor"]
    copy = tmp_path / "copy"
    (copy / "analysis").mkdir(parents=True)
    for name in JSON:
        shutil.copy(original / "analysis" / f"{name}.json", copy / "analysis")
    main(["report", str(copy), str(original)])
    assert str(copy / "summary.md") in capsys.readouterr().out
    for name in ("analysis/gradient_diagnosis.json", "summary.md"):
        assert (copy / name).read_text() == (original / name).read_text(), name
    for name in FIGURES:
        assert (copy / "visualization" / f"{name}.png").is_file()
    # rerunning report on the run replaces its events instead of adding a second copy
    assert len(list((original / "tb" / "diagnostics").glob("events.out.tfevents.*"))) == 1
    assert (
        _events(copy / "tb" / "diagnostics").Tags()["scalars"]
        == _events(original / "tb" / "diagnostics").Tags()["scalars"]
    )


def test_compare_puts_runs_side_by_side(runs, tmp_path):
    main(["compare", str(runs["taylor"]), str(runs["wanda"]), "--output", str(tmp_path / "cmp")])
    table = (tmp_path / "cmp" / "compare.md").read_text()
    assert (
        "| taylor | taylor | structured | 0.3 |" in table and "| wanda | wanda | structured | 0.3 |" in table
    )
    with Image.open(tmp_path / "cmp" / "compare_rates.png") as image:
        assert image.size == SIZES["compare_rates"]


def test_report_on_a_folder_that_is_no_run_is_one_clear_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["report", str(tmp_path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("prunelight: error:") and "no analysis/ folder" in err and "\n" not in err
