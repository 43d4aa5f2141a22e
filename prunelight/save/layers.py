"""Per-layer sizes of a pruned model, read off its modules and recorded in its config.

After structured pruning every decoder layer may have its own head count and MLP width, and FLAP
compensation may have given o/down a bias the stock config cannot express. The modules are the truth;
:class:`LayerSizes` is their summary, written to ``config.prunelight_layers`` so that a fresh model can be
built with the same shapes before the saved weights are loaded into it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import skip_init

from prunelight.errors import ModelError
from prunelight.models.adapters import FamilyAdapter, adapter_for

LAYERS_ATTRIBUTE = "prunelight_layers"
"""Config attribute holding one :meth:`LayerSizes.to_dict` per decoder layer."""

_HEAD_COUNT_ATTRIBUTES = {
    "num_heads": "num_attention_heads",
    "num_attention_heads": "num_attention_heads",
    "num_key_value_heads": "num_key_value_heads",
}
"""Attributes some attention implementations cache at init (older transformers did); they must follow the
pruned sizes or the stock forward reshapes with stale counts."""


@dataclass(frozen=True)
class LayerSizes:
    """What tells one pruned decoder layer from another (``head_dim`` and hidden size never change)."""

    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    o_bias: bool
    down_bias: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerSizes:
        return cls(
            int(data["num_attention_heads"]),
            int(data["num_key_value_heads"]),
            int(data["intermediate_size"]),
            bool(data["o_bias"]),
            bool(data["down_bias"]),
        )


def projection_path(adapter: FamilyAdapter, projection: str) -> str:
    """Dotted path of ``projection`` (q, k, v, o, gate, up, down) from a decoder layer."""
    if projection in ("q", "k", "v", "o"):
        return f"{adapter.attention}.{getattr(adapter, projection + '_proj')}"
    return f"{adapter.mlp}.{getattr(adapter, projection + '_proj')}"


def replace_module(root: nn.Module, dotted: str, module: nn.Module) -> None:
    parent_path, _, name = dotted.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, module)


def new_linear(like: nn.Linear, in_features: int, out_features: int, bias: bool) -> nn.Linear:
    """An empty Linear on the same device and dtype as ``like``, so it works on meta-device init too.

    Uninitialised (``skip_init``): the caller overwrites every weight, and the random init of nn.Linear
    made applying a plan on the CPU ten times slower (measured: 55 s against 5 s for an 8B shape).
    """
    linear = skip_init(
        nn.Linear, in_features, out_features, bias=bias, device=like.weight.device, dtype=like.weight.dtype
    )
    linear.weight.requires_grad_(like.weight.requires_grad)
    if linear.bias is not None:
        linear.bias.requires_grad_(like.weight.requires_grad)
    return linear


def head_dim(model_or_config: Any) -> int:
    config = getattr(model_or_config, "config", model_or_config)
    return adapter_for(config).layout(config).head_dim


def read_layer_sizes(model: nn.Module) -> list[LayerSizes]:
    """The sizes every decoder layer has right now, from the modules rather than the config."""
    adapter = adapter_for(model)
    dim = head_dim(model)
    sizes = []
    for layer in adapter.decoder_layers(model):
        m = adapter.modules(layer)
        sizes.append(
            LayerSizes(
                num_attention_heads=m.q.out_features // dim,
                num_key_value_heads=m.k.out_features // dim,
                intermediate_size=m.gate.out_features,
                o_bias=m.o.bias is not None,
                down_bias=m.down.bias is not None,
            )
        )
    return sizes


def recorded_layer_sizes(config: Any) -> list[LayerSizes] | None:
    """The per-layer sizes a config records, or ``None`` for a config prunelight never wrote."""
    records = getattr(config, LAYERS_ATTRIBUTE, None)
    if records is None:
        return None
    return [LayerSizes.from_dict(record) for record in records]


def sync_module_attributes(layer: nn.Module, adapter: FamilyAdapter, sizes: LayerSizes) -> None:
    """Keep cached head counts and widths on the attention/MLP modules equal to the new shapes."""
    attention, mlp = layer.get_submodule(adapter.attention), layer.get_submodule(adapter.mlp)
    for attribute, field in _HEAD_COUNT_ATTRIBUTES.items():
        if isinstance(getattr(attention, attribute, None), int):
            setattr(attention, attribute, getattr(sizes, field))
    if isinstance(getattr(mlp, "intermediate_size", None), int):
        mlp.intermediate_size = sizes.intermediate_size


@torch.no_grad()
def resize_to_recorded(model: nn.Module) -> None:
    """Give each layer the shapes recorded in the config (weights are left uninitialised).

    Runs inside the pruned model class's init, before ``from_pretrained`` loads the state dict, so the
    loaded tensors find modules of their own shapes.
    """
    recorded = recorded_layer_sizes(model.config)
    if recorded is None:
        return
    adapter = adapter_for(model)
    layers = adapter.decoder_layers(model)
    if len(recorded) != len(layers):
        raise ModelError(
            f"the config records {len(recorded)} layers in {LAYERS_ATTRIBUTE!r} but num_hidden_layers builds "
            f"{len(layers)}; the config.json was edited by hand or is corrupt"
        )
    config, dim = model.config, head_dim(model)
    for layer, sizes in zip(layers, recorded, strict=True):
        m = adapter.modules(layer)
        q_out, kv_out = sizes.num_attention_heads * dim, sizes.num_key_value_heads * dim
        inter = sizes.intermediate_size
        wanted = {
            "q": (m.q, m.q.in_features, q_out, adapter.has_bias(config, "q")),
            "k": (m.k, m.k.in_features, kv_out, adapter.has_bias(config, "k")),
            "v": (m.v, m.v.in_features, kv_out, adapter.has_bias(config, "v")),
            "o": (m.o, q_out, m.o.out_features, sizes.o_bias),
            "gate": (m.gate, m.gate.in_features, inter, adapter.has_bias(config, "gate")),
            "up": (m.up, m.up.in_features, inter, adapter.has_bias(config, "up")),
            "down": (m.down, inter, m.down.out_features, sizes.down_bias),
        }
        for name, (old, in_features, out_features, bias) in wanted.items():
            if (old.in_features, old.out_features, old.bias is not None) != (in_features, out_features, bias):
                replace_module(
                    layer, projection_path(adapter, name), new_linear(old, in_features, out_features, bias)
                )
        sync_module_attributes(layer, adapter, sizes)
