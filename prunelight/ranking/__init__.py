"""Ranking: group scores -> normalisation -> block (T) and layer (tau) corrections -> allocation -> plan."""

from prunelight.ranking.plan import LayerPlan, PruningPlan
from prunelight.ranking.rank import STAGES, RankingConfig, RankingResult, rank
from prunelight.ranking.table import KINDS, GroupTable

__all__ = [
    "KINDS",
    "STAGES",
    "GroupTable",
    "LayerPlan",
    "PruningPlan",
    "RankingConfig",
    "RankingResult",
    "rank",
]
