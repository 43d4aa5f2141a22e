"""Local copies of lm-eval's zero-shot tasks, for machines that cannot reach the Hugging Face hub.

The files under the data root (layout in ``SOURCES.md`` there) come from the tasks' original authors or
other public mirrors, each in its own layout. lm-eval's task configs read the hub copies, whose rows have
other field names and types. Each converter below rewrites one local file into the rows the hub copy
would give, so that the registered task config (prompt templates, ``process_docs``, choices, targets)
runs unchanged on it. The converted rows are cached as jsonl and lm-eval is pointed at them with a config
override that swaps only where the data comes from (``dataset_path: json``) and which splits exist.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunelight.errors import DataError

CONVERTER_VERSION = 1
"""Part of every cache stamp: bump it when a converter's output changes, so old caches are rewritten."""

DEFAULT_CACHE = Path.home() / ".cache" / "prunelight" / "lm_eval"

Row = dict[str, Any]
Converter = Callable[[list[Path]], Iterator[Row]]


# ---------------------------------------------------------------------------------------------- readers


def _read_jsonl(path: Path) -> Iterator[tuple[int, Row]]:
    """Numbered rows of a jsonl file, so that a bad row is reported with its line."""
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{number} is not valid JSON ({err.msg}); replace the file") from err


def _require(row: Row, keys: Iterable[str], path: Path, number: int) -> None:
    """Name the file, line and missing fields when a local file is not in the layout its converter reads."""
    missing = [k for k in keys if k not in row]
    if missing:
        raise DataError(
            f"{path}:{number} lacks field(s) {missing}; the file is not in the layout SOURCES.md describes"
        )


# ---------------------------------------------------------------------------------------------- converters


def boolq_label(value: Any) -> int:
    """SuperGLUE's ClassLabel order is ("False", "True"): 1 means the answer is yes.

    The local copy stores the label as the string "true"/"false"; JSON booleans are accepted too.
    """
    if isinstance(value, bool):
        return int(value)
    text = str(value).strip().lower()
    if text in ("true", "1"):
        return 1
    if text in ("false", "0"):
        return 0
    raise ValueError(f"unknown BoolQ label {value!r}")


def convert_boolq(paths: list[Path]) -> Iterator[Row]:
    """SuperGLUE BoolQ val (passage already "Title -- text", as on the hub) -> aps/super_glue boolq rows."""
    (path,) = paths
    for number, row in _read_jsonl(path):
        _require(row, ("question", "passage", "idx", "label"), path, number)
        try:
            label = boolq_label(row["label"])
        except ValueError as err:
            raise DataError(f"{path}:{number}: {err}; expected true/false") from err
        yield {"question": row["question"], "passage": row["passage"], "idx": int(row["idx"]), "label": label}


