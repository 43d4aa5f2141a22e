"""Where named corpora live when the hub is not reachable (layout in docs/data.md); whether it is reachable is
:mod:`prunelight.hub`'s decision."""

from __future__ import annotations

import os
from pathlib import Path

ENV = "PRUNELIGHT_DATA"
DEFAULT = Path.home() / ".cache" / "prunelight" / "data"


def data_root(explicit: str | os.PathLike | None = None) -> Path:
    """The setting if given, else ``$PRUNELIGHT_DATA``, else ``~/.cache/prunelight/data``."""
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).expanduser()
    return DEFAULT
