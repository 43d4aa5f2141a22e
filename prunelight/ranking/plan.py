"""The pruning plan: what the ranking decided to remove, and what the apply stage removes.

It is the one hand-over between ranking and apply, so it is plain data that round-trips through JSON
(``analysis/plan.json``). Indices always refer to the *dense* model's layers, groups and channels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class LayerPlan:
    """What goes from one decoder layer.

    ``attention_groups`` are key/value-head indices: removing group ``g`` removes key/value head ``g`` and
    the ``num_key_value_groups`` query heads that share it. ``mlp_channels`` are indices into the
    intermediate dimension (row of gate/up, column of down). ``remove_layer`` drops the whole layer.
    """

    layer: int
    attention_groups: list[int] = field(default_factory=list)
    mlp_channels: list[int] = field(default_factory=list)
    remove_layer: bool = False

    def __post_init__(self) -> None:
        self.attention_groups = sorted(int(g) for g in self.attention_groups)
        self.mlp_channels = sorted(int(c) for c in self.mlp_channels)


@dataclass
class PruningPlan:
    """One :class:`LayerPlan` per decoder layer of the dense model, in order."""

    layers: list[LayerPlan]

    def to_dict(self) -> dict[str, Any]:
        return {"layers": [asdict(layer) for layer in self.layers]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruningPlan:
        return cls([LayerPlan(**layer) for layer in data["layers"]])

    @property
    def removed_layers(self) -> list[int]:
        return [p.layer for p in self.layers if p.remove_layer]

    def is_empty(self) -> bool:
        return not any(p.attention_groups or p.mlp_channels or p.remove_layer for p in self.layers)
