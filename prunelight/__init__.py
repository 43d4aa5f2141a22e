"""prunelight: prune large language models with PyTorch Lightning, and prove what the pruning cost."""

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
