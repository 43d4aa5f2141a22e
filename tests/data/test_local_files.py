"""Local files of every supported kind, a hub-style dataset folder, and the errors of bad files."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prunelight.data import load_corpus
from prunelight.data.corpora import CorpusSpec
from prunelight.errors import DataError

DOCS = ["first document text", "second one", "third, in Chinese: 你好世界"]


def test_txt_is_one_document_or_one_per_line(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("\n".join(DOCS) + "\n\n")
    assert load_corpus(str(path), "train").texts == ["\n".join(DOCS) + "\n\n"]
    assert load_corpus(CorpusSpec(str(path), per_line=True), "train").texts == DOCS


def test_jsonl_json_and_parquet(tmp_path):
    (tmp_path / "a.jsonl").write_text(
        "".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(DOCS))
    )
    (tmp_path / "b.json").write_text(json.dumps({"data": [{"body": d} for d in DOCS]}))
    pq.write_table(pa.table({"text": DOCS}), tmp_path / "c.parquet")
    assert load_corpus(str(tmp_path / "a.jsonl"), "train").texts == DOCS
    assert load_corpus(CorpusSpec(str(tmp_path / "b.json"), text_field="body"), "train").texts == DOCS
    assert load_corpus(str(tmp_path / "c.parquet"), "train").texts == DOCS


def test_hub_dataset_path_through_datasets(tmp_path):
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(json.dumps({"content": d}) + "\n" for d in DOCS))
    corpus = load_corpus(CorpusSpec(f"hf:{folder}", text_field="content"), "train")
    assert corpus.texts == DOCS
    with pytest.raises(DataError, match="no 'text' column"):
        load_corpus(f"hf:{folder}", "train")


def test_malformed_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n\n{"text": "broken}\n')
    with pytest.raises(DataError, match=r"bad.jsonl, line 3: malformed JSON"):
        load_corpus(str(path), "train")


def test_jsonl_without_the_field_names_the_fields(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"body": "ok"}\n')
    with pytest.raises(DataError, match=r"line 1: no 'text' field \(fields: body\)"):
        load_corpus(str(path), "train")


def test_empty_text_file(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("  \n\n")
    with pytest.raises(DataError, match="is empty"):
        load_corpus(str(path), "train")


def test_missing_local_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_corpus(str(tmp_path / "nope.jsonl"), "train")
