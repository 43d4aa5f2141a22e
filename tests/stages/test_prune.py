"""The prune subcommand end to end on a tiny model: the results folder, reloading, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import launch_ddp, tiny_prune_args
from safetensors.torch import load_file

import prunelight
from prunelight.main import main

ROOT = Path(__file__).resolve().parents[2]


def _args(folder, tmp_path, *extra: str) -> list[str]:
    return tiny_prune_args(folder, tmp_path / "results", *extra)


@pytest.mark.parametrize(
    "options",
    [
        ["--importance.criterion", "taylor", "--ranking.ratio", "0.3", "--ranking.tau", "null"],
        [
            "--importance.criterion",
            "fluctuation",
            "--compensation",
            "true",
            "--ranking.normalization",
            "zscore",
        ],
    ],
    ids=["taylor", "flap"],
)
def test_prune_writes_a_complete_folder_that_reloads(tiny_llama, tmp_path, options):
    main(_args(tiny_llama, tmp_path, *options))
    run = tmp_path / "results" / tiny_llama.name / "run"
    written = ["summary.md", "pruned_model/config.json"] + [
        f"analysis/{name}.json"
        for name in ("plan", "layer_report", "prune", "calibration", "perplexity_dense", "perplexity_pruned")
    ]
    for name in written:
        assert (run / name).is_file(), name
    assert list((run / "tb").glob("events.out.tfevents.*"))
    report = json.loads((run / "analysis/prune.json").read_text())
    layers = json.loads((run / "analysis/layer_report.json").read_text())["layers"]
    assert report["parameters"]["pruned"] < report["parameters"]["dense"]
    assert sum(e["params_before"] - e["params_after"] for e in layers) == report["prunable"]["removed"]
    assert set(layers[0]["mlp"]["scores"]) == {"raw", "normalized", "block", "layer", "depth"}

    model = prunelight.load_pruned(run / "pruned_model")
    assert sum(p.numel() for p in model.parameters()) == report["parameters"]["pruned"]
    ids = torch.randint(0, model.config.vocab_size, (1, 16))
    with torch.no_grad():
        full = model(input_ids=ids).logits
        cached = model.generate(ids[:, :8], max_new_tokens=4, do_sample=False)
        uncached = model.generate(ids[:, :8], max_new_tokens=4, do_sample=False, use_cache=False)
    assert torch.isfinite(full).all()
    assert torch.equal(cached, uncached)
    ppl = report["perplexity"]
    assert ppl["dense"]["wikitext2"] > 0 and ppl["pruned"]["wikitext2"] > 0
    assert "| dense |" in (run / "summary.md").read_text()


def test_compensation_with_a_gradient_criterion_gets_its_means(tiny_llama, tmp_path):
    """Taylor hooks no o/down inputs unless compensation asks for their means; with it, every pruned
    layer's o/down bias is the removed columns times the calibration mean (nonzero)."""
    main(_args(tiny_llama, tmp_path, "--compensation", "true", "--ranking.ratio", "0.3"))
    run = tmp_path / "results" / tiny_llama.name / "run"
    plan = json.loads((run / "analysis/plan.json").read_text())
    model = prunelight.load_pruned(run / "pruned_model")
    compensated = 0
    for entry, layer in zip(plan["plan"]["layers"], model.model.layers, strict=True):
        if entry["mlp_channels"]:
            assert layer.mlp.down_proj.bias is not None and layer.mlp.down_proj.bias.abs().sum() > 0
            compensated += 1
    assert compensated > 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--ranking.ratio", "1.5"], "ratio"),
        (["--ranking.ratio", "0.5", "--ranking.max_rate", "0.1"], "max_rate"),
        (["--data.nsamples", "100000", "--data.seqlen", "256"], "nsamples x seqlen"),
    ],
    ids=["ratio", "unreachable", "short-corpus"],
)
def test_bad_input_is_one_line_and_no_folder(tiny_llama, tmp_path, capsys, options, message):
    with pytest.raises(SystemExit) as exit_:
        main(_args(tiny_llama, tmp_path, *options))
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "prunelight: error:" in err and message in err
    assert "Traceback" not in err
    assert not (tmp_path / "results").exists()


def test_fsdp2_prune_saves_the_model_of_one_process(tiny_llama, tmp_path):
    """Two FSDP2 ranks (gloo): the same plan, the same saved weights, and the same pruned perplexity as one
    process; the apply stage runs on a whole copy gathered from the shards."""
    options = ["--importance.criterion", "taylor", "--ranking.ratio", "0.3", "--data.nsamples", "6"]
    sharded = [
        "--trainer.strategy", "fsdp2",
        "--trainer.accelerator", "cpu",
        "--trainer.devices", "2",
        "--results_root", str(tmp_path / "sharded"),
    ]  # fmt: skip
    launch_ddp(ROOT / "tests/stages/cli_worker.py", *_args(tiny_llama, tmp_path, *options, *sharded))
    main(_args(tiny_llama, tmp_path, *options, "--results_root", str(tmp_path / "one")))
    one, two = (tmp_path / root / tiny_llama.name / "run" for root in ("one", "sharded"))
    assert (two / "summary.md").is_file() and not (two / ".pruned_model.staging").exists()
    plan = json.loads((one / "analysis/plan.json").read_text())
    assert plan["removed_params"] > 0
    assert json.loads((two / "analysis/plan.json").read_text()) == plan
    a = load_file(one / "pruned_model/model.safetensors")
    b = load_file(two / "pruned_model/model.safetensors")
    assert a.keys() == b.keys()
    for name, tensor in a.items():
        assert torch.equal(tensor, b[name]), name
    reports = [json.loads((run / "analysis/prune.json").read_text()) for run in (one, two)]
    assert reports[0]["parameters"] == reports[1]["parameters"]
    assert "unshard" in reports[1]["seconds"] and "unshard" not in reports[0]["seconds"]
    for which in ("dense", "pruned"):
        ppl = [r["perplexity"][which]["wikitext2"] for r in reports]
        assert ppl[1] == pytest.approx(ppl[0], rel=1e-5)


@pytest.mark.parametrize(
    "section",
    [
        ["--sparsity.pattern", "unstructured", "--sparsity.sparsity", "0.5"],
        ["--evaluation.zero_shot.tasks", "[piqa]"],
    ],
)
def test_fsdp2_refuses_what_it_does_not_run(tiny_llama, tmp_path, capsys, section):
    with pytest.raises(SystemExit):
        main(
            _args(
                tiny_llama, tmp_path, "--trainer.strategy", "fsdp2", "--trainer.accelerator", "cpu", *section
            )
        )
    assert "does not run under FSDP2" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()
