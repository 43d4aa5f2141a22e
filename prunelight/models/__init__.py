"""Models: what to load (:class:`ModelSpec`), how (:func:`load`), and how each family is laid out."""

from prunelight.models.adapters import (
    FAMILIES,
    AttentionLayout,
    FamilyAdapter,
    adapter_for,
    supported_model_types,
)
from prunelight.models.loader import LoadedModel, load, load_config, load_tokenizer, load_weights, resolve
from prunelight.models.spec import ModelSpec
from prunelight.models.zoo import ZOO

__all__ = [
    "FAMILIES",
    "ZOO",
    "AttentionLayout",
    "FamilyAdapter",
    "LoadedModel",
    "ModelSpec",
    "adapter_for",
    "load",
    "load_config",
    "load_tokenizer",
    "load_weights",
    "resolve",
    "supported_model_types",
]
