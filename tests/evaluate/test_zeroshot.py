"""Zero-shot evaluation through lm-eval on a model in memory, with lm-eval's tasks read from local files."""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from prunelight.data.root import data_root
from prunelight.errors import ConfigError, DataError
from prunelight.evaluate import local_tasks
from prunelight.evaluate.zeroshot import ZeroShotSettings, check_tasks, write_zero_shot, zero_shot

ALL_TASKS = ["boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa"]
WITH_ACC_NORM = {"piqa", "hellaswag", "arc_easy", "arc_challenge", "openbookqa"}
LIMIT = 8
ROOT = data_root()


def _lm_eval_module(relative: str) -> ModuleType:
    """A helper file of lm-eval's task folders (they are not packages), loaded by path."""
    import lm_eval.tasks

    path = Path(lm_eval.tasks.__file__).parent / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _jsonl(path: Path, n: int | None = None) -> list[dict[str, Any]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines[:n] if line.strip()]


@pytest.fixture(scope="module")
def model(tiny_llama: Path) -> PreTrainedModel:
    return AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)


@pytest.fixture(scope="module")
def local_run(model, tiny_tokenizer, tmp_path_factory) -> dict[str, Any]:
    """One lm-eval run over all seven local tasks, with the model in training mode and one module not."""
    model.train()
    model.model.layers[0].eval()  # a mixed state must come back as it was, not as model.train(True)
    before = {
        "modes": {name: m.training for name, m in model.named_modules()},
        "params": {name: (p, p.detach().clone()) for name, p in model.named_parameters()},
        "device": model.device,
        "dtype": model.dtype,
    }
    settings = ZeroShotSettings(
        tasks=ALL_TASKS,
        limit=LIMIT,
        batch_size=4,
        source="auto",  # the conftest switches the hub off: auto means local
        cache_dir=str(tmp_path_factory.mktemp("lm_eval_cache")),
        log_samples=True,
    )
    result = zero_shot(model, tiny_tokenizer, settings)
    return {"result": result, "before": before}


def test_every_local_task_runs(local_run):
    result = local_run["result"]
    assert list(result["tasks"]) == ALL_TASKS
    for task, values in result["tasks"].items():
        assert 0.0 <= values["acc"] <= 1.0, task
        assert isinstance(values["acc_stderr"], float) and values["acc_stderr"] >= 0.0, task
        if task in WITH_ACC_NORM:
            assert 0.0 <= values["acc_norm"] <= 1.0 and values["acc_norm_stderr"] >= 0.0, task
        else:
            assert values["acc_norm"] is None and values["acc_norm_stderr"] is None, task
        assert values["examples"] == LIMIT, task
        assert values["source"].startswith(f"local:{ROOT}/{task}/"), values["source"]
        samples = result["samples"][task]
        assert [s["doc_id"] for s in samples] == list(range(LIMIT))
        assert values["acc"] == pytest.approx(sum(s["acc"] for s in samples) / LIMIT)
    assert result["mean_acc"] == pytest.approx(
        sum(v["acc"] for v in result["tasks"].values()) / len(ALL_TASKS)
    )
    assert result["settings"]["source_used"] == "local"
    assert result["settings"]["limit"] == LIMIT
    assert result["seconds"] > 0


def test_model_left_as_it_was(local_run, model):
    before = local_run["before"]
    assert {name: m.training for name, m in model.named_modules()} == before["modes"]
    assert model.device == before["device"] and model.dtype == before["dtype"]
    params = dict(model.named_parameters())
    assert params.keys() == before["params"].keys()
    for name, (obj, value) in before["params"].items():
        assert params[name] is obj and torch.equal(params[name], value), name


def _continuation_logprob(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, context: str, continuation: str
) -> float:
    """Sum of log p(continuation tokens | context), tokenised as HFLM does: encode context and
    context + continuation (no BOS: this tokenizer adds none, nor does HFLM), continuation = the tail."""
    whole = tokenizer.encode(context + continuation)
    context_ids = tokenizer.encode(context)
    continuation_ids = whole[len(context_ids) :]
    assert continuation_ids
    ids = torch.tensor([(context_ids + continuation_ids)[:-1]])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0].double(), dim=-1)
    positions = range(len(context_ids) - 1, len(context_ids) - 1 + len(continuation_ids))
    return sum(logprobs[p, t].item() for p, t in zip(positions, continuation_ids, strict=True))


