"""How a decoder layer's projections divide into the groups structured pruning removes.

An attention group is one key/value head with its query heads (rows of q/k/v, columns of o); an MLP channel is
one row of gate/up and the matching column of down. Criteria score weight elements; these functions say how
many groups a projection has, how element scores reduce to them and how many parameters one group holds, so
every criterion shares one reduction.
"""

from __future__ import annotations

import torch
from torch import nn

from prunelight.models.adapters import FamilyAdapter, LayerModules
from prunelight.models.projections import (
    ATTENTION_PROJECTIONS,
    COLUMN_PROJECTIONS,
    MLP_PROJECTIONS,
    ROW_PROJECTIONS,
)
from prunelight.ranking.table import GroupTable


def attention_groups(m: LayerModules, head_dim: int) -> int:
    """Key/value heads of the layer (its k projection's rows, per head)."""
    return m.k.out_features // head_dim


def group_count(m: LayerModules, projection: str, head_dim: int) -> int:
    """Groups ``projection`` belongs to: the layer's attention groups or its MLP channels."""
    return attention_groups(m, head_dim) if projection in ATTENTION_PROJECTIONS else m.down.in_features


def group_sum(elements: torch.Tensor, projection: str, groups: int) -> torch.Tensor:
    """Sum element scores ``[out, in]`` of one projection into ``groups`` group scores (float64)."""
    out, inp = elements.shape
    if projection in ROW_PROJECTIONS:
        return elements.reshape(groups, out // groups, inp).sum(dim=(1, 2), dtype=torch.float64)
    return elements.reshape(out, groups, inp // groups).sum(dim=(0, 2), dtype=torch.float64)


def group_params(m: LayerModules, names: tuple[str, ...], head_dim: int) -> int:
    """Parameters one group of these projections holds (a row's weights and bias, or a column's weights)."""
    total = 0
    for name in names:
        linear: nn.Linear = getattr(m, name)
        groups = group_count(m, name, head_dim)
        if name in ROW_PROJECTIONS:
            total += (linear.in_features + (linear.bias is not None)) * linear.out_features // groups
        elif name in COLUMN_PROJECTIONS:
            total += linear.out_features * linear.in_features // groups
    return total


def structure_table(model: nn.Module, adapter: FamilyAdapter, seed: int = 0) -> GroupTable:
    """``model``'s group table with placeholder scores (seeded, positive): every size and parameter count the
    ranking's limits are checked against, from the shapes alone (a model on the meta device will do).

    The stages rank it before calibrating, so a target the limits cannot reach (``max_rate``,
    ``first_layers_max_rate``, the one group every layer keeps) fails in a second instead of after a
    calibration that can take minutes (``obs`` on a 7B model: about 20).
    """
    head_dim = adapter.layout(model.config).head_dim
    layers = adapter.decoder_layers(model)
    mods = [adapter.modules(layer) for layer in layers]
    generator = torch.Generator().manual_seed(seed)

    def placeholder(n: int) -> torch.Tensor:
        return torch.rand(n, generator=generator, dtype=torch.float64) + 0.5

    return GroupTable(
        attention=[placeholder(attention_groups(m, head_dim)) for m in mods],
        mlp=[placeholder(m.down.in_features) for m in mods],
        attention_group_params=[group_params(m, ATTENTION_PROJECTIONS, head_dim) for m in mods],
        mlp_channel_params=[group_params(m, MLP_PROJECTIONS, head_dim) for m in mods],
        layer_params=[sum(p.numel() for p in layer.parameters()) for layer in layers],
        total_params=sum(p.numel() for p in model.parameters()),
        block_importance=torch.ones(len(layers), dtype=torch.float64),
    )
