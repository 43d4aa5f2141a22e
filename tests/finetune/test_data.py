"""Recovery datamodules: LM blocks cut like evaluation windows and held out without overlap; QA sequences
supervised on the answer and eos only, held out by article."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import SHARED_DATA

from prunelight.data import evaluation_windows
from prunelight.errors import ConfigError, DataError
from prunelight.finetune.data import (
    IGNORE_INDEX,
    InstructionDataModule,
    LanguageModelingDataModule,
    PadCollator,
    held_out_count,
)

EOS = "<|endoftext|>"


@pytest.fixture(scope="module")
def tok(tiny_llama) -> str:
    """A folder load_tokenizer accepts (it wants a config.json next to the tokenizer)."""
    return str(tiny_llama)


def _lm(tok: str, **kwargs) -> LanguageModelingDataModule:
    kwargs = {"corpus": "ptb", "block_size": 128, "tokenizer": tok, **kwargs}
    dm = LanguageModelingDataModule(**kwargs)
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def held(tok) -> LanguageModelingDataModule:
    """PTB validation, trained and validated on by holding out its last blocks (tokenised once)."""
    return _lm(tok, train_split="validation", val_split="validation", batch_size=4)


@pytest.fixture
def small_text(tmp_path) -> str:
    path = tmp_path / "notes.txt"
    path.write_text((SHARED_DATA / "ptb" / "ptb.test.txt").read_text()[:20000])
    return str(path)


def _all(loader) -> dict[str, torch.Tensor]:
    batches = list(loader)
    return {key: torch.cat([b[key] for b in batches]) for key in batches[0]}


# ----------------------------------------------------------------------------------------------------------
# Language modelling


def test_held_out_count_is_exact_ceil():
    assert held_out_count(0.1, 30) == 3
    assert held_out_count(0.1, 31) == 4
    assert held_out_count(0.5, 1) == 1


def test_lm_same_split_holds_out_the_last_blocks(held, tiny_tokenizer):
    dm = held
    full = evaluation_windows("ptb", tiny_tokenizer, seqlen=128, split="validation").input_ids
    n_val = math.ceil(0.1 * len(full))
    assert torch.equal(dm.train_ids, full[: len(full) - n_val])
    assert torch.equal(dm.val_ids, full[len(full) - n_val :])  # disjoint and complete
    val = _all(dm.val_dataloader())
    assert torch.equal(val["input_ids"], dm.val_ids) and torch.equal(val["labels"], val["input_ids"])
    train = _all(dm.train_dataloader())
    assert train["input_ids"].shape == dm.train_ids.shape and torch.equal(train["labels"], train["input_ids"])
    info = dm.describe()
    assert info["held_out"] is True and info["val_fraction"] == 0.1
    assert (info["train_blocks"], info["val_blocks"]) == (len(full) - n_val, n_val)
    assert info["train_tokens"] == (len(full) - n_val) * 128
    assert info["train_origin"] == info["val_origin"] and info["train_origin"].endswith("ptb.valid.txt")


def test_lm_separate_splits_and_max_samples(tok, tiny_tokenizer):
    dm = _lm(tok, train_split="validation", val_split="test", max_train_samples=5, max_val_samples=3)
    valid = evaluation_windows("ptb", tiny_tokenizer, seqlen=128, split="validation", max_windows=5)
    test = evaluation_windows("ptb", tiny_tokenizer, seqlen=128, split="test", max_windows=3)
    assert torch.equal(dm.train_ids, valid.input_ids) and torch.equal(dm.val_ids, test.input_ids)
    info = dm.describe()
    assert info["held_out"] is False and info["val_fraction"] is None
    assert info["train_origin"].endswith("ptb.valid.txt") and info["val_origin"].endswith("ptb.test.txt")


def test_lm_max_samples_apply_after_the_hold_out(tok, held):
    full = held
    capped = _lm(
        tok, train_split="validation", val_split="validation", max_train_samples=4, max_val_samples=2
    )
    assert torch.equal(capped.train_ids, full.train_ids[:4])
    assert torch.equal(capped.val_ids, full.val_ids[:2])


def test_lm_shuffle_is_seeded(tok, small_text):
    def order(seed: int, shuffle: bool = True) -> torch.Tensor:
        dm = _lm(tok, corpus=small_text, block_size=32, seed=seed, shuffle=shuffle, batch_size=3)
        return _all(dm.train_dataloader())["input_ids"]

    first, again, other = order(0), order(0), order(1)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert not torch.equal(first, order(0, shuffle=False))
    torch.manual_seed(123)  # the order does not depend on the global generator
    assert torch.equal(first, order(0))


def test_lm_local_file_is_always_held_out(tok, small_text):
    dm = _lm(tok, corpus=small_text, train_split="train", val_split="validation", block_size=64)
    assert dm.describe()["held_out"] is True
    rows = {tuple(r.tolist()) for r in dm.train_ids}
    assert not rows & {tuple(r.tolist()) for r in dm.val_ids}


def test_batches_feed_a_causal_lm(tok, held):
    """Both batch layouts give the model's own loss; the QA loss is the mean over answer tokens only."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tok).eval()
    with torch.no_grad():
        assert torch.isfinite(model(**next(iter(held.val_dataloader()))).loss)
        qa = _qa(tok, max_train_samples=2, max_val_samples=3, batch_size=3)
        batch = next(iter(qa.val_dataloader()))
        out = model(**batch)
        logits, labels = out.logits[:, :-1], batch["labels"][:, 1:]
        keep = labels != IGNORE_INDEX
        expected = torch.nn.functional.cross_entropy(logits[keep], labels[keep])
    assert torch.allclose(out.loss, expected, atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"block_size": 1}, "block_size"),
        ({"batch_size": 0}, "batch_size"),
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"max_train_samples": 0}, "max_train_samples"),
        ({"max_val_samples": 0}, "max_val_samples"),
        ({"train_split": "dev2"}, "unknown split"),
    ],
)
def test_lm_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        LanguageModelingDataModule(**kwargs)