def _check_by_hand(
    local_run: dict[str, Any],
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: str,
    docs: list[tuple[str, list[str], int]],
) -> None:
    """lm-eval's per-choice log-likelihoods, choices, acc and acc_norm against a direct forward pass.

    acc takes the largest summed log-prob; acc_norm divides it by the choice's length in characters
    (lm-eval 0.4.13: ``len(choice)``; the choices here are ASCII, so bytes and characters agree).
    """
    result = local_run["result"]
    samples = result["samples"][task]
    acc = acc_norm = 0
    for (context, choices, gold), sample in zip(docs, samples, strict=True):
        assert all(c.isascii() for c in choices)
        scores = [_continuation_logprob(model, tokenizer, context, " " + c) for c in choices]
        assert sample["loglikelihoods"] == pytest.approx(scores, rel=1e-4, abs=1e-3)
        assert sample["target"] == gold
        chosen = max(range(len(scores)), key=scores.__getitem__)
        chosen_norm = max(range(len(scores)), key=lambda i: scores[i] / len(choices[i]))
        assert sample["chosen"] == chosen
        assert sample["acc"] == float(chosen == gold) and sample["acc_norm"] == float(chosen_norm == gold)
        acc += chosen == gold
        acc_norm += chosen_norm == gold
    assert result["tasks"][task]["acc"] == pytest.approx(acc / len(docs))
    assert result["tasks"][task]["acc_norm"] == pytest.approx(acc_norm / len(docs))


def test_piqa_matches_hand_computation(local_run, model, tiny_tokenizer):
    """Built from the authors' files directly, not from the converted cache."""
    rows = _jsonl(ROOT / "piqa" / "valid.jsonl", LIMIT)
    labels = (ROOT / "piqa" / "valid-labels.lst").read_text().split()[:LIMIT]
    docs = [
        (f"Question: {r['goal']}\nAnswer:", [r["sol1"], r["sol2"]], int(g))
        for r, g in zip(rows, labels, strict=True)
    ]
    _check_by_hand(local_run, model, tiny_tokenizer, "piqa", docs)


def test_arc_easy_acc_norm_matches_hand_computation(local_run, model, tiny_tokenizer):
    rows = _jsonl(ROOT / "arc_easy" / "hf_layout" / "ARC-Easy-test.jsonl", LIMIT)
    docs = [
        (
            f"Question: {r['question']}\nAnswer:",
            r["choices"]["text"],
            r["choices"]["label"].index(r["answerKey"]),
        )
        for r in rows
    ]
    _check_by_hand(local_run, model, tiny_tokenizer, "arc_easy", docs)


def test_untied_head_stays_untied(tiny_tokenizer, tmp_path):
    """HFLM calls tie_weights(), which re-ties an lm_head the config calls tied; the model must stay as
    given, and be evaluated as given."""
    from conftest import tiny_config

    torch.manual_seed(0)
    config = tiny_config("llama", len(tiny_tokenizer))
    config.tie_word_embeddings = True
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    head = torch.nn.Parameter(
        model.lm_head.weight.detach().clone() + 0.5 * torch.randn_like(model.lm_head.weight)
    )
    model.lm_head.weight = head
    settings = ZeroShotSettings(tasks=["piqa"], limit=2, cache_dir=str(tmp_path), log_samples=True)
    result = zero_shot(model, tiny_tokenizer, settings)
    assert model.lm_head.weight is head and model.lm_head.weight is not model.model.embed_tokens.weight
    row = _jsonl(ROOT / "piqa" / "valid.jsonl", 1)[0]
    context = f"Question: {row['goal']}\nAnswer:"
    expected = [_continuation_logprob(model, tiny_tokenizer, context, " " + row[k]) for k in ("sol1", "sol2")]
    assert result["samples"]["piqa"][0]["loglikelihoods"] == pytest.approx(expected, rel=1e-4, abs=1e-3)


def test_local_few_shot(model, tiny_tokenizer, tmp_path):
    """No local copy has lm-eval's train split: shots come from the local validation split (ARC) or from
    the evaluated split itself (PIQA), never the question being asked."""
    settings = ZeroShotSettings(tasks=["piqa", "arc_easy"], limit=2, num_fewshot=1, cache_dir=str(tmp_path))
    result = zero_shot(model, tiny_tokenizer, settings)
    assert {t: v["examples"] for t, v in result["tasks"].items()} == {"piqa": 2, "arc_easy": 2}
    assert result["settings"]["num_fewshot"] == 1


def test_pruned_class_with_unknown_model_type(tiny_tokenizer, tmp_path):
    """A model with uneven layers is a prunelight class (model_type prunelight_llama, unknown to lm-eval
    and to transformers' mappings); it is evaluated as a causal LM, on its own weights."""
    from conftest import tiny_config

    from prunelight.apply import apply_plan
    from prunelight.ranking import LayerPlan, PruningPlan

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("llama", len(tiny_tokenizer)), dtype=torch.float32)
    model = apply_plan(
        model, PruningPlan([LayerPlan(0, [1], list(range(0, 64, 3))), LayerPlan(1, [], [7, 9])])
    )
    assert model.config.model_type == "prunelight_llama"
    settings = ZeroShotSettings(tasks=["piqa"], limit=2, cache_dir=str(tmp_path), log_samples=True)
    result = zero_shot(model, tiny_tokenizer, settings)
    row = _jsonl(ROOT / "piqa" / "valid.jsonl", 1)[0]
    context = f"Question: {row['goal']}\nAnswer:"
    expected = [_continuation_logprob(model, tiny_tokenizer, context, " " + row[k]) for k in ("sol1", "sol2")]
    assert result["samples"]["piqa"][0]["loglikelihoods"] == pytest.approx(expected, rel=1e-4, abs=1e-3)


