"""ZipLM's structured OBS saliency (Kurtic et al., 2023): a group matters as much as the layer's output error
grows when it is removed and the other columns are re-optimised.

Per decoder layer, with ``H`` the second moment of the projection's input over the calibration tokens,
the exact greedy grouped OBS (:func:`~prunelight.apply.reconstruction.obs_group_scores`) removes o_proj's
attention groups (every input column of the query heads sharing one key/value head) and down_proj's MLP
channels one at a time, cheapest first, re-optimising the live columns after each removal; a group's score is
the error increase at its step. The statistics are ``d^2`` per projection, so the scores come from a
sequential pass that holds one layer's at a time
(:func:`prunelight.calibration.obs_scores.obs_scores_sequentially`), not from the one-pass evidence the other
criteria read.
"""

from __future__ import annotations

import torch

from prunelight.errors import ConfigError
from prunelight.importance.criteria.base import Criterion
from prunelight.importance.criteria.registry import register
from prunelight.importance.evidence import LayerEvidence

SURVIVOR_FACTOR = 2.0
"""The greedy's last group is never removed (its increase is ``+inf``); it scores this many times the layer's
largest finite increase instead, so that it still ranks first in its layer while the normalisation and the
corrections of the ranking see finite numbers of the layer's own scale."""


@register
class OBS(Criterion):
    """Exact greedy grouped OBS on o_proj (attention groups) and down_proj (MLP channels), layer by layer."""

    name = "obs"
    description = "ZipLM: the layer's output error increase when a group is removed by greedy grouped OBS"
    sequential_scoring = True

    def group_scores(self, layer: LayerEvidence, kind: str) -> torch.Tensor:
        raise ConfigError(
            "criterion 'obs' is scored layer by layer (the prune stage's sequential pass), not from one-pass "
            "calibration statistics"
        )


def finite_scores(increase: torch.Tensor) -> torch.Tensor:
    """One layer's greedy OBS increases with the survivor's ``+inf`` replaced by :data:`SURVIVOR_FACTOR` times
    the largest finite increase (0 when the layer has a single group). The ranking never removes the survivor
    anyway (every layer keeps at least one group of each kind); a finite score keeps the layer's mean, z-score
    and block correction finite."""
    finite = torch.isfinite(increase)
    top = float(increase[finite].max()) if bool(finite.any()) else 0.0
    return torch.where(finite, increase, torch.full_like(increase, SURVIVOR_FACTOR * top))
