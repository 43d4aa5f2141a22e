"""The corpus registry: named corpora, local files, hub datasets, and how each becomes a list of texts.

A named corpus tries the hub through ``datasets`` first and falls back to the data root (see
:mod:`prunelight.data.root`); ``HF_HUB_OFFLINE=1`` or ``HF_DATASETS_OFFLINE=1`` skip the hub. The texts are
joined with the corpus's separator into one running text before tokenisation, which for WikiText-2 and PTB
reproduces the preprocessing of GPTQ / SparseGPT / Wanda / LLM-Pruner exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunelight.data.readers import SUPPORTED_SUFFIXES, read_documents, suffix_of, unreadable_text
from prunelight.data.root import ENV, data_root
from prunelight.errors import ConfigError, DataError
from prunelight.hub import hub_status

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
_SPLIT_ALIASES = {"valid": "validation", "val": "validation", "dev": "validation", "eval": "validation"}
SQUAD_FORMATS = ("context", "context_question", "prompt")


def canonical_split(split: str) -> str:
    split = _SPLIT_ALIASES.get(split, split)
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; use train, validation (valid, dev) or test")
    return split


@dataclass(frozen=True)
class CorpusSpec:
    """One corpus as a user names it.

    Args:
        name: a registered name (``wikitext2``, ``ptb``, ``c4``, ``wikitext_zh``, ``c4_zh``, ``squad``), a
            local file (``.txt``, ``.jsonl``, ``.json``, ``.parquet``), or ``hf:<dataset id>`` for any hub
            dataset with a text field. ``squad:prompt`` is shorthand for ``name=squad, format=prompt``.
        split: overrides the split asked for by the caller (calibration uses train, evaluation test).
        weight: share of the calibration windows in a mixture (normalised over the mixture).
        format: SQuAD only: ``context`` (each paragraph once), ``context_question`` (paragraph, newline,
            question), or ``prompt`` (``Context: ...\\nQuestion: ...\\nAnswer: ...``).
        text_field: the field holding the text in jsonl/json/parquet files and hub datasets.
        config: hub dataset configuration name (``hf:`` corpora).
        per_line: ``.txt`` files only: one document per non-blank line instead of one per file.
        documents: ``[start, stop]``, fractions of the split: keep only its documents from ``start`` to
            ``stop`` in file order (SQuAD: whole articles). Two disjoint parts of one split let calibration
            and evaluation share a corpus that has a single split without sharing text, e.g. SQuAD dev
            offline: ``[0, 0.5]`` to calibrate, ``[0.5, 1]`` to evaluate.
    """

    name: str
    split: str | None = None
    weight: float = 1.0
    format: str | None = None
    text_field: str = "text"
    config: str | None = None
    per_line: bool = False
    documents: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.documents is not None:
            start, stop = (float(x) for x in self.documents)
            if not 0 <= start < stop <= 1:
                raise ConfigError(
                    f"corpus {self.name!r}: documents must be [start, stop] with 0 <= start < stop <= 1 "
                    f"(fractions of the split), got {list(self.documents)}"
                )
            object.__setattr__(self, "documents", (start, stop))
        if not 0 < self.weight < float("inf"):
            raise ConfigError(f"corpus {self.name!r}: weight must be > 0 and finite, got {self.weight}")
        if self.format is not None and self.format not in SQUAD_FORMATS:
            raise ConfigError(
                f"corpus {self.name!r}: format {self.format!r} is not one of {', '.join(SQUAD_FORMATS)}"
            )

    @property
    def label(self) -> str:
        """A short name for metric keys and reports."""
        base = (
            Path(self.name).stem
            if _is_file_name(self.name)
            else self.name.removeprefix("hf:").replace("/", "_")
        )
        label = f"{base}_{self.format}" if self.format else base
        return f"{label}_{self.documents[0]:g}-{self.documents[1]:g}" if self.documents else label


def part_of(items: list, spec: CorpusSpec, what: str = "documents") -> list:
    """The items from fraction ``start`` to ``stop`` of ``spec.documents`` (all of them without it);
    consecutive parts (``[0, 0.5]``, ``[0.5, 1]``) split the list without overlap or gap."""
    if spec.documents is None:
        return items
    n = len(items)
    part = items[round(spec.documents[0] * n) : round(spec.documents[1] * n)]
    if n and not part:
        raise DataError(
            f"corpus {spec.name!r}: documents {list(spec.documents)} of its {n} {what} selects none; "
            "widen the part (a corpus of one document cannot be split)"
        )
    return part


def as_spec(corpus: str | CorpusSpec | dict[str, Any]) -> CorpusSpec:
    """Accept the YAML-friendly forms: a string, a mapping, or a :class:`CorpusSpec`."""
    if isinstance(corpus, CorpusSpec):
        return corpus
    if isinstance(corpus, dict):
        return CorpusSpec(**corpus)
    name, _, fmt = corpus.partition(":") if corpus.startswith("squad:") else (corpus, "", "")
    return CorpusSpec(name=name, format=fmt or None)


@dataclass(frozen=True)
class Corpus:
    """Texts of one split, ready to be joined and tokenised."""

    label: str
    texts: list[str]
    join: str
    ordered: bool
    """True for running texts (WikiText-2, PTB): their order carries meaning and is never shuffled."""
    origin: str
    """Where the texts came from (``hub:...`` or a file path), for the reports."""

    def running_text(self, texts: list[str] | None = None) -> str:
        return self.join.join(self.texts if texts is None else texts)


# ----------------------------------------------------------------------------------------------------------
# Named corpora


def _wikitext_rows(text: str) -> list[str]:
    # The hub's wikitext-2-raw-v1 has one row per line of the raw file, newline kept, blank lines as "".
    return [line if line.strip() else "" for line in text.splitlines(keepends=True)]


def _stripped_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


@dataclass(frozen=True)
class NamedCorpus:
    name: str
    description: str
    hub_path: str
    local: dict[str, tuple[str, ...]]
    """Split -> candidate file names (globs) under ``<data root>/<name>/``; the first that exists is used."""
    join: str = "\n\n"
    ordered: bool = False
    hub_config: str | None = None
    hub_splits: dict[str, str] = field(default_factory=lambda: {s: s for s in SPLITS})
    hub_data_files: dict[str, str] | None = None
    text_field: str = "text"
    text_rows: Callable[[str], list[str]] | None = None
    """How a local ``.txt``/``.raw`` file splits into rows (None: one document per non-blank line)."""
    squad_layout: bool = False
    """Records are SQuAD question/paragraph records, turned into text by ``CorpusSpec.format``."""

    def local_split(self, split: str) -> str:
        """The local split serving ``split``: ``test`` is the validation file where no test file exists."""
        return "validation" if split == "test" and "test" not in self.local else split


NAMED: dict[str, NamedCorpus] = {
    c.name: c
    for c in (
        NamedCorpus(
            "wikitext2",
            "WikiText-2 raw (wikitext-2-raw-v1)",
            "Salesforce/wikitext",
            hub_config="wikitext-2-raw-v1",
            local={
                "train": ("wiki.train.raw",),
                "validation": ("wiki.valid.raw",),
                "test": ("wiki.test.raw",),
            },
            ordered=True,
            text_rows=_wikitext_rows,
        ),
        NamedCorpus(
            "ptb",
            "Penn Treebank (Mikolov's text-only version)",
            "ptb-text-only/ptb_text_only",
            hub_config="penn_treebank",
            local={"train": ("ptb.train.txt",), "validation": ("ptb.valid.txt",), "test": ("ptb.test.txt",)},
            join=" ",
            ordered=True,
            text_field="sentence",
            text_rows=_stripped_lines,
        ),
        NamedCorpus(
            "c4",
            "C4 English (first train shard / first validation shard); test means validation",
            "allenai/c4",
            hub_splits={"train": "train", "validation": "validation", "test": "validation"},
            hub_data_files={
                "train": "en/c4-train.00000-of-01024.json.gz",
                "validation": "en/c4-validation.00000-of-00008.json.gz",
            },
            local={
                "train": ("c4-train.00000-of-01024.json*", "c4_en_redpajama_sample1.jsonl"),
                "validation": ("c4-validation.00000-of-00008.json*", "c4_en_redpajama_sample2.jsonl"),
            },
        ),
        NamedCorpus(
            "c4_zh",
            "Chinese web text (mC4 zh on the hub; CLUECorpusSmall / THUCNews locally); test means validation",
            "allenai/c4",
            hub_splits={"train": "train", "validation": "validation", "test": "validation"},
            hub_data_files={
                "train": "multilingual/c4-zh.tfrecord-00000-of-01024.json.gz",
                "validation": "multilingual/c4-zh-validation.tfrecord-00000-of-00008.json.gz",
            },
            local={
                "train": ("c4-zh-train*.json*", "CLUECorpusSmall_sampled.txt"),
                "validation": ("c4-zh-validation*.json*", "thucnews_cnews_1000.jsonl"),
            },
        ),
        NamedCorpus(
            "wikitext_zh",
            "Chinese Wikipedia (one article per line locally); train only",
            "pleisto/wikipedia-cn-20230720-filtered",
            hub_splits={"train": "train"},
            text_field="completion",
            local={"train": ("zhwiki*.txt", "zhwiki*.jsonl")},
        ),
        NamedCorpus(
            "squad",
            "SQuAD v1.1 (formats: context, context_question, prompt); test means validation (dev)",
            "rajpurkar/squad",
            hub_splits={"train": "train", "validation": "validation", "test": "validation"},
            local={"train": ("train-v1.1.json",), "validation": ("dev-v1.1.json",)},
            squad_layout=True,
        ),
    )
}


def known_corpora() -> list[str]:
    return sorted(NAMED)


def load_corpus(corpus: str | CorpusSpec | dict, split: str, root: str | Path | None = None) -> Corpus:
    """The texts of ``split`` of one corpus (``spec.split`` wins over ``split``)."""
    spec = as_spec(corpus)
    split = canonical_split(spec.split or split)
    if spec.name.startswith("hf:"):
        return _load_hub_dataset(spec, split)
    if spec.name in NAMED:
        return _load_named(NAMED[spec.name], spec, split, data_root(root))
    if spec.format:
        raise ConfigError(f"format is a SQuAD setting, but corpus {spec.name!r} is not squad")
    if _is_file_name(spec.name):
        path = Path(spec.name).expanduser()
        docs = part_of(read_documents(path, spec.text_field, spec.per_line), spec)
        return Corpus(
            spec.label, docs, "\n\n", ordered=not spec.per_line and len(docs) == 1, origin=str(path)
        )
    raise DataError(
        f"unknown corpus {spec.name!r}; known corpora: {', '.join(known_corpora())}; or give a local file "
        f"({', '.join(SUPPORTED_SUFFIXES)}) or hf:<dataset id> for a hub dataset with a text field"
    )


def _is_file_name(name: str) -> bool:
    return name.lower().endswith(SUPPORTED_SUFFIXES) or Path(name).expanduser().is_file()


def _load_named(named: NamedCorpus, spec: CorpusSpec, split: str, root: Path) -> Corpus:
    if named.squad_layout and spec.format is None:
        spec = CorpusSpec(**{**spec.__dict__, "format": "context"})
    elif not named.squad_layout and spec.format:
        raise ConfigError(f"format is a SQuAD setting, but corpus {spec.name!r} is not squad")
    hub_split = named.hub_splits.get(split)
    local_split = named.local_split(split)
    if hub_split is None and local_split not in named.local:
        raise DataError(
            f"corpus {named.name!r} has no {split!r} split (it has: {', '.join(named.hub_splits)})"
        )
    hub = hub_status()
    hub_error = hub.describe()
    if hub_split is not None and hub.reachable:
        try:
            texts = _documents_of(named, spec, _hub_texts(named, spec, hub_split))
            return Corpus(spec.label, texts, named.join, named.ordered, f"hub:{named.hub_path}:{hub_split}")
        except (
            Exception
        ) as err:  # any hub failure falls back to the data root, and is reported if that fails too
            hub_error = f"the hub failed ({type(err).__name__}: {str(err)[:200]})"
            log.info("corpus %s: %s; trying the data root %s", named.name, hub_error, root)
    matches = _local_copy(named, local_split, root)
    if matches:
        texts = _documents_of(named, spec, [t for path in matches for t in _local_texts(named, spec, path)])
        return Corpus(spec.label, texts, named.join, named.ordered, str(matches[0]))
    raise DataError(_not_available(named, split, local_split, root, hub_error))


def _documents_of(named: NamedCorpus, spec: CorpusSpec, texts: list[str]) -> list[str]:
    """``spec.documents`` of the split's texts (SQuAD's texts are already cut, by article)."""
    return texts if named.squad_layout else part_of(texts, spec)


def _local_copy(named: NamedCorpus, local_split: str, root: Path) -> list[Path]:
    """The files of the first local pattern of the split that exists under the data root (none: [])."""
    for pattern in named.local.get(local_split, ()):
        matches = sorted((root / named.name).glob(pattern))
        if matches:
            return matches
    return []


def _not_available(named: NamedCorpus, split: str, local_split: str, root: Path, hub_error: str) -> str:
    folder = root / named.name
    candidates = named.local.get(local_split, ())
    looked = ", ".join(str(folder / p) for p in candidates) or f"{folder} (no local layout for this split)"
    return (
        f"corpus {named.name!r} split {split!r} is not available: {hub_error}, and no local copy was found "
        f"(looked for {looked}). Put the files there, or point the data root at them with the {ENV} "
        "environment variable or the data_root setting (layout: docs/data.md)"
    )


def unavailable(corpus: str | CorpusSpec | dict, split: str, root: str | Path | None = None) -> str | None:
    """Why ``corpus`` cannot be read, found without reading it (None: it can be, as far as a cheap look
    tells): a local file that does not exist, or a named corpus with the hub unreachable and no local copy.
    Lets a run refuse a missing evaluation corpus before it calibrates, not after."""
    spec = as_spec(corpus)
    if spec.name.startswith("hf:"):
        return None  # the hub or the datasets cache decides; nothing cheap to look at
    named = NAMED.get(spec.name)
    if named is None:
        path = Path(spec.name).expanduser()
        if not _is_file_name(spec.name) or path.is_file():
            return None  # an unknown name is reported when it is loaded, with the known corpora
        return f"corpus file {path} does not exist; give an existing file or a named corpus"
    name = canonical_split(spec.split or split)
    hub = hub_status()
    if hub.reachable and name in named.hub_splits:
        return None
    local_split = named.local_split(name)
    if _local_copy(named, local_split, data_root(root)):
        return None
    return _not_available(named, name, local_split, data_root(root), hub.describe())


def _local_texts(named: NamedCorpus, spec: CorpusSpec, path: Path) -> list[str]:
    if named.squad_layout:
        return _squad_texts(squad_records(path), spec)
    if suffix_of(path) in (".txt", ".raw"):
        return (named.text_rows or _stripped_lines)(read_documents(path)[0])
    return read_documents(path, "text")


def _hub_texts(named: NamedCorpus, spec: CorpusSpec, hub_split: str) -> list[str]:
    import datasets

    kwargs: dict[str, Any] = {"split": hub_split}
    if named.hub_data_files:
        kwargs["data_files"] = {hub_split: named.hub_data_files[hub_split]}
    dataset = datasets.load_dataset(named.hub_path, named.hub_config, **kwargs)
    if named.squad_layout:
        records = [
            (r["context"], r["question"], (r["answers"]["text"] or [""])[0], r["title"]) for r in dataset
        ]
        return _squad_texts(records, spec)
    return list(dataset[named.text_field])


def _load_hub_dataset(spec: CorpusSpec, split: str) -> Corpus:
    import datasets

    path = spec.name.removeprefix("hf:")
    hub = hub_status()  # unreachable: datasets is offline and reads its cache only
    try:
        dataset = datasets.load_dataset(path, spec.config, split=split)
    except Exception as err:
        offline = "" if hub.reachable else f" ({hub.describe()}; only a cached copy could be used)"
        raise DataError(
            f"could not load hub dataset {path!r} split {split!r}{offline}: {str(err)[:300]}"
        ) from None
    if spec.text_field not in dataset.column_names:
        raise DataError(
            f"hub dataset {path!r} has no {spec.text_field!r} column "
            f"(columns: {', '.join(dataset.column_names)});"
            " set text_field"
        )
    texts = part_of(list(dataset[spec.text_field]), spec)
    return Corpus(spec.label, texts, "\n\n", False, f"hub:{path}:{split}")


# ----------------------------------------------------------------------------------------------------------
# SQuAD


def squad_records(path: Path) -> list[tuple[str, str, str, str]]:
    """(context, question, first answer or "", article) of every question of a SQuAD v1.1 JSON file; the
    article is ``"<index>:<title>"``, so instruction QA can hold out whole articles."""
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return [
            (
                para["context"],
                qa["question"],
                (qa["answers"] or [{"text": ""}])[0]["text"],
                f"{index}:{article.get('title', '')}",
            )
            for index, article in enumerate(data["data"])
            for para in article["paragraphs"]
            for qa in para["qas"]
        ]
    except UnicodeDecodeError as err:
        raise DataError(unreadable_text(path, err)) from None
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
        raise DataError(f"{path}: not a SQuAD v1.1 file ({type(err).__name__}: {err})") from None


def _squad_texts(records: list[tuple[str, str, str, str]], spec: CorpusSpec) -> list[str]:
    """One text per paragraph (``context``) or per question (the other two formats), from the articles in
    ``spec.documents`` (a part never splits an article, so two parts share no paragraph)."""
    articles = part_of(list(dict.fromkeys(article for *_, article in records)), spec, "articles")
    if spec.documents is not None:
        kept = set(articles)
        records = [r for r in records if r[3] in kept]
    records = [(context, question, answer) for context, question, answer, _ in records]
    fmt = spec.format or "context"
    if fmt == "context":
        return list(dict.fromkeys(context for context, _, _ in records))
    if fmt == "context_question":
        return [f"{context}\n{question}" for context, question, _ in records]
    return [
        f"Context: {context}\nQuestion: {question}\nAnswer: {answer}" for context, question, answer in records
    ]
