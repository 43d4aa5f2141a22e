"""Save and load pruned models; importing this registers the per-layer pruned classes with transformers."""

from prunelight.save.classes import register, sync_config
from prunelight.save.layers import LayerSizes, read_layer_sizes, recorded_layer_sizes
from prunelight.save.pruned import load_pruned, save_pruned

register()

__all__ = [
    "LayerSizes",
    "load_pruned",
    "read_layer_sizes",
    "recorded_layer_sizes",
    "register",
    "save_pruned",
    "sync_config",
]
