"""The finetune and pipeline subcommands end to end on a tiny model: one folder, files that load, tables."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from peft import PeftModel

import prunelight
from prunelight.main import main

WIKI_VALID = "[{name: wikitext2, split: validation}]"


def _finetune_options(tmp_path) -> list[str]:
    """The fine-tuning options, the same for finetune and pipeline (the data is ``finetune_data`` in both)."""
    return [
        "--finetune_data.corpus", "wikitext2",
        "--finetune_data.train_split", "validation",
        "--finetune_data.val_split", "validation",
        "--finetune_data.block_size", "64",
        "--finetune_data.max_train_samples", "16",
        "--finetune_data.max_val_samples", "2",
        "--finetune_data.batch_size", "2",
        "--trainer.max_steps", "4",
        "--trainer.val_check_interval", "2",
        "--trainer.enable_progress_bar", "false",
        "--evaluation.corpora", WIKI_VALID,
        "--evaluation.split", "validation",
        "--evaluation.seqlen", "64",
        "--evaluation.max_windows", "2",
        "--results_root", str(tmp_path / "results"),
        "--experiment", "run",
    ]  # fmt: skip


def _prune_options(folder) -> list[str]:
    return [
        "--model.path", str(folder),
        "--model.dtype", "float32",
        "--data.corpora", WIKI_VALID,
        "--data.nsamples", "4",
        "--data.seqlen", "32",
    ]  # fmt: skip


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_finetune_writes_adapter_and_a_merged_model_that_agree(tiny_llama, tmp_path):
    main(["finetune", "--model.path", str(tiny_llama), "--model.dtype", "float32", "--lora.rank", "4",
          "--training.learning_rate", "0.01", *_finetune_options(tmp_path)])  # fmt: skip
    run = tmp_path / "results" / tiny_llama.name / "run"
    for name in ("summary.md", "adapter/adapter_config.json", "finetuned_model/config.json",
                 "analysis/finetune.json", "analysis/overfitting.json", "analysis/perplexity_before.json",
                 "analysis/perplexity_after.json"):  # fmt: skip
        assert (run / name).is_file(), name
    assert list((run / "checkpoints").glob("*.ckpt"))
    assert list((run / "tb").glob("events.out.tfevents.*"))

    ids = torch.randint(0, 512, (1, 20))
    merged = prunelight.load_pruned(run / "finetuned_model", dtype="float32")
    adapted = PeftModel.from_pretrained(prunelight.load_pruned(tiny_llama, dtype="float32"), run / "adapter")
    assert torch.allclose(_logits(merged, ids), _logits(adapted, ids), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(_logits(merged, ids), _logits(prunelight.load_pruned(tiny_llama), ids))

    report = json.loads((run / "analysis/finetune.json").read_text())
    assert report["trainer"]["global_step"] == 4
    assert 0 < report["trainable_parameters"] < report["parameters"]
    history = report["overfitting"]["history"]
    assert [e["step"] for e in history] == [2, 4]
    assert all(e["train_loss"] is not None for e in history)
    ppl = report["perplexity"]
    assert ppl["after"]["wikitext2"] < ppl["before"]["wikitext2"]
    summary = (run / "summary.md").read_text()
    assert "| before |" in summary and "| after |" in summary and "Overfitting monitor" in summary


def test_pipeline_prunes_finetunes_and_reports_three_rows(tiny_llama, tmp_path):
    main(["pipeline", *_prune_options(tiny_llama), "--ranking.ratio", "0.3", "--lora.rank", "4",
          "--training.learning_rate", "0.01", *_finetune_options(tmp_path),
          "--evaluation.zero_shot", "{tasks: [piqa, arc_easy], limit: 4, batch_size: 4}"])  # fmt: skip
    run = tmp_path / "results" / tiny_llama.name / "run"
    for name in ("pruned_model/config.json", "finetuned_model/config.json", "adapter/adapter_config.json",
                 "analysis/prune.json", "analysis/plan.json", "analysis/recovery.json",
                 "analysis/perplexity_dense.json", "analysis/perplexity_pruned.json",
                 "analysis/perplexity_recovered.json", "visualization/pruning_rates.png"):  # fmt: skip
        assert (run / name).is_file(), name
    recovery = json.loads((run / "analysis/recovery.json").read_text())
    rows = {r["name"]: r for r in recovery["rows"]}
    assert list(rows) == ["dense", "pruned", "recovered"]
    assert rows["recovered"]["parameters"] == rows["pruned"]["parameters"] < rows["dense"]["parameters"]
    assert rows["recovered"]["perplexity"]["wikitext2"] < rows["pruned"]["perplexity"]["wikitext2"]
    merged = prunelight.load_pruned(run / "finetuned_model")
    assert sum(p.numel() for p in merged.parameters()) == rows["pruned"]["parameters"]
    for which in ("dense", "pruned", "recovered"):
        zero_shot = json.loads((run / f"analysis/zeroshot_{which}.json").read_text())
        assert rows[which]["zero_shot"]["tasks"] == zero_shot["tasks"]
        assert set(zero_shot["tasks"]) == {"piqa", "arc_easy"}
        assert all(t["examples"] == 4 for t in zero_shot["tasks"].values())
    assert list((run / "tb" / "zeroshot").glob("events.out.tfevents.*"))
    summary = (run / "summary.md").read_text()
    assert summary.startswith("# Pipeline")
    assert "piqa" in summary and "mean acc" in summary
    for name in ("| dense |", "| pruned |", "| recovered |", "# Pruning"):
        assert name in summary


def test_a_pipeline_with_reconstruction_repairs_before_lora(tiny_llama, tmp_path):
    main(["pipeline", *_prune_options(tiny_llama), "--ranking.ratio", "0.3", "--reconstruction.method", "lsq",
          "--lora.rank", "4", "--training.learning_rate", "0.01", *_finetune_options(tmp_path)])  # fmt: skip
    run = tmp_path / "results" / tiny_llama.name / "run"
    for name in ("pruned_model/config.json", "finetuned_model/config.json", "adapter/adapter_config.json",
                 "analysis/reconstruction.json", "analysis/recovery.json",
                 "visualization/reconstruction.png"):  # fmt: skip
        assert (run / name).is_file(), name
    prune = json.loads((run / "analysis/prune.json").read_text())
    assert prune["reconstruction"]["method"] == "lsq" and prune["reconstruction"]["mean_error"]["down"]
    rows = {r["name"]: r for r in json.loads((run / "analysis/recovery.json").read_text())["rows"]}
    assert list(rows) == ["dense", "pruned", "recovered"]
    assert rows["recovered"]["parameters"] == rows["pruned"]["parameters"] < rows["dense"]["parameters"]
    # the pruned row is the repaired model, and LoRA starts from it
    assert rows["pruned"]["perplexity"] == prune["perplexity"]["pruned"]
    assert rows["recovered"]["perplexity"]["wikitext2"] < rows["pruned"]["perplexity"]["wikitext2"]
    merged = prunelight.load_pruned(run / "finetuned_model")
    assert sum(p.numel() for p in merged.parameters()) == rows["pruned"]["parameters"]
    summary = (run / "summary.md").read_text()
    assert "reconstruction: lsq" in summary and "| recovered |" in summary


@pytest.mark.parametrize(
    "recovery",
    [[], ["--recovery.objective", "kd", "--recovery.train", "full"]],
    ids=["lora", "kd-full"],
)
def test_a_sparse_pipeline_keeps_its_zeros_through_recovery(tiny_llama, tmp_path, recovery):
    main(["pipeline", *_prune_options(tiny_llama), "--importance.criterion", "wanda",
          "--sparsity.pattern", "unstructured", "--sparsity.sparsity", "0.5", "--lora.rank", "4",
          *recovery, *_finetune_options(tmp_path)])  # fmt: skip
    run = tmp_path / "results" / tiny_llama.name / "run"
    report = json.loads((run / "analysis/finetune.json").read_text())
    assert report["sparsity_kept"] == pytest.approx(0.5, abs=0.01)
    if recovery:  # every weight trained, and still half of them zero
        assert report["trainable_parameters"] == report["parameters"]
    model = prunelight.load_pruned(run / "finetuned_model")
    q = model.model.layers[0].self_attn.q_proj.weight
    assert (q == 0).float().mean() == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--lora.targets", "[q, attn_proj]"], "LoRA target module 'attn_proj' is not in the model"),
        (["--recovery.early_stopping_patience", "0"], "early_stopping_patience must be at least 1"),
        (["--finetune_data.train_split", "train"], "wiki.train.raw"),
    ],
)
def test_bad_recovery_settings_fail_before_pruning_and_leave_no_folder(
    tiny_llama, tmp_path, capsys, options, message
):
    with pytest.raises(SystemExit) as exit_info:
        main(["pipeline", *_prune_options(tiny_llama),
              *_finetune_options(tmp_path), *options])  # fmt: skip
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def test_evaluate_runs_zero_shot_on_the_model_it_measured(tiny_llama, tmp_path):
    main(["evaluate", "--model.path", str(tiny_llama), "--model.dtype", "float32",
          "--data.corpora", WIKI_VALID, "--data.split", "validation", "--data.seqlen", "64",
          "--data.max_windows", "2", "--zero_shot", "{tasks: [winogrande], limit: 3}",
          "--results_root", str(tmp_path / "results"), "--experiment", "run",
          "--trainer.enable_progress_bar", "false"])  # fmt: skip
    run = tmp_path / "results" / tiny_llama.name / "run"
    result = json.loads((run / "analysis/zeroshot_model.json").read_text())
    assert result["tasks"]["winogrande"]["examples"] == 3
    assert (run / "analysis/perplexity.json").is_file()


def test_an_unknown_zero_shot_task_fails_before_anything_runs(tiny_llama, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--model.path", str(tiny_llama), "--zero_shot", "{tasks: [piqaa]}",
              "--results_root", str(tmp_path / "results")])  # fmt: skip
    assert "piqaa" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def test_finetune_resumes_from_its_checkpoint_with_the_lora_settings_it_holds(tiny_llama, tmp_path, capsys):
    def run(experiment, *extra):
        main(["finetune", "--model.path", str(tiny_llama), "--model.dtype", "float32", "--lora.rank", "4",
              *_finetune_options(tmp_path), "--evaluation", "null",
              "--experiment", experiment, *extra])  # fmt: skip
        return tmp_path / "results" / tiny_llama.name / experiment

    first = run("first", "--trainer.max_steps", "2")
    checkpoint = next((first / "checkpoints").glob("*.ckpt"))
    saved = torch.load(checkpoint, weights_only=True)["hyper_parameters"]
    assert saved["lora"]["rank"] == 4 and saved["training"]["learning_rate"] == 2e-4
    resumed = run("resumed", "--ckpt_path", str(checkpoint))
    report = json.loads((resumed / "analysis/finetune.json").read_text())
    assert report["trainer"]["global_step"] == 4 and report["lora"]["rank"] == 4
    config = yaml.safe_load((resumed / "tb/config.yaml").read_text())
    assert "dict_kwargs" not in config["model"] and config["lora"]["rank"] == 4  # one place, also on resume

    with pytest.raises(SystemExit) as exit_info:
        run("other", "--ckpt_path", str(checkpoint), "--lora.rank", "8")
    assert exit_info.value.code == 2
    assert "resume with the lora settings it was written with" in capsys.readouterr().err
