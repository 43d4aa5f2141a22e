"""prunelight: prune large language models with PyTorch Lightning, and prove what the pruning cost."""

import importlib.util as _importlib_util
import sys as _sys
from pathlib import Path as _Path

from prunelight.errors import ConfigError, DataError, ModelError, PrunelightError, UnsupportedModelError
from prunelight.models import ModelSpec, load
from prunelight.save import load_pruned, save_pruned  # importing registers the pruned model classes

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DataError",
    "ModelError",
    "ModelSpec",
    "PrunelightError",
    "UnsupportedModelError",
    "load",
    "load_pruned",
    "save_pruned",
]


class _SourceCallbacks:
    """Imports the repository's ``callbacks/`` folder as ``prunelight.callbacks`` in a source tree used
    without installing (``PYTHONPATH=<repository>``, as the benchmarks on a GPU machine run), which
    setup.cfg's ``package_dir`` does for an install. Inactive in an installed package (no such folder)."""

    folder = _Path(__file__).resolve().parent.parent / "callbacks"

    @classmethod
    def find_spec(cls, fullname: str, path: object = None, target: object = None) -> object:
        if fullname != "prunelight.callbacks":
            return None
        return _importlib_util.spec_from_file_location(
            fullname, cls.folder / "__init__.py", submodule_search_locations=[str(cls.folder)]
        )


_IN_SOURCE_TREE = (_SourceCallbacks.folder / "__init__.py").is_file() and (
    _SourceCallbacks.folder.parent / "setup.cfg"
).is_file()
if _IN_SOURCE_TREE and not any(getattr(f, "__name__", "") == "_SourceCallbacks" for f in _sys.meta_path):
    _sys.meta_path.append(_SourceCallbacks)
