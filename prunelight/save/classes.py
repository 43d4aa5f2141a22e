"""Config and model classes for pruned models whose layers differ, registered with transformers' Auto classes.

A stock config describes one size for all layers, so a model pruned non-uniformly needs a config that can
say more. For every model_type in :data:`prunelight.models.adapters.FAMILIES` this module derives

- ``Prunelight<StockConfig>`` with ``model_type = "prunelight_<model_type>"``: the stock config plus
  ``prunelight_layers`` (one :class:`~prunelight.save.layers.LayerSizes` per layer). Its top-level sizes
  stay those of a valid stock config (the dense model's), because the stock init builds from them;
- ``Prunelight<StockForCausalLM>``: the stock model, whose init resizes each layer's Linear modules to the
  recorded sizes before the weights are loaded, so ``from_pretrained`` (meta-device init, then state-dict
  load) works unchanged.

:func:`register` puts both into ``AutoConfig`` and ``AutoModelForCausalLM``; ``import prunelight`` calls it.
:func:`sync_config` decides, after pruning, whether a model still fits its stock config (then it keeps
it, and loads anywhere) or needs the prunelight one.
"""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

from huggingface_hub.errors import StrictDataclassError
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

from prunelight.models.adapters import FAMILIES, PRUNED_MODEL_TYPE_PREFIX, adapter_for
from prunelight.save.layers import LAYERS_ATTRIBUTE, LayerSizes, read_layer_sizes, resize_to_recorded

_CLASSES: dict[str, tuple[type, type, type, type]] = {}
"""stock model_type -> (stock config, stock model, pruned config, pruned model)."""


def _make_classes(model_type: str) -> tuple[type, type, type, type]:
    stock_config: type = CONFIG_MAPPING[model_type]
    stock_model: type = MODEL_FOR_CAUSAL_LM_MAPPING[stock_config]
    config_name, model_name = f"Prunelight{stock_config.__name__}", f"Prunelight{stock_model.__name__}"

    pruned_config = type(
        config_name,
        (stock_config,),
        {
            "model_type": PRUNED_MODEL_TYPE_PREFIX + model_type,
            "__module__": __name__,
            "__qualname__": config_name,
            "__doc__": f"{stock_config.__name__} whose layers have their own sizes (``{LAYERS_ATTRIBUTE}``).",
        },
    )

    class PrunedModel(stock_model):  # type: ignore[misc, valid-type]
        config_class = pruned_config

        def post_init(self) -> None:
            # The stock init has built every layer at the config's top-level sizes; reshape before the
            # weights are initialised or loaded.
            resize_to_recorded(self)
            super().post_init()

    PrunedModel.__name__ = PrunedModel.__qualname__ = model_name
    PrunedModel.__module__ = __name__
    PrunedModel.__doc__ = f"{stock_model.__name__} whose layers take the sizes in ``{LAYERS_ATTRIBUTE}``."
    # Importable by name, for pickling and for error messages that point at them.
    globals()[config_name], globals()[model_name] = pruned_config, PrunedModel
    return stock_config, stock_model, pruned_config, PrunedModel


def classes_for(model_type: str) -> tuple[type, type, type, type]:
    """(stock config, stock model, pruned config, pruned model) of a stock or prunelight model_type."""
    stock_type = model_type.removeprefix(PRUNED_MODEL_TYPE_PREFIX)
    if stock_type not in _CLASSES:
        _CLASSES[stock_type] = _make_classes(stock_type)
    return _CLASSES[stock_type]


@cache
def register() -> None:
    """Make ``AutoConfig``/``AutoModelForCausalLM`` know every family's pruned classes (idempotent)."""
    for adapter in FAMILIES:
        for model_type in adapter.model_types:
            _, _, pruned_config, pruned_model = classes_for(model_type)
            AutoConfig.register(pruned_config.model_type, pruned_config, exist_ok=True)
            AutoModelForCausalLM.register(pruned_config, pruned_model, exist_ok=True)


def sync_config(model: PreTrainedModel) -> bool:
    """Make ``model.config`` (and the model's class) describe the layers the model has now.

    Returns whether the result is a stock config. It is one when every layer has the same sizes, o/down
    carry a bias exactly where the stock config puts one, and the stock class accepts the reduced sizes
    (Gemma3, for one, requires ``hidden_size % num_attention_heads == 0``). Otherwise the config becomes the
    prunelight subclass and the model the matching prunelight class. The config object is changed in
    place because every submodule holds a reference to it.
    """
    adapter = adapter_for(model)
    config = model.config
    stock_config, stock_model, pruned_config, pruned_model = classes_for(config.model_type)
    sizes = read_layer_sizes(model)
    dim = adapter.layout(config).head_dim
    config.num_hidden_layers = len(sizes)
    config.head_dim = dim  # explicit, so a reload never re-derives it from hidden_size / heads
    setattr(config, LAYERS_ATTRIBUTE, [s.to_dict() for s in sizes])

    stock = _fits_stock(config, sizes, stock_config)
    if stock:
        first = sizes[0]
        config.num_attention_heads = first.num_attention_heads
        config.num_key_value_heads = first.num_key_value_heads
        config.intermediate_size = first.intermediate_size
    config.__class__ = stock_config if stock else pruned_config
    config.__dict__.pop("model_type", None)  # transformers 5 stores it per instance; the class's must win
    wanted_class = stock_model if stock else pruned_model
    if type(model) in (stock_model, pruned_model) and type(model) is not wanted_class:
        # Same modules, same forward: only the name save_pretrained records in "architectures" changes.
        model.__class__ = wanted_class
    return stock


def _fits_stock(config: Any, sizes: list[LayerSizes], stock_config: type) -> bool:
    adapter = adapter_for(config)
    if len({(s.num_attention_heads, s.num_key_value_heads, s.intermediate_size) for s in sizes}) != 1:
        return False
    if any(
        s.o_bias != adapter.has_bias(config, "o") or s.down_bias != adapter.has_bias(config, "down")
        for s in sizes
    ):
        return False
    first = sizes[0]
    reduced = {
        "num_attention_heads": first.num_attention_heads,
        "num_key_value_heads": first.num_key_value_heads,
        "intermediate_size": first.intermediate_size,
    }
    # A config that already fails the stock validators for unrelated reasons (some hub configs do) must not
    # turn per-layer for that: only a failure the reduced sizes cause counts.
    return _stock_validates(config, stock_config, reduced) or not _stock_validates(config, stock_config, {})


def _stock_validates(config: Any, stock_config: type, changes: dict[str, int]) -> bool:
    candidate = copy.copy(config)
    candidate.__class__ = stock_config
    for name, value in changes.items():
        setattr(candidate, name, value)
    validate = getattr(candidate, "validate", None)
    if validate is None:
        return True
    try:
        validate()
    except (ValueError, TypeError, StrictDataclassError):
        return False
    return True
