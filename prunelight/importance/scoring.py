"""Turning the reduced statistics into the group table: each layer's evidence scored by the criterion object.

The criterion decides which of a layer's statistics make a group's score
(:meth:`~prunelight.importance.criteria.base.Criterion.group_scores`); this module adds the parameter counts
the ranking weighs the scores by. Nothing here knows a criterion by name.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from prunelight.importance.criteria.base import Criterion
from prunelight.importance.evidence import LayerEvidence
from prunelight.importance.groups import group_params
from prunelight.models.projections import ATTENTION_PROJECTIONS, MLP_PROJECTIONS
from prunelight.ranking.table import GroupTable


def group_table(
    criterion: Criterion,
    evidence: Sequence[LayerEvidence],
    model: nn.Module,
    layers: Sequence[nn.Module],
    influence: torch.Tensor,
) -> GroupTable:
    """Every layer's group scores by ``criterion``, with the parameter counts the ranking weighs them by."""
    attention, mlp = [], []
    for layer in evidence:
        attention.append(criterion.group_scores(layer, "attention").detach().double().cpu())
        mlp.append(criterion.group_scores(layer, "mlp").detach().double().cpu())
    return GroupTable(
        attention=attention,
        mlp=mlp,
        attention_group_params=[group_params(e.modules, ATTENTION_PROJECTIONS, e.head_dim) for e in evidence],
        mlp_channel_params=[group_params(e.modules, MLP_PROJECTIONS, e.head_dim) for e in evidence],
        layer_params=[sum(p.numel() for p in layer.parameters()) for layer in layers],
        total_params=sum(p.numel() for p in model.parameters()),
        block_importance=influence.double(),
    )
