"""mlp_multiple: pruned layers keep a multiple of it, the plan stays a threshold on scores, and 1 is off."""

from __future__ import annotations

import pytest
import torch
from test_ranking import random_table  # noqa: E402 (tests/ranking is on sys.path under pytest)

from prunelight.errors import ConfigError
from prunelight.ranking import RankingConfig, rank
from prunelight.ranking.allocation import align_kept


@pytest.mark.parametrize("allocation", ["global", "uniform"])
def test_off_changes_nothing(allocation):
    table = random_table(layers=6, heads=8, channels=100, scales=[1, 3, 0.5, 2, 1, 4])
    base = rank(table, RankingConfig(ratio=0.3, allocation=allocation))
    same = rank(table, RankingConfig(ratio=0.3, allocation=allocation, mlp_multiple=1))
    assert [p.mlp_channels for p in base.plan.layers] == [p.mlp_channels for p in same.plan.layers]


@pytest.mark.parametrize("allocation", ["global", "uniform"])
def test_pruned_layers_keep_a_multiple_and_the_lowest_scores_go(allocation):
    table = random_table(layers=6, heads=8, channels=100, scales=[1, 3, 0.5, 2, 1, 4])
    base = rank(table, RankingConfig(ratio=0.3, allocation=allocation))
    aligned = rank(table, RankingConfig(ratio=0.3, allocation=allocation, mlp_multiple=16))
    for layer, (before, after) in enumerate(zip(base.plan.layers, aligned.plan.layers, strict=True)):
        kept = 100 - len(after.mlp_channels)
        if before.mlp_channels:
            assert kept % 16 == 0, (layer, kept)
            assert abs(kept - (100 - len(before.mlp_channels))) <= 8
        else:
            assert not after.mlp_channels
        # Whatever the count, the removed channels are a prefix of the layer's base-plan order: the
        # aligned plan adds or spares channels at the threshold, never in the middle.
        small, large = sorted((set(before.mlp_channels), set(after.mlp_channels)), key=len)
        assert small <= large
    total = sum(len(p.mlp_channels) for p in aligned.plan.layers)
    assert abs(total - sum(len(p.mlp_channels) for p in base.plan.layers)) <= 8 * 6


def test_limits_win_over_alignment():
    scores = [torch.arange(10, dtype=torch.float64)]
    removed = [torch.tensor([0, 1, 2])]  # keeps 7: the neighbours are 4 (removes 6) and 8 (removes 2)
    assert align_kept(scores, removed, [0], [10], 4)[0].tolist() == [0, 1]  # 8 is nearer
    assert align_kept(scores, removed, [3], [10], 4)[0].tolist() == [0, 1, 2, 3, 4, 5]  # at least 3 go
    assert align_kept(scores, removed, [3], [5], 4)[0].tolist() == [0, 1, 2]  # neither fits: unchanged


def test_a_bad_multiple_is_rejected():
    with pytest.raises(ConfigError, match="mlp_multiple"):
        RankingConfig(mlp_multiple=0)
