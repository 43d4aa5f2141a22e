"""``analysis/layer_report.json``: per layer, what the ranking removed and its scores at every stage.

Built from the ranking's result when a prune run ends, and read back by the diagnosis, the plots,
TensorBoard, ``summary.md`` and ``compare``; :func:`layer_rate` is the removed fraction they all draw.
"""

from __future__ import annotations

from typing import Any

from prunelight.ranking import RankingResult
from prunelight.ranking.rank import STAGES
from prunelight.ranking.table import GroupTable


def layer_report(table: GroupTable, result: RankingResult) -> dict[str, Any]:
    """Per layer: parameters before/after, groups and channels removed, score statistics at every stage."""
    stages, plan = result.stages, result.plan
    layers = []
    for index in range(table.num_layers):
        removed = stages["layers"]["params_removed"][index]
        entry: dict[str, Any] = {
            "layer": index,
            "params_before": table.layer_params[index],
            "params_after": table.layer_params[index] - removed,
            "layer_removed": plan.layers[index].remove_layer,
            "protected": stages["layers"]["protected"][index],
            "block_importance": stages["layers"]["block_importance"][index],
            "block_weight": stages["layers"]["block_weight"][index],
            "depth_factor": stages["layers"]["depth_factor"][index],
        }
        for kind in ("attention", "mlp"):
            if kind not in stages:
                continue
            allocation = stages[kind]["allocation"]
            entry[kind] = {
                "groups_before": allocation["groups_before"][index],
                "groups_after": allocation["groups_after"][index],
                "rate": allocation["rate"][index],
                "params_removed": allocation["params_removed"][index],
                "limits": [allocation["min_groups"][index], allocation["max_groups"][index]],
                "scores": {
                    stage: {stat: stages[kind][stage][stat][index] for stat in ("mean", "std", "min", "max")}
                    for stage in STAGES
                },
            }
        layers.append(entry)
    return {"tau": result.tau, "target_params": result.target_params, "removed_params": result.removed_params,
            "layers": layers}  # fmt: skip


def layer_rate(entry: dict[str, Any]) -> float:
    """Fraction of a layer's parameters removed."""
    return 1 - entry["params_after"] / entry["params_before"]