def test_winogrande_round_trip_on_every_row():
    """lm-eval's own winogrande functions, on the rebuilt rows, give back MosaicML's contexts and targets."""
    wino = _lm_eval_module("winogrande/preprocess_winogrande.py")
    path = ROOT / "winogrande" / "dev_llmfoundry_format.jsonl"
    source = _jsonl(path)
    rebuilt = list(local_tasks.convert_winogrande([path]))
    assert len(rebuilt) == len(source) == 1267
    official = (ROOT / "winogrande" / "dev-labels.lst").read_text().split()
    for original, row, answer in zip(source, rebuilt, official, strict=True):
        assert row["sentence"].count("_") == 1
        assert wino.doc_to_choice(row) == original["context_options"]
        assert wino.doc_to_target(row) == original["continuation"]
        assert wino.doc_to_text(row) == original["gold"]
        assert row["answer"] == answer
    first = rebuilt[0]
    assert first["option1"] == "Sarah" and first["option2"] == "Maria"
    assert first["sentence"] == "Sarah was a much better surgeon than Maria so _ always got the easier cases."


def test_winogrande_options_start_at_a_word():
    row = local_tasks.winogrande_row(["Then Sam gave it to", "Then Samantha gave it to"], "x", 0)
    assert row["sentence"].startswith("Then _")  # not "Then Sa_" with options "m" / "mantha"
    row = local_tasks.winogrande_row(["He hid it in the bag", "He hid it in the box"], "'s pocket.", 1)
    assert (row["option1"], row["option2"], row["answer"]) == ("bag", "box", "2")
    assert row["sentence"] == "He hid it in the _'s pocket."


def test_boolq_labels():
    assert [local_tasks.boolq_label(v) for v in ("true", "false", "True", True, False)] == [1, 0, 1, 1, 0]
    with pytest.raises(ValueError):
        local_tasks.boolq_label("maybe")
    path = ROOT / "boolq" / "val.jsonl"
    source = _jsonl(path)
    rows = list(local_tasks.convert_boolq([path]))
    assert len(rows) == 3270 and sum(r["label"] for r in rows) == 2033  # SOURCES.md: 2033 true
    for original, row in zip(source[:50], rows, strict=False):
        # super_glue's ClassLabel names are (False, True); the yaml's choices are ["no", "yes"]
        assert ["no", "yes"][row["label"]] == {"true": "yes", "false": "no"}[original["label"]]
        assert (row["question"], row["passage"]) == (original["question"], original["passage"])


def test_openbookqa_choice_parsing():
    labels, texts = local_tasks.parse_openbookqa_choices(
        "(A) make more phone calls (B) quit eating lunch out (C) buy less with monopoly money (D) have lunch"
    )
    assert labels == ["A", "B", "C", "D"]
    assert texts == [
        "make more phone calls",
        "quit eating lunch out",
        "buy less with monopoly money",
        "have lunch",
    ]
    # a marker out of turn stays part of the text
    assert (
        local_tasks.parse_openbookqa_choices("(A) see (C) below (B) x (C) y (D) z")[1][0] == "see (C) below"
    )
    with pytest.raises(ValueError):
        local_tasks.parse_openbookqa_choices("no choices here")

    path = ROOT / "openbookqa" / "test.tsv"
    rows = list(local_tasks.convert_openbookqa([path]))
    with path.open(encoding="utf-8", newline="") as handle:
        table = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    assert len(rows) == len(table) == 500
    for row, cells in zip(rows, table, strict=True):
        assert row["choices"]["label"] == ["A", "B", "C", "D"]
        rejoined = " ".join(
            f"({lab}) {text}"
            for lab, text in zip(row["choices"]["label"], row["choices"]["text"], strict=True)
        )
        assert rejoined == cells[2].strip()
        assert row["answerKey"] in row["choices"]["label"]
    assert rows[0]["id"] == "8-343" and rows[0]["answerKey"] == "B"
    assert rows[0]["choices"]["text"][1] == "quit eating lunch out"


