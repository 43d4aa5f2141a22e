"""Read local text files into a list of documents, with errors that name the file and the line."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from prunelight.errors import DataError

SUPPORTED_SUFFIXES = (".txt", ".raw", ".jsonl", ".json", ".parquet", ".jsonl.gz", ".json.gz")


def suffix_of(path: Path) -> str:
    name = path.name.lower()
    return next(
        (s for s in sorted(SUPPORTED_SUFFIXES, key=len, reverse=True) if name.endswith(s)), path.suffix
    )


def _open(path: Path) -> IO[str]:
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def read_documents(path: Path, text_field: str = "text", per_line: bool = False) -> list[str]:
    """Documents of one local file.

    ``.txt``/``.raw``: the whole file is one document, or one document per non-blank line with
    ``per_line``. ``.jsonl``: one record per line, text under ``text_field``. ``.json``: a list of records
    (or strings), or an object holding such a list under ``data``/``rows``/``records``. ``.parquet``: the
    ``text_field`` column.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"corpus file {path} does not exist")
    kind = suffix_of(path)
    try:
        if kind in (".txt", ".raw"):
            docs = _read_text(path, per_line)
        elif kind in (".jsonl", ".jsonl.gz"):
            docs = list(_read_jsonl(path, text_field))
        elif kind in (".json", ".json.gz"):
            docs = _read_json(path, text_field)
        elif kind == ".parquet":
            docs = _read_parquet(path, text_field)
        else:
            raise DataError(
                f"{path}: unsupported file type {kind!r}; use one of {', '.join(SUPPORTED_SUFFIXES)}"
            )
    except UnicodeDecodeError as err:
        raise DataError(unreadable_text(path, err)) from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise DataError(f"{path}: not a complete gzip file ({err}); copy or download it again") from None
    if not any(doc.strip() for doc in docs):
        raise DataError(f"corpus file {path} is empty (no text found)")
    return docs


def unreadable_text(path: Path, err: UnicodeDecodeError) -> str:
    """The message for a file that is not UTF-8: where, and how to convert it."""
    return (
        f"{path} is not UTF-8 text (it holds byte 0x{err.object[err.start]:02x}, which UTF-8 text cannot); "
        f"convert it to UTF-8, e.g. iconv -f latin1 -t utf-8 {path.name} > {path.stem}.utf8{path.suffix}"
    )


def _read_text(path: Path, per_line: bool) -> list[str]:
    with _open(path) as handle:
        text = handle.read()
    if not per_line:
        return [text]
    return [line for line in text.splitlines() if line.strip()]


def _record_text(record: object, text_field: str, where: str) -> str:
    if isinstance(record, str):
        return record
    if not isinstance(record, dict):
        raise DataError(
            f"{where}: expected an object with a {text_field!r} field, got {type(record).__name__}"
        )
    if text_field not in record:
        raise DataError(f"{where}: no {text_field!r} field (fields: {', '.join(record)}); set text_field")
    value = record[text_field]
    if not isinstance(value, str):
        raise DataError(f"{where}: field {text_field!r} is {type(value).__name__}, not text")
    return value


def _read_jsonl(path: Path, text_field: str) -> Iterator[str]:
    with _open(path) as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(
                    f"{path}, line {number}: malformed JSON ({err.msg} at column {err.colno})"
                ) from None
            yield _record_text(record, text_field, f"{path}, line {number}")


def _read_json(path: Path, text_field: str) -> list[str]:
    with _open(path) as handle:
        try:
            data = json.load(handle)
        except json.JSONDecodeError as err:
            raise DataError(
                f"{path}: malformed JSON at line {err.lineno}, column {err.colno}: {err.msg}"
            ) from None
    if isinstance(data, dict):
        key = next((k for k in ("data", "rows", "records") if isinstance(data.get(k), list)), None)
        if key is None:
            raise DataError(f"{path}: expected a list of records, or an object with a 'data' list")
        data = data[key]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a list of records, got {type(data).__name__}")
    return [_record_text(record, text_field, f"{path}, record {i}") for i, record in enumerate(data)]


def _read_parquet(path: Path, text_field: str) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{path}: not a readable parquet file ({err}); copy or write it again") from None
    if text_field not in table.column_names:
        raise DataError(
            f"{path}: no column {text_field!r} (columns: {', '.join(table.column_names)}); set text_field"
        )
    return [value or "" for value in table.column(text_field).to_pylist()]
