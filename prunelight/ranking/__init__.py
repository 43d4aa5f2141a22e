"""Ranking: group scores -> normalisation -> block (T) and layer (tau) corrections -> allocation -> plan."""

from prunelight.ranking.plan import LayerPlan, PruningPlan

__all__ = ["LayerPlan", "PruningPlan"]
