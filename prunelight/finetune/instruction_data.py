"""SQuAD-style instruction QA for recovery fine-tuning: the loss on the answer tokens only."""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Formatter
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset
from transformers import PreTrainedTokenizerBase

from prunelight.data.batches import IGNORE_INDEX, evaluation_loader
from prunelight.data.corpora import NAMED, canonical_split, squad_records
from prunelight.data.datamodule import datamodule_tokenizer
from prunelight.data.root import ENV, data_root
from prunelight.errors import ConfigError, DataError
from prunelight.finetune.data_common import check_common, held_out_count, seeded_generator
from prunelight.hub import hub_status

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QAExample:
    """One question with its paragraph and first answer; ``article`` groups paragraphs for the hold-out."""

    context: str
    question: str
    answer: str
    article: str


def _squad_json_examples(path: Path) -> list[QAExample]:
    """SQuAD v1.1 layout, keeping the article; SQuAD v2 unanswerables have nothing to learn."""
    examples = [QAExample(c, q, a, article) for c, q, a, article in squad_records(path) if a.strip()]
    if not examples:
        raise DataError(f"{path}: no answered questions found")
    return examples


def _first_answer(record: dict[str, Any]) -> str | None:
    answer = record.get("answer")
    if answer is None:
        answers = record.get("answers")
        if isinstance(answers, dict):  # the hub's layout: {"text": [...], "answer_start": [...]}
            answers = answers.get("text")
        answer = (answers or [None])[0]
        if isinstance(answer, dict):  # the JSON file's layout: [{"text": ..., "answer_start": ...}]
            answer = answer.get("text")
    return answer if isinstance(answer, str) else None


def _jsonl_examples(path: Path) -> list[QAExample]:
    """One record per line with ``context``, ``question`` and ``answer`` (or SQuAD ``answers``); ``title``
    groups records into articles, else each paragraph is its own article."""
    examples = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{where}: not JSON ({err})") from None
            if not isinstance(record, dict) or not all(
                isinstance(record.get(k), str) for k in ("context", "question")
            ):
                raise DataError(f"{where}: expected an object with text fields 'context' and 'question'")
            answer = _first_answer(record)
            if answer is None:
                raise DataError(f"{where}: no 'answer' text (or SQuAD 'answers') field")
            if answer.strip():
                article = str(record.get("title") or record["context"])
                examples.append(QAExample(record["context"], record["question"], answer, article))
    if not examples:
        raise DataError(f"{path}: no answered questions found")
    return examples


def _hub_squad_examples(hub_path: str, split: str) -> list[QAExample]:
    import datasets

    rows = datasets.load_dataset(hub_path, split=split)
    return [
        QAExample(r["context"], r["question"], answer, r["title"])
        for r in rows
        if (answer := (r["answers"]["text"] or [""])[0]).strip()
    ]


def load_qa_examples(dataset: str, split: str, root: str | Path | None = None) -> tuple[list[QAExample], str]:
    """The examples of one split and where they came from (``hub:...`` or a file path).

    ``squad`` tries the hub (``rajpurkar/squad``) unless it is switched off, then
    ``<data root>/squad/{train,dev}-v1.1.json``; a local ``.json`` (SQuAD layout) or ``.jsonl`` file has
    no splits and gives the same examples for every split.
    """
    if dataset != "squad":
        path = Path(dataset).expanduser()
        if not path.is_file():
            raise DataError(f"instruction dataset file {path} does not exist")
        if path.name.lower().endswith(".jsonl"):
            return _jsonl_examples(path), str(path)
        return _squad_json_examples(path), str(path)
    named = NAMED["squad"]
    split = canonical_split(split)
    hub_split = named.hub_splits[split]
    hub = hub_status()
    hub_error = hub.describe()
    if hub.reachable:
        try:
            return _hub_squad_examples(named.hub_path, hub_split), f"hub:{named.hub_path}:{hub_split}"
        except Exception as err:  # any hub failure falls back to the data root, reported if that fails too
            hub_error = f"the hub failed ({type(err).__name__}: {str(err)[:200]})"
            log.info("squad: %s; trying the data root", hub_error)
    folder = data_root(root) / "squad"
    local_split = "validation" if split == "test" else split
    candidates = named.local.get(local_split, ())
    for pattern in candidates:
        matches = sorted(folder.glob(pattern))
        if matches:
            return _squad_json_examples(matches[0]), str(matches[0])
    looked = ", ".join(str(folder / p) for p in candidates)
    raise DataError(
        f"squad split {split!r} is not available: {hub_error}, and no local copy was found (looked for "
        f"{looked}); put the file there (or point {ENV} / data_root at it), or set train_split and "
        "val_split both to validation, which holds out its last articles for validation"
    )


