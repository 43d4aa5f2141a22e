"""Structured removal: make the Linear modules of a causal LM physically smaller, as a plan says.

The removed units are those of docs/design.md "Prunable groups": attention groups (one key/value head
and the query heads that share it), MLP channels and whole decoder layers. Removing whole groups keeps
``num_key_value_groups`` constant, so the stock attention code runs on the smaller modules. Module names
come from the family adapter only.

Every check on the plan runs before the first tensor is touched, so a bad plan leaves the model as it was.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from prunelight.errors import ConfigError
from prunelight.models.adapters import FamilyAdapter, adapter_for
from prunelight.ranking.plan import LayerPlan, PruningPlan
from prunelight.save.classes import sync_config
from prunelight.save.layers import (
    LayerSizes,
    head_dim,
    new_linear,
    projection_path,
    read_layer_sizes,
    replace_module,
    sync_module_attributes,
)

PER_LAYER_CONFIG_LISTS = ("layer_types", "mlp_layer_types")
"""Config lists with one entry per decoder layer (transformers' convention); removing a layer removes its
entry, or the remaining layers would get the wrong attention kind (sliding vs full)."""


@dataclass
class LayerInputMeans:
    """Calibration means of one layer's o_proj and down_proj inputs, for FLAP bias compensation.

    ``o`` has ``num_heads * head_dim`` entries (the attention output before o_proj, in the layer's current
    head order) and ``down`` has ``intermediate_size`` entries (``act(gate(x)) * up(x)``). Removing input
    column ``j`` of a map ``W`` changes its output by ``-W[:, j] * x_j``; replacing ``x_j`` by its mean and
    folding ``W[:, j] * mean[j]`` into the bias keeps the output's expectation. Either may be ``None`` to
    compensate only the other. A dict ``{layer index: LayerInputMeans}`` (indices of the model the plan is
    applied to) is what :func:`apply_plan` takes.
    """

    o: Tensor | None = None
    down: Tensor | None = None


Compensation = Mapping[int, LayerInputMeans]


def apply_plan(
    model: PreTrainedModel, plan: PruningPlan, compensation: Compensation | None = None
) -> PreTrainedModel:
    """Remove what ``plan`` lists from ``model``, in place, and return the model.

    Attention groups lose their rows of q/k/v (and bias entries) and their columns of o; MLP channels their
    rows of gate/up and columns of down; layers marked ``remove_layer`` leave the layer list. With
    ``compensation``, the removed input columns of o/down are folded into their bias (created if the
    layer had none). The config is updated afterwards: it stays stock when the result is uniform and
    stock-shaped, and becomes the prunelight per-layer config otherwise (see :mod:`prunelight.save`).
    Raises :class:`~prunelight.errors.ConfigError` before changing anything if the plan does not fit.
    """
    adapter = adapter_for(model)
    sizes = read_layer_sizes(model)
    dim = head_dim(model)
    compensation = dict(compensation or {})
    _check(plan, sizes, dim, compensation)

    layers = adapter.decoder_layers(model)
    with torch.no_grad():
        for layer_plan in plan.layers:
            if layer_plan.remove_layer:
                continue
            layer = layers[layer_plan.layer]
            means = compensation.get(layer_plan.layer, LayerInputMeans())
            before = sizes[layer_plan.layer]
            _prune_attention(layer, adapter, layer_plan.attention_groups, before, dim, means.o)
            _prune_mlp(layer, adapter, layer_plan.mlp_channels, before, means.down)
        _remove_layers(model, adapter, plan.removed_layers)
        for layer, after in zip(adapter.decoder_layers(model), read_layer_sizes(model), strict=True):
            sync_module_attributes(layer, adapter, after)
    sync_config(model)
    return model


def _check(
    plan: PruningPlan, sizes: list[LayerSizes], dim: int, compensation: dict[int, LayerInputMeans]
) -> None:
    n = len(sizes)
    seen: set[int] = set()
    for layer_plan in plan.layers:
        i = layer_plan.layer
        if not 0 <= i < n:
            raise ConfigError(f"the plan names layer {i}, but the model has {n} decoder layers (0..{n - 1})")
        if i in seen:
            raise ConfigError(f"the plan lists layer {i} twice; give one LayerPlan per layer")
        seen.add(i)
        if not layer_plan.remove_layer:
            _check_layer(layer_plan, sizes[i])
    if len(plan.removed_layers) == n:
        raise ConfigError(f"the plan removes all {n} decoder layers; keep at least one")
    for i, means in compensation.items():
        if not 0 <= i < n:
            raise ConfigError(
                f"compensation is given for layer {i}, but the model has {n} layers (0..{n - 1})"
            )
        expected = {"o": sizes[i].num_attention_heads * dim, "down": sizes[i].intermediate_size}
        for name, size in expected.items():
            mean = getattr(means, name)
            if mean is not None and tuple(mean.shape) != (size,):
                raise ConfigError(
                    f"compensation for layer {i}: the mean of the {name}_proj input must have shape "
                    f"({size},) (the layer's {name}_proj in_features), got {tuple(mean.shape)}"
                )


def _check_layer(layer_plan: LayerPlan, sizes: LayerSizes) -> None:
    i = layer_plan.layer
    units = (
        ("attention group", layer_plan.attention_groups, sizes.num_key_value_heads, "key/value heads"),
        ("MLP channel", layer_plan.mlp_channels, sizes.intermediate_size, "intermediate channels"),
    )
    for kind, indices, count, what in units:
        bad = [x for x in indices if not 0 <= x < count]
        if bad:
            raise ConfigError(
                f"layer {i}: {kind} index {bad[0]} is out of range; the layer has {count} {what} "
                f"(0..{count - 1})"
            )
        if len(set(indices)) != len(indices):
            raise ConfigError(f"layer {i}: the plan lists an {kind} more than once")
        if len(indices) == count:
            raise ConfigError(
                f"layer {i}: the plan removes all {count} {kind}s; a layer needs at least one, "
                "set remove_layer=True to drop the whole layer instead"
            )


def _kept(count: int, removed: Sequence[int]) -> list[int]:
    gone = set(removed)
    return [x for x in range(count) if x not in gone]


def _blocks(units: Sequence[int], width: int, device: torch.device) -> Tensor:
    """Indices of the ``width`` consecutive rows (or columns) that each unit occupies."""
    offsets = torch.arange(width, device=device)
    starts = torch.tensor(list(units), dtype=torch.long, device=device) * width
    return (starts[:, None] + offsets[None, :]).reshape(-1)


def kept_columns(
    sizes: LayerSizes, dim: int, projection: str, removed: Sequence[int], device: torch.device
) -> Tensor:
    """The input columns of o_proj (``removed`` key/value groups) or down_proj (``removed`` MLP channels) that
    stay, in the order the smaller module holds them: what apply keeps, and what a refit must fit."""
    if projection == "o":
        per_group = sizes.num_attention_heads // sizes.num_key_value_heads
        return _blocks(_kept(sizes.num_key_value_heads, removed), per_group * dim, device)
    return torch.tensor(_kept(sizes.intermediate_size, removed), dtype=torch.long, device=device)


def _prune_attention(
    layer: nn.Module,
    adapter: FamilyAdapter,
    groups: Sequence[int],
    sizes: LayerSizes,
    dim: int,
    o_mean: Tensor | None,
) -> None:
    if not groups:
        return
    m = adapter.modules(layer)
    device = m.q.weight.device
    per_group = sizes.num_attention_heads // sizes.num_key_value_heads
    q_rows = kept_columns(sizes, dim, "o", groups, device)  # o's kept columns are q's kept rows
    kv_rows = _blocks(_kept(sizes.num_key_value_heads, groups), dim, device)
    removed_q = _blocks(groups, per_group * dim, device)
    for name, linear, rows in (("q", m.q, q_rows), ("k", m.k, kv_rows), ("v", m.v, kv_rows)):
        replace_module(layer, projection_path(adapter, name), _select_rows(linear, rows))
    replace_module(layer, projection_path(adapter, "o"), _select_columns(m.o, q_rows, removed_q, o_mean))


def _prune_mlp(
    layer: nn.Module,
    adapter: FamilyAdapter,
    channels: Sequence[int],
    sizes: LayerSizes,
    down_mean: Tensor | None,
) -> None:
    if not channels:
        return
    m = adapter.modules(layer)
    device = m.gate.weight.device
    kept = kept_columns(sizes, 0, "down", channels, device)
    removed = torch.tensor(list(channels), dtype=torch.long, device=device)
    for name, linear in (("gate", m.gate), ("up", m.up)):
        replace_module(layer, projection_path(adapter, name), _select_rows(linear, kept))
    replace_module(layer, projection_path(adapter, "down"), _select_columns(m.down, kept, removed, down_mean))


def _select_rows(linear: nn.Linear, rows: Tensor) -> nn.Linear:
    """Output rows follow the removed units, and so does a bias on them."""
    new = new_linear(linear, linear.in_features, rows.numel(), linear.bias is not None)
    new.weight.copy_(linear.weight.index_select(0, rows))
    if linear.bias is not None:
        new.bias.copy_(linear.bias.index_select(0, rows))
    return new


def _select_columns(linear: nn.Linear, columns: Tensor, removed: Tensor, mean: Tensor | None) -> nn.Linear:
    """Input columns go; the bias keeps its size and, with a mean, absorbs the removed columns' share."""
    compensate = mean is not None
    new = new_linear(linear, columns.numel(), linear.out_features, linear.bias is not None or compensate)
    new.weight.copy_(linear.weight.index_select(1, columns))
    if new.bias is not None:
        bias = (
            linear.bias.double()
            if linear.bias is not None
            else torch.zeros_like(new.bias, dtype=torch.float64)
        )
        if compensate:
            w = linear.weight.index_select(1, removed).double()
            bias = bias + w @ mean.to(device=w.device, dtype=torch.float64).index_select(0, removed)
        new.bias.copy_(bias)
    return new


def _remove_layers(model: PreTrainedModel, adapter: FamilyAdapter, removed: Sequence[int]) -> None:
    """Drop layers, renumber ``layer_idx`` (the KV cache's index) and the config's per-layer lists."""
    if not removed:
        return
    layers = adapter.decoder_layers(model)
    count = len(layers)
    gone = set(removed)
    for i in sorted(gone, reverse=True):
        del layers[i]
    for new_index, layer in enumerate(layers):
        for module in layer.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_index
    config = model.config
    for name in PER_LAYER_CONFIG_LISTS:
        values = getattr(config, name, None)
        if isinstance(values, (list, tuple)) and len(values) == count:
            setattr(config, name, [v for i, v in enumerate(values) if i not in gone])
    config.num_hidden_layers = len(layers)