def convert_piqa(paths: list[Path]) -> Iterator[Row]:
    """The authors' valid.jsonl plus valid-labels.lst (one 0/1 a line, aligned by line) -> baber/piqa rows."""
    rows_path, labels_path = paths
    labels = [line.strip() for line in labels_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = list(_read_jsonl(rows_path))
    if len(rows) != len(labels):
        raise DataError(
            f"{rows_path} has {len(rows)} rows but {labels_path} has {len(labels)} labels; "
            "replace both with the same release"
        )
    for (number, row), label in zip(rows, labels, strict=True):
        _require(row, ("goal", "sol1", "sol2"), rows_path, number)
        if label not in ("0", "1"):
            raise DataError(f"{labels_path}:{number} holds {label!r}, expected 0 or 1; replace the file")
        yield {"goal": row["goal"], "sol1": row["sol1"], "sol2": row["sol2"], "label": int(label)}


HELLASWAG_FIELDS = (
    "ind", "activity_label", "ctx_a", "ctx_b", "ctx", "endings", "source_id", "split", "split_type", "label",
)  # fmt: skip


def convert_hellaswag(paths: list[Path]) -> Iterator[Row]:
    """rowanz layout -> Rowan/hellaswag rows: the same fields, with ``label`` a string as on the hub."""
    (path,) = paths
    for number, row in _read_jsonl(path):
        _require(row, ("activity_label", "ctx_a", "ctx_b", "endings", "label"), path, number)
        out = {k: row.get(k) for k in HELLASWAG_FIELDS}
        out["label"] = str(row["label"])
        yield out


NO_SPACE_BEFORE = tuple(".,;:!?'")
"""Continuations that start with these followed the blank directly in the original sentence ("_'s")."""


def winogrande_row(context_options: list[str], continuation: str, gold: int) -> Row:
    """Rebuild one allenai/winogrande row (sentence with one "_", option1/2, answer "1"/"2").

    MosaicML's layout stores the two partial contexts (the sentence up to the blank with each option
    filled in) and the text after the blank. The shared prefix of the contexts, cut back to a word start,
    becomes the text before the blank; the rests are the options. lm-eval only ever uses
    ``sentence[:idx] + option`` and ``sentence[idx + 1:].strip()``, which then give back the stored
    contexts and continuation exactly (checked on every row by the tests).
    """
    first, second = context_options
    shared = os.path.commonprefix([first, second])
    cut = max(shared.rfind(" "), shared.rfind("\n")) + 1  # options start at a word, not mid-name
    prefix = shared[:cut]
    if "_" in prefix:
        raise ValueError("the text before the blank contains '_', which lm-eval would take for the blank")
    option1, option2 = first[len(prefix) :], second[len(prefix) :]
    if not option1 or not option2:
        raise ValueError("one option is empty")
    glue = "" if continuation.startswith(NO_SPACE_BEFORE) else " "
    return {
        "sentence": f"{prefix}_{glue}{continuation}",
        "option1": option1,
        "option2": option2,
        "answer": str(int(gold) + 1),
    }


def convert_winogrande(paths: list[Path]) -> Iterator[Row]:
    """MosaicML's WinoGrande dev (context_options, continuation, gold 0/1) -> allenai/winogrande rows."""
    (path,) = paths
    for number, row in _read_jsonl(path):
        _require(row, ("context_options", "continuation", "gold"), path, number)
        if len(row["context_options"]) != 2 or row["gold"] not in (0, 1):
            raise DataError(f"{path}:{number} needs two context_options and gold 0 or 1; replace the file")
        try:
            yield winogrande_row(row["context_options"], row["continuation"], row["gold"])
        except ValueError as err:
            raise DataError(f"{path}:{number} cannot be rebuilt: {err}; replace the file") from err


def convert_arc(paths: list[Path]) -> Iterator[Row]:
    """Already in allenai/ai2_arc's layout: only checked and reduced to the hub's fields."""
    (path,) = paths
    for number, row in _read_jsonl(path):
        _require(row, ("id", "question", "choices", "answerKey"), path, number)
        choices = row["choices"]
        if not isinstance(choices, dict) or row["answerKey"] not in choices.get("label", []):
            raise DataError(f"{path}:{number} has no choice labelled {row['answerKey']!r}; replace the file")
        yield {
            "id": row["id"],
            "question": row["question"],
            "choices": {"text": list(choices["text"]), "label": list(choices["label"])},
            "answerKey": row["answerKey"],
        }


_OBQA_CHOICE = re.compile(r"\(([A-Z])\) ")


def parse_openbookqa_choices(text: str) -> tuple[list[str], list[str]]:
    """Split "(A) first (B) second (C) ..." into labels and texts.

    Markers must run A, B, C, ... in order; a "(B) " inside a choice's text is only taken for a marker
    when it is the next letter due, which is as far as the TSV's format allows telling them apart.
    """
    labels: list[str] = []
    starts: list[tuple[int, int]] = []
    for match in _OBQA_CHOICE.finditer(text):
        letter = match.group(1)
        if ord(letter) - ord("A") != len(labels):
            continue
        if labels and match.start() > 0 and text[match.start() - 1] != " ":
            continue
        labels.append(letter)
        starts.append((match.start(), match.end()))
    if len(labels) < 2 or starts[0][0] != 0:
        raise ValueError(f"cannot find '(A) .. (B) ..' choices in {text!r}")
    texts = []
    for i, (_, end) in enumerate(starts):
        stop = starts[i + 1][0] if i + 1 < len(starts) else len(text)
        texts.append(text[end:stop].strip())
    if not all(texts):
        raise ValueError(f"an empty choice in {text!r}")
    return labels, texts


def convert_openbookqa(paths: list[Path]) -> Iterator[Row]:
    """AI2's TSV (ID, Question Stem, Choices, Complete Question, Answer Key) -> allenai/openbookqa main."""
    (path,) = paths
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        expected = ["ID", "Question Stem", "Choices", "Complete Question", "Answer Key"]
        if header != expected:
            raise DataError(f"{path} has header {header}, expected {expected}; replace the file")
        for number, cells in enumerate(reader, start=2):
            if not cells:
                continue
            if len(cells) != 5:
                raise DataError(f"{path}:{number} has {len(cells)} columns, expected 5; replace the file")
            qid, stem, choices, _, answer = cells
            try:
                labels, texts = parse_openbookqa_choices(choices)
            except ValueError as err:
                raise DataError(f"{path}:{number}: {err}; replace the file") from err
            if answer.strip() not in labels:
                raise DataError(
                    f"{path}:{number}: answer {answer!r} is not one of {labels}; replace the file"
                )
            yield {
                "id": qid,
                "question_stem": stem,
                "choices": {"text": texts, "label": labels},
                "answerKey": answer.strip(),
            }


# ---------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class LocalTask:
    """Where one lm-eval task's local files are and how to turn them into the hub's rows."""

    name: str
    """lm-eval's registered task name."""
    eval_split: str
    """The split the registered yaml evaluates (its test_split if set, else its validation_split)."""
    files: dict[str, tuple[str, ...]]
    """Split -> files relative to the data root. The eval split must exist; the others are optional and
    only serve as few-shot examples (lm-eval's hub copies take them from ``train``, which no local copy
    has: with none, shots come from the evaluated split, never the example itself)."""
    convert: Converter
    yaml_dir: str
    """The folder under ``lm_eval/tasks`` holding the yaml: indexing only it is milliseconds, not seconds."""
    notes: str = ""
    """What a reader of the scores should know about this copy (e.g. that it is a sample)."""

    def paths(self, root: Path, split: str | None = None) -> list[Path]:
        """Absolute paths of one split's source files (the eval split by default)."""
        return [root / rel for rel in self.files[split or self.eval_split]]


LOCAL_TASKS: dict[str, LocalTask] = {
    t.name: t
    for t in (
        LocalTask(
            "boolq", "validation", {"validation": ("boolq/val.jsonl",)}, convert_boolq, "super_glue/boolq"
        ),
        LocalTask(
            "piqa",
            "validation",
            {"validation": ("piqa/valid.jsonl", "piqa/valid-labels.lst")},
            convert_piqa,
            "piqa",
        ),
        LocalTask(
            "hellaswag",
            "validation",
            {"validation": ("hellaswag/hellaswag_val_sample1000.jsonl",)},
            convert_hellaswag,
            "hellaswag",
            notes="a 1000-row random sample of the 10042-row validation split",
        ),
        LocalTask(
            "winogrande",
            "validation",
            {"validation": ("winogrande/dev_llmfoundry_format.jsonl",)},
            convert_winogrande,
            "winogrande",
        ),
        LocalTask(
            "arc_easy",
            "test",
            {
                "test": ("arc_easy/hf_layout/ARC-Easy-test.jsonl",),
                "validation": ("arc_easy/hf_layout/ARC-Easy-validation.jsonl",),
            },
            convert_arc,
            "arc",
        ),
        LocalTask(
            "arc_challenge",
            "test",
            {
                "test": ("arc_challenge/hf_layout/ARC-Challenge-test.jsonl",),
                "validation": ("arc_challenge/hf_layout/ARC-Challenge-validation.jsonl",),
            },
            convert_arc,
            "arc",
        ),
        LocalTask(
            "openbookqa",
            "test",
            {"test": ("openbookqa/test.tsv",), "validation": ("openbookqa/dev.tsv",)},
            convert_openbookqa,
            "openbookqa",
        ),
    )
}


def missing_files(task: str, root: Path) -> list[Path]:
    """The eval-split files of ``task`` that are absent under ``root`` (empty when all are there)."""
    return [p for p in LOCAL_TASKS[task].paths(root) if not p.is_file()]


# ---------------------------------------------------------------------------------------------- cache


def _fingerprint(task: LocalTask, split: str, sources: list[Path]) -> str:
    """Hash of the sources' bytes and the converter version: the cache is rewritten when either changes."""
    digest = hashlib.sha256(f"{CONVERTER_VERSION}\0{task.name}\0{split}".encode())
    for path in sources:
        digest.update(str(path.resolve()).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _write_atomic(path: Path, lines: Iterable[str]) -> None:
    """Temp file next to the target, then rename: concurrent ranks never read half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for line in lines:
                handle.write(line)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def converted_split(task: LocalTask, split: str, root: Path, cache_dir: Path) -> Path:
    """The cached jsonl of one split, converted again only when its sources (or the converter) changed."""
    sources = task.paths(root, split)
    target = cache_dir / task.name / f"{split}.jsonl"
    stamp = target.with_suffix(".stamp")
    fingerprint = _fingerprint(task, split, sources)
    if target.is_file() and stamp.is_file() and stamp.read_text().strip() == fingerprint:
        return target
    rows = [json.dumps(row, ensure_ascii=False) + "\n" for row in task.convert(sources)]
    if not rows:
        raise DataError(f"{sources[0]} holds no rows; replace the file")
    _write_atomic(target, rows)
    _write_atomic(stamp, [fingerprint + "\n"])
    return target


def prepare(task: str, root: Path, cache_dir: Path | None = None) -> dict[str, Path]:
    """Convert (or reuse) every split of ``task`` found under ``root``: split -> cached jsonl.

    The eval split must be there (callers check :func:`missing_files` first); optional splits are used
    when present.
    """
    spec = LOCAL_TASKS[task]
    cache = Path(cache_dir) if cache_dir else DEFAULT_CACHE
    out: dict[str, Path] = {}
    for split in spec.files:
        if split != spec.eval_split and not all(p.is_file() for p in spec.paths(root, split)):
            continue
        out[split] = converted_split(spec, split, root, cache)
    return out


def task_override(task: str, splits: dict[str, Path]) -> dict[str, Any]:
    """Config keys that, laid over the registered yaml, make lm-eval read the converted files.

    Only the data source and the split names change; prompts, choices, targets and metrics stay the
    registered ones. ``training_split`` is dropped because no local copy has a train split (lm-eval
    would otherwise index it for few-shot examples and fail).
    """
    spec = LOCAL_TASKS[task]
    return {
        "task": task,
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {split: str(path) for split, path in splits.items()}},
        "training_split": None,
        "validation_split": "validation" if "validation" in splits else None,
        "test_split": "test" if spec.eval_split == "test" else None,
    }


def source_label(task: str, root: Path) -> str:
    """``local:<file>`` naming the evaluated split's source file(s), joined by "+" when there are two."""
    return "local:" + "+".join(str(p) for p in LOCAL_TASKS[task].paths(root))