def _template_fields(template: str) -> list[str]:
    try:
        return [name for _, name, _, _ in Formatter().parse(template) if name is not None]
    except ValueError as err:
        raise ConfigError(f"template {template!r} is not a format string ({err})") from None


@dataclass(frozen=True)
class _Encoded:
    input_ids: list[int]
    prompt_tokens: int
    truncated: bool
    answer_cut: bool
    """The context was truncated and the answer's text is no longer in what is left of it."""


class QAEncoder:
    """Turns an example into ``prompt + " " + answer + eos`` token ids, with the prompt length.

    Prompt and answer are tokenised separately and concatenated, so that the boundary between the masked
    prompt and the supervised answer is exact. For byte-level BPE tokenizers (GPT-2, Llama 3, Qwen,
    SmolLM) ``" " + answer`` tokenises as the answer does after the prompt; SentencePiece tokenizers that add
    a prefix space may give the answer a doubled space token.

    When ``prompt + answer + eos`` exceeds ``max_length``, only the context is shortened: its first tokens
    are dropped (the end, next to the question, is kept), so that the template, the question and the whole
    answer always fit. Those prompts are tokenised in three pieces (before, inside and after the context),
    which can differ from the unbroken tokenisation at the two seams. An example whose question, template
    and answer alone exceed ``max_length`` is dropped.
    """

    MARK = "\x00context\x00"

    def __init__(self, tokenizer: PreTrainedTokenizerBase, template: str, max_length: int) -> None:
        if tokenizer.eos_token_id is None:
            raise ConfigError(
                "the tokenizer has no eos token; the answer must end with one so that the model learns "
                "to stop; use a tokenizer with an eos token"
            )
        self.tokenizer, self.template, self.max_length = tokenizer, template, max_length
        self.eos_id: int = tokenizer.eos_token_id
        self.pad_id: int = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id

    def prompt(self, example: QAExample) -> str:
        return self.template.format(context=example.context, question=example.question)

    def _ids(self, texts: list[str], special: bool) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=special, return_attention_mask=False, verbose=False)[
            "input_ids"
        ]

    def encode(self, examples: Sequence[QAExample]) -> list[_Encoded | None]:
        """One entry per example, None where even an empty context does not fit."""
        if not examples:
            return []
        prompts = self._ids([self.prompt(e) for e in examples], special=True)
        answers = self._ids([" " + e.answer for e in examples], special=False)
        out: list[_Encoded | None] = []
        for example, prompt, answer in zip(examples, prompts, answers, strict=True):
            tail = [*answer, self.eos_id]
            if len(prompt) + len(tail) <= self.max_length:
                out.append(_Encoded(prompt + tail, len(prompt), False, False))
            else:
                out.append(self._truncated(example, tail))
        return out

    def _truncated(self, example: QAExample, tail: list[int]) -> _Encoded | None:
        before, after = self.template.format(context=self.MARK, question=example.question).split(self.MARK)
        head = self._ids([before], special=True)[0]
        context, rest = self._ids([example.context, after], special=False)
        keep = self.max_length - len(head) - len(rest) - len(tail)
        if keep < 0:
            return None
        kept = context[len(context) - keep :]
        prompt = head + kept + rest
        cut = example.answer not in self.tokenizer.decode(kept)
        return _Encoded(prompt + tail, len(prompt), True, cut)


class _QADataset(Dataset):
    def __init__(self, encoded: list[_Encoded]) -> None:
        self.encoded = encoded

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = self.encoded[index]
        ids = torch.tensor(item.input_ids, dtype=torch.long)
        labels = ids.clone()
        labels[: item.prompt_tokens] = IGNORE_INDEX
        return {"input_ids": ids, "labels": labels}


@dataclass(frozen=True)
class PadCollator:
    """Right-pads a batch to its longest sequence; a class, not a closure, so that workers can pickle it."""

    pad_id: int

    def __call__(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        length = max(item["input_ids"].numel() for item in items)
        input_ids = torch.full((len(items), length), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(items), length), dtype=torch.long)
        labels = torch.full((len(items), length), IGNORE_INDEX, dtype=torch.long)
        for row, item in enumerate(items):
            n = item["input_ids"].numel()
            input_ids[row, :n] = item["input_ids"]
            attention_mask[row, :n] = 1
            labels[row, :n] = item["labels"]
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


