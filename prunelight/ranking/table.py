"""The input of the ranking: every prunable group's score, per layer and kind, and its cost in parameters."""

from __future__ import annotations

from dataclasses import dataclass

import torch

KINDS = ("attention", "mlp")


@dataclass
class GroupTable:
    """Scores s[l, g] of the structured groups of every decoder layer (docs/design.md: Prunable groups).

    Attributes:
        attention: per layer, one non-negative score per attention group (key/value head and its query
            heads), shape ``[num_kv_heads_l]``.
        mlp: per layer, one non-negative score per MLP channel, shape ``[intermediate_size_l]``.
        attention_group_params: parameters that removing one attention group of layer ``l`` removes (rows of
            q/k/v, columns of o, the q/k/v bias entries).
        mlp_channel_params: parameters that removing one MLP channel of layer ``l`` removes.
        block_importance: per layer block importance ``B[l]`` (block influence, 1 - cos), used by the
            temperature correction and by layer removal; None when it was not measured.
        layer_params: all parameters of decoder layer ``l`` (norms included), for layer removal.
        total_params: all parameters of the model, embeddings included, for a ratio of all parameters.
    """

    attention: list[torch.Tensor]
    mlp: list[torch.Tensor]
    attention_group_params: list[int]
    mlp_channel_params: list[int]
    layer_params: list[int]
    total_params: int
    block_importance: torch.Tensor | None = None

    @property
    def num_layers(self) -> int:
        return len(self.attention)

    def scores(self, kind: str) -> list[torch.Tensor]:
        return self.attention if kind == "attention" else self.mlp

    def group_params(self, kind: str) -> list[int]:
        return self.attention_group_params if kind == "attention" else self.mlp_channel_params

    def prunable_params(self) -> int:
        """Parameters in all attention groups and MLP channels: the base of the default target ratio."""
        return sum(
            len(s) * p
            for kind in KINDS
            for s, p in zip(self.scores(kind), self.group_params(kind), strict=True)
        )
