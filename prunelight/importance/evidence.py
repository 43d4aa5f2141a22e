"""One decoder layer's reduced calibration statistics, as a criterion reads them to score the layer's groups.

The accumulator gathers sums; :class:`LayerEvidence` is one layer's sums seen as what they mean (input norms,
variances, Taylor scores, the current weights), so a criterion asks for a meaning, not a hook's field.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prunelight.importance.groups import group_count
from prunelight.importance.statistics import LayerStatistics
from prunelight.models.adapters import LayerModules
from prunelight.models.projections import INPUT_OF
from prunelight.models.sharding import full_tensor

_INPUT_SUMSQ = {
    "q": "attn_input_sumsq",
    "o": "o_input_sumsq",
    "gate": "mlp_input_sumsq",
    "down": "down_input_sumsq",
}
"""The statistic holding the summed squared input each shared input (:data:`INPUT_OF`) was hooked into."""
_INPUT_MOMENTS = {"o": ("o_input_sum", "o_input_sumsq"), "down": ("down_input_sum", "down_input_sumsq")}
"""The projections whose input mean and variance are kept (FLAP scores and compensates their columns)."""


@dataclass(frozen=True)
class LayerEvidence:
    """One decoder layer's reduced calibration statistics and weights, as a criterion reads them.

    ``tokens`` is the number of calibration tokens ``n`` the sums ran over; ``influence`` the layer's mean
    block influence (a CPU scalar); ``magnitude_norm`` the run's choice of L1 or L2 magnitude.
    """

    modules: LayerModules
    statistics: LayerStatistics
    tokens: float
    influence: torch.Tensor
    head_dim: int
    magnitude_norm: int = 1

    def weight(self, projection: str) -> torch.Tensor:
        """The whole weight of ``projection`` (gathered when sharded)."""
        return full_tensor(getattr(self.modules, projection).weight)

    def groups(self, projection: str) -> int:
        return group_count(self.modules, projection, self.head_dim)

    def input_norm(self, projection: str) -> torch.Tensor:
        """``||X_j||_2`` over all calibration tokens, per input feature of ``projection``."""
        return getattr(self.statistics, _INPUT_SUMSQ[INPUT_OF[projection]]).sqrt()

    def input_variance(self, projection: str) -> torch.Tensor | None:
        """Sample variance of each input feature of o or down; None for the other projections."""
        if projection not in _INPUT_MOMENTS:
            return None
        total, total_sq = (getattr(self.statistics, name) for name in _INPUT_MOMENTS[projection])
        n = self.tokens
        return (total_sq - total.square() / n) / (n - 1)

    def input_means(self) -> dict[str, torch.Tensor]:
        """The o/down input means (FLAP bias compensation), on the CPU."""
        return {
            p: (getattr(self.statistics, names[0]) / self.tokens).cpu() for p, names in _INPUT_MOMENTS.items()
        }

    def gradient_scores(self, kind: str) -> torch.Tensor:
        """The Taylor group scores the gradient hooks summed for ``kind`` (attention or mlp)."""
        return {"attention": self.statistics.gradient_attention, "mlp": self.statistics.gradient_mlp}[kind]