@dataclass
class _QASplit:
    examples: list[QAExample]
    encoded: list[_Encoded]
    origin: str
    articles: int
    dropped: int

    def stats(self) -> dict[str, Any]:
        return {
            "articles": self.articles,
            "examples": len(self.encoded),
            "tokens": sum(len(e.input_ids) for e in self.encoded),
            "answer_tokens": sum(len(e.input_ids) - e.prompt_tokens for e in self.encoded),
            "truncated": sum(e.truncated for e in self.encoded),
            "answer_cut": sum(e.answer_cut for e in self.encoded),
            "dropped": self.dropped,
        }


class InstructionDataModule(L.LightningDataModule):
    """Extractive QA as instructions (SQuAD v1.1): the loss is on the answer and eos only.

    A sequence is ``template(context, question)`` + ``" " + answer`` + eos; labels are ``-100`` on the
    prompt and on padding. Batches are right-padded dicts of ``input_ids``, ``attention_mask`` and
    ``labels``. Too-long prompts lose the start of their context (see :class:`QAEncoder`).

    Args:
        dataset: ``squad``, or a local ``.json`` file in SQuAD layout or ``.jsonl`` file with ``context``,
            ``question``, ``answer`` (or ``answers``) and optionally ``title`` fields. A local file has no
            splits, so its articles are always held out.
        train_split: split to train on.
        val_split: split to validate on; when it is the same data as ``train_split``, the last
            ``ceil(val_fraction * articles)`` articles are held out, so that no paragraph is in both.
        template: prompt with ``{context}`` (once) and ``{question}``; it should not end with whitespace,
            since the answer brings its own leading space.
        max_length: most tokens per sequence.
        max_train_samples: train on a seeded random sample of N questions (SQuAD is grouped by article,
            so its first N questions would cover only a few articles).
        max_val_samples: validate on a seeded random sample of N questions.
        val_fraction: share of the articles held out when train and validation share their data.
        batch_size: sequences per batch.
        shuffle: shuffle the training examples (validation is never shuffled, nor repeated across ranks:
            each validation batch is scored on one rank, as :class:`LanguageModelingDataModule` does).
        data_root: where ``squad/`` lives without the hub (default ``$PRUNELIGHT_DATA``).
        tokenizer: a tokenizer to load (path, hub id or zoo name); None uses the trainer's model's.
        num_workers: dataloader workers.
        seed: seeds the samples and the training order, independently of the global seed.
    """

    def __init__(
        self,
        dataset: str = "squad",
        train_split: str = "train",
        val_split: str = "validation",
        template: str = "Context: {context}\nQuestion: {question}\nAnswer:",
        max_length: int = 512,
        max_train_samples: int | None = None,
        max_val_samples: int | None = None,
        val_fraction: float = 0.1,
        batch_size: int = 4,
        shuffle: bool = True,
        data_root: str | None = None,
        tokenizer: str | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if dataset != "squad" and not dataset.lower().endswith((".json", ".jsonl")):
            raise ConfigError(
                f"unknown instruction dataset {dataset!r}; use squad, or a local .json file in SQuAD layout "
                "or .jsonl file with context, question and answer fields"
            )
        fields = _template_fields(template)
        if sorted(fields) != ["context", "question"]:
            raise ConfigError(
                f"template must hold {{context}} once and {{question}} once and no other field, got fields "
                f"{fields}; e.g. 'Context: {{context}}\\nQuestion: {{question}}\\nAnswer:'"
            )
        if max_length < 2:
            raise ConfigError(f"max_length must be at least 2 tokens, got {max_length}")
        check_common(batch_size, val_fraction, max_train_samples, max_val_samples)
        self.dataset, self.template, self.max_length = dataset, template, max_length
        self.train_split, self.val_split = canonical_split(train_split), canonical_split(val_split)
        self.max_train_samples, self.max_val_samples = max_train_samples, max_val_samples
        self.val_fraction, self.batch_size, self.shuffle, self.seed = val_fraction, batch_size, shuffle, seed
        self.data_root, self.tokenizer_path, self.num_workers = data_root, tokenizer, num_workers
        self.held_out = False
        self.train: _QASplit | None = None
        self.val: _QASplit | None = None
        self.collate: PadCollator | None = None

    @property
    def train_examples(self) -> list[QAExample]:
        """The training examples, in the order of the (unshuffled) training dataset."""
        if self.train is None:
            raise RuntimeError("setup() first")
        return self.train.examples

    @property
    def val_examples(self) -> list[QAExample]:
        """The validation examples, in the order of the validation batches."""
        if self.val is None:
            raise RuntimeError("setup() first")
        return self.val.examples

    def setup(self, stage: str | None = None) -> None:
        if self.train is not None:
            return
        encoder = QAEncoder(datamodule_tokenizer(self, self.tokenizer_path), self.template, self.max_length)
        self.collate = PadCollator(encoder.pad_id)
        train, train_origin = load_qa_examples(self.dataset, self.train_split, self.data_root)
        val, val_origin = train, train_origin
        if self.val_split != self.train_split:
            val, val_origin = load_qa_examples(self.dataset, self.val_split, self.data_root)
        self.held_out = train_origin == val_origin
        if self.held_out:
            train, val = self._hold_out(train, train_origin)
        self.train = self._prepare(encoder, train, train_origin, self.max_train_samples, "training", 0)
        self.val = self._prepare(encoder, val, val_origin, self.max_val_samples, "validation", 1)

    def _hold_out(self, examples: list[QAExample], origin: str) -> tuple[list[QAExample], list[QAExample]]:
        articles = list(dict.fromkeys(e.article for e in examples))
        n_val = held_out_count(self.val_fraction, len(articles))
        if len(articles) - n_val < 1:
            raise DataError(
                f"{origin} has {len(articles)} article(s): holding out {n_val} for validation leaves none to "
                "train on; use a dataset with more articles or a separate val_split"
            )
        held = set(articles[len(articles) - n_val :])
        return [e for e in examples if e.article not in held], [e for e in examples if e.article in held]

    def _prepare(
        self,
        encoder: QAEncoder,
        examples: list[QAExample],
        origin: str,
        limit: int | None,
        role: str,
        stream: int,
    ) -> _QASplit:
        if limit is not None and limit < len(examples):
            rng = random.Random(f"{self.seed}/{stream}")
            examples = [examples[i] for i in sorted(rng.sample(range(len(examples)), limit))]
        encoded = encoder.encode(examples)
        kept = [(e, x) for e, x in zip(examples, encoded, strict=True) if x is not None]
        if not kept:
            raise DataError(
                f"no {role} example of {origin} fits max_length {self.max_length} (the template, question "
                "and answer alone are longer); raise max_length"
            )
        return _QASplit(
            [e for e, _ in kept],
            [x for _, x in kept if x is not None],
            origin,
            len({e.article for e, _ in kept}),
            len(examples) - len(kept),
        )

    def describe(self) -> dict[str, Any]:
        """What the recovery trained and validated on, for the run's report."""
        if self.train is None or self.val is None:
            raise RuntimeError("describe() needs setup() first")
        out: dict[str, Any] = {
            "task": "instruction",
            "dataset": self.dataset,
            "train_origin": self.train.origin,
            "val_origin": self.val.origin,
            "train_split": self.train_split,
            "val_split": self.val_split,
            "held_out": self.held_out,
            "val_fraction": self.val_fraction if self.held_out else None,
            "template": self.template,
            "max_length": self.max_length,
        }
        for prefix, split in (("train", self.train), ("val", self.val)):
            out.update({f"{prefix}_{key}": value for key, value in split.stats().items()})
        out.update(
            max_train_samples=self.max_train_samples,
            max_val_samples=self.max_val_samples,
            batch_size=self.batch_size,
            shuffle=self.shuffle,
            seed=self.seed,
        )
        return out

    def train_dataloader(self) -> DataLoader:
        if self.train is None:
            raise RuntimeError("train_dataloader() needs setup() first")
        return DataLoader(
            _QADataset(self.train.encoded),
            batch_size=self.batch_size,
            shuffle=self.shuffle,
            generator=seeded_generator(self.seed) if self.shuffle else None,
            collate_fn=self.collate,
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader:
        if self.val is None:
            raise RuntimeError("val_dataloader() needs setup() first")
        return evaluation_loader(
            _QADataset(self.val.encoded), self.batch_size, self.trainer, self.collate, self.num_workers
        )
