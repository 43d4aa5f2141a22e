"""Writing result files so that a crash never leaves a half-written one."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write JSON next to its destination, then rename: readers see the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, ensure_ascii=False, default=str)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def check_creatable(folder: str | os.PathLike, key: str) -> Path:
    """Fail (``ConfigError`` naming ``key``) unless ``folder`` exists as a writable folder or can be created.

    Run before any work: a results folder that sits under a file or on a read-only place would otherwise
    fail only when the first result is written.
    """
    from prunelight.errors import ConfigError

    folder = Path(folder).expanduser().absolute()
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = "is" if existing == folder else f"would be created under {existing}, which is"
        raise ConfigError(f"{key}: {folder} {what} a file, not a folder; choose another {key}")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "is" if existing == folder else f"would be created in {existing}, which is"
        raise ConfigError(f"{key}: {folder} {where} not writable (read-only); choose a writable {key}")
    return folder