def test_lm_too_few_tokens(tok, tiny_tokenizer, tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("a short text " * 20)
    tokens = len(tiny_tokenizer(path.read_text())["input_ids"])
    with pytest.raises(DataError, match=rf"has {tokens} tokens, fewer than one training block.*lower block"):
        _lm(tok, corpus=str(path), block_size=tokens + 1)
    with pytest.raises(DataError, match=rf"1 block\(s\) of block_size {tokens}.*leaves none.*lower block"):
        _lm(tok, corpus=str(path), block_size=tokens)
    assert _lm(tok, corpus=str(path), block_size=tokens // 2).describe()["train_blocks"] == 1
    root = tmp_path / "root"
    (root / "ptb").mkdir(parents=True)
    (root / "ptb" / "ptb.valid.txt").write_text((SHARED_DATA / "ptb" / "ptb.valid.txt").read_text()[:5000])
    (root / "ptb" / "ptb.test.txt").write_text("too short\n")
    with pytest.raises(DataError, match="split 'test'.*fewer than one validation block"):
        _lm(tok, train_split="validation", val_split="test", block_size=64, data_root=str(root))


def test_lm_needs_a_tokenizer():
    with pytest.raises(ConfigError, match="no tokenizer"):
        LanguageModelingDataModule("ptb").setup("fit")


# ----------------------------------------------------------------------------------------------------------
# Instruction QA


def _qa(tok: str, **kwargs) -> InstructionDataModule:
    kwargs = {"train_split": "validation", "val_split": "validation", "tokenizer": tok, **kwargs}
    dm = InstructionDataModule(**kwargs)
    dm.setup("fit")
    return dm


def _check_rows(batch, examples, tiny_tokenizer, template=None):
    for row, example in enumerate(examples):
        ids, mask, labels = batch["input_ids"][row], batch["attention_mask"][row], batch["labels"][row]
        n = int(mask.sum())
        assert mask[:n].all() and not mask[n:].any()  # right padding
        assert (labels[n:] == IGNORE_INDEX).all() and (ids[n:] == tiny_tokenizer.pad_token_id).all()
        supervised = (labels != IGNORE_INDEX).nonzero().flatten()
        start = int(supervised[0])
        assert supervised.tolist() == list(range(start, n))  # one run: the answer and eos, to the end
        assert torch.equal(labels[start:n], ids[start:n])
        assert tiny_tokenizer.decode(labels[start:n]) == " " + example.answer + EOS
        if template is not None:  # untruncated: the masked part is exactly the tokenised prompt
            prompt = template.format(context=example.context, question=example.question)
            assert ids[:start].tolist() == tiny_tokenizer(prompt)["input_ids"]


def test_qa_labels_mask_prompt_and_padding(tok, tiny_tokenizer):
    dm = _qa(tok, max_train_samples=8, max_val_samples=6, batch_size=3, max_length=1024)
    template = dm.template
    batches = list(dm.val_dataloader())
    assert all(set(b) == {"input_ids", "attention_mask", "labels"} for b in batches)
    assert batches[0]["input_ids"].shape[1] == int(batches[0]["attention_mask"].sum(1).max())
    for index, batch in enumerate(batches):
        _check_rows(batch, dm.val_examples[index * 3 : index * 3 + 3], tiny_tokenizer, template)
    info = dm.describe()
    assert (info["train_examples"], info["val_examples"]) == (8, 6)
    assert info["val_truncated"] == 0 and info["val_dropped"] == 0
    assert info["val_answer_tokens"] == int(sum((b["labels"] != IGNORE_INDEX).sum() for b in batches))


def _all_qa(loader, pad_id: int) -> dict[str, torch.Tensor]:
    """Every batch of a loader, unpadded and padded again as one batch."""
    items = []
    for batch in loader:
        for row in range(batch["input_ids"].shape[0]):
            n = int(batch["attention_mask"][row].sum())
            items.append({"input_ids": batch["input_ids"][row][:n], "labels": batch["labels"][row][:n]})
    return PadCollator(pad_id)(items)


def test_qa_truncation_keeps_question_and_answer(tok, tiny_tokenizer):
    dm = _qa(tok, max_train_samples=4, max_val_samples=24, max_length=160)
    info = dm.describe()
    assert info["val_truncated"] > 0
    batch = _all_qa(dm.val_dataloader(), tiny_tokenizer.pad_token_id)
    assert batch["attention_mask"].sum(1).max() <= 160
    _check_rows(batch, dm.val_examples, tiny_tokenizer)
    for row, example in enumerate(dm.val_examples):
        n = int(batch["attention_mask"][row].sum())
        text = tiny_tokenizer.decode(batch["input_ids"][row][:n])
        assert text.startswith("Context: ")
        assert text.endswith(f"\nQuestion: {example.question}\nAnswer: {example.answer}{EOS}")


def test_qa_examples_too_long_for_max_length(tok):
    with pytest.raises(DataError, match="fits max_length 8.*raise max_length"):
        _qa(tok, max_train_samples=4, max_val_samples=4, max_length=8)


def test_qa_same_split_holds_out_the_last_articles(tok):
    dm = _qa(tok, max_train_samples=64, max_val_samples=32)
    data = json.loads((SHARED_DATA / "squad" / "dev-v1.1.json").read_text())["data"]
    titles = [article["title"] for article in data]
    n_val = math.ceil(0.1 * len(titles))
    train = {e.article.split(":", 1)[1] for e in dm.train_examples}
    val = {e.article.split(":", 1)[1] for e in dm.val_examples}
    assert not train & val
    assert val <= set(titles[-n_val:]) and train <= set(titles[:-n_val])
    assert not {e.context for e in dm.train_examples} & {e.context for e in dm.val_examples}
    info = dm.describe()
    assert info["held_out"] is True and info["val_articles"] == len(val) <= n_val
    assert info["train_origin"] == info["val_origin"] and info["train_origin"].endswith("dev-v1.1.json")


def test_qa_samples_and_order_are_seeded(tok):
    def order(seed: int) -> tuple[list[str], torch.Tensor]:
        dm = _qa(tok, max_train_samples=12, max_val_samples=2, batch_size=12, seed=seed)
        return [e.question for e in dm.train_examples], next(iter(dm.train_dataloader()))["input_ids"]

    (questions, first), (questions_again, again), (other_questions, _) = order(0), order(0), order(1)
    assert questions == questions_again and questions != other_questions
    assert torch.equal(first, again)


def test_qa_local_jsonl_holds_out_by_title(tok, tiny_tokenizer, tmp_path):
    path = tmp_path / "qa.jsonl"
    records = [
        {
            "title": f"t{a}",
            "context": f"Paragraph {a} says the colour is {c}.",
            "question": "Which colour?",
            "answers": {"text": [c], "answer_start": [0]},
        }
        for a, c in enumerate(["red", "blue", "green", "gold", "grey"])
        for _ in range(2)
    ]
    records.append({"title": "t4", "context": "Another paragraph.", "question": "What?", "answer": "this"})
    path.write_text("\n".join(json.dumps(r) for r in records))
    dm = _qa(
        tok,
        dataset=str(path),
        train_split="train",
        val_split="validation",
        val_fraction=0.2,
        batch_size=8,
        shuffle=False,
    )
    assert {e.article for e in dm.val_examples} == {"t4"} and len(dm.val_examples) == 3
    assert {e.article for e in dm.train_examples} == {"t0", "t1", "t2", "t3"}
    _check_rows(next(iter(dm.val_dataloader())), dm.val_examples, tiny_tokenizer, dm.template)


def test_qa_offline_train_split_is_missing(tok):
    with pytest.raises(DataError, match="squad split 'train' is not available.*both to validation"):
        _qa(tok, train_split="train")


def test_pad_collator_pads_right_and_masks_labels():
    items = [
        {"input_ids": torch.tensor([5, 6, 7]), "labels": torch.tensor([IGNORE_INDEX, 6, 7])},
        {"input_ids": torch.tensor([8]), "labels": torch.tensor([8])},
    ]
    batch = PadCollator(0)(items)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dataset": "natural_questions"}, "unknown instruction dataset"),
        ({"template": "Question: {question}\nAnswer:"}, "template"),
        ({"template": "{context} {context} {question}"}, "template"),
        ({"template": "{context} {question} {title}"}, "template"),
        ({"max_length": 1}, "max_length"),
        ({"batch_size": 0}, "batch_size"),
        ({"val_fraction": 1.5}, "val_fraction"),
        ({"max_train_samples": 0}, "max_train_samples"),
        ({"max_val_samples": -1}, "max_val_samples"),
    ],
)
def test_qa_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        InstructionDataModule(**kwargs)


def test_qa_file_errors(tok, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        _qa(tok, dataset=str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"context": "c", "question": "q"}))
    with pytest.raises(DataError, match=r"bad.jsonl:1: no 'answer'"):
        _qa(tok, dataset=str(bad))
    single = tmp_path / "one.jsonl"
    single.write_text(json.dumps({"context": "c", "question": "q", "answer": "a"}))
    with pytest.raises(DataError, match=r"1 article\(s\).*leaves none"):
        _qa(tok, dataset=str(single))