def test_piqa_and_hellaswag_layouts():
    piqa = list(local_tasks.convert_piqa([ROOT / "piqa" / "valid.jsonl", ROOT / "piqa" / "valid-labels.lst"]))
    assert len(piqa) == 1838 and {r["label"] for r in piqa} == {0, 1}
    hella = list(local_tasks.convert_hellaswag([ROOT / "hellaswag" / "hellaswag_val_sample1000.jsonl"]))
    assert len(hella) == 1000 and hella[0]["label"] == "3"  # a string, as on the hub
    docs = _lm_eval_module("hellaswag/utils.py").process_docs
    import datasets

    processed = docs(datasets.Dataset.from_list(hella[:2]))
    assert processed[0]["gold"] == 3 and len(processed[0]["choices"]) == 4
    assert processed[0]["query"].startswith("Pole vault: Pole vault is a sport")


def test_cache_is_rewritten_when_the_source_changes(tmp_path):
    root, cache = tmp_path / "data", tmp_path / "cache"
    (root / "piqa").mkdir(parents=True)
    for name in ("valid.jsonl", "valid-labels.lst"):
        shutil.copy(ROOT / "piqa" / name, root / "piqa" / name)
    first = local_tasks.prepare("piqa", root, cache)["validation"]
    stamp = first.stat().st_mtime_ns
    assert local_tasks.prepare("piqa", root, cache)["validation"].stat().st_mtime_ns == stamp  # reused
    labels = root / "piqa" / "valid-labels.lst"
    flipped = ["1" if x == "0" else "0" for x in labels.read_text().split()]
    labels.write_text("\n".join(flipped) + "\n")
    again = local_tasks.prepare("piqa", root, cache)["validation"]
    assert _jsonl(again, 1)[0]["label"] == int(flipped[0])
    assert not list(cache.rglob(".*"))  # no temp files left behind


# ------------------------------------------------------------------------------------------------ errors


def test_unknown_task_suggests_close_names():
    with pytest.raises(ConfigError, match=r"'boolqq' \(did you mean boolq"):
        check_tasks(ZeroShotSettings(tasks=["piqa", "boolqq"]))


def test_missing_local_data_names_the_paths(tmp_path):
    settings = ZeroShotSettings(tasks=["piqa", "arc_easy"], source="local", data_root=str(tmp_path))
    with pytest.raises(DataError) as err:
        zero_shot(object(), object(), settings)  # fails before the model is looked at
    message = str(err.value)
    assert str(tmp_path / "piqa" / "valid.jsonl") in message
    assert str(tmp_path / "piqa" / "valid-labels.lst") in message
    assert str(tmp_path / "arc_easy" / "hf_layout" / "ARC-Easy-test.jsonl") in message
    assert "PRUNELIGHT_DATA" in message and "\n" not in message


def test_malformed_local_file_fails_the_check(tmp_path):
    (tmp_path / "boolq").mkdir()
    (tmp_path / "boolq" / "val.jsonl").write_text(
        '{"question": "q", "passage": "p", "idx": 0, "label": "maybe"}\n'
    )
    settings = ZeroShotSettings(
        tasks=["boolq"], source="local", data_root=str(tmp_path), cache_dir=str(tmp_path)
    )
    with pytest.raises(DataError, match=r"val.jsonl:1: unknown BoolQ label 'maybe'"):
        check_tasks(settings)


def test_task_without_local_copy_needs_the_hub():
    with pytest.raises(DataError, match="only the hub works"):
        check_tasks(ZeroShotSettings(tasks=["lambada_openai"], source="local"))


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        ({"limit": 0}, "limit must be a whole number >= 1"),
        ({"batch_size": 0}, "batch_size must be a whole number >= 1"),
        ({"num_fewshot": -1}, "num_fewshot"),
        ({"tasks": []}, "non-empty list"),
        ({"source": "web"}, "source must be auto, hub or local"),
    ],
)
def test_bad_numbers(change, pattern):
    with pytest.raises(ConfigError, match=pattern):
        zero_shot(object(), object(), ZeroShotSettings(**change))


def test_lm_eval_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval now raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'prunelight\[eval\]'"):
        check_tasks(ZeroShotSettings())


# ------------------------------------------------------------------------------------------------ output


def test_write_zero_shot(tmp_path, local_run):
    result = local_run["result"]
    path = write_zero_shot(tmp_path, result, "pruned", step=3)
    assert path == tmp_path / "analysis" / "zeroshot_pruned.json"
    assert json.loads(path.read_text())["tasks"]["piqa"]["acc"] == result["tasks"]["piqa"]["acc"]
    events = EventAccumulator(str(tmp_path / "tb" / "zeroshot"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"zeroshot/pruned/piqa/acc", "zeroshot/pruned/piqa/acc_norm", "zeroshot/pruned/mean_acc"} <= tags
    assert "zeroshot/pruned/boolq/acc_norm" not in tags
    (scalar,) = events.Scalars("zeroshot/pruned/piqa/acc")
    assert scalar.step == 3 and scalar.value == pytest.approx(result["tasks"]["piqa"]["acc"])
