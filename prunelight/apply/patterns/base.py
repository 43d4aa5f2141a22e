"""What every sparse pattern is: the shape in which mask pruning removes weights, as a small object.

A pattern says which settings it needs (:meth:`SparsePattern.check`), what sparsity it reaches
(:meth:`SparsePattern.target`), in which units a projection loses weights (:meth:`SparsePattern.removal_unit`,
what the exact per-projection counts round to) and how a mask follows from element scores
(:meth:`SparsePattern.mask`). Its flags tell the sparse stage what else to do, so no caller compares pattern
names.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Protocol

import torch

from prunelight.errors import ConfigError


class PatternSettings(Protocol):
    """The settings a pattern checks and reads its target from (the ``sparsity`` section,
    ``stages.settings.SparsitySettings``, which sits floors above and is therefore only described here)."""

    sparsity: float | None
    n: int
    m: int
    allocation: str


class ProjectionShape(Protocol):
    """What one projection is asked to lose (:class:`~prunelight.apply.sparse.LayerPattern`)."""

    sparsity: float
    comparison: str
    n: int
    m: int
    block: tuple[int, int]
    tile_sparsity: float


class SparsePattern(ABC):
    """One sparse pattern; subclasses set the flags and write :meth:`mask`.

    Register a subclass with :func:`~prunelight.apply.patterns.registry.register` and it is a choice of
    ``sparsity.pattern``.
    """

    name: ClassVar[str]
    """The name ``sparsity.pattern`` chooses it by."""
    n_of_m: ClassVar[bool] = False
    """It keeps ``n`` of every ``m`` consecutive inputs: the sparsity is fixed at ``1 - n/m`` in every layer
    (no ``sparsity`` setting, uniform allocation, no per-projection counts)."""
    tiles: ClassVar[bool] = False
    """It zeroes whole ``block`` tiles; the measurement counts the elements of all-zero tiles."""
    structures: ClassVar[bool] = False
    """Before any mask, it removes attention groups and MLP channels through the structured core."""

    @abstractmethod
    def mask(self, scores: torch.Tensor, pattern: ProjectionShape, label: str) -> torch.Tensor:
        """The keep mask of one projection with element ``scores`` (higher = kept)."""

    def removal_unit(self, out_features: int, comparison: str, block: tuple[int, int]) -> int:
        """Elements that go together in a projection with ``out_features`` rows (single weights: 1)."""
        return 1

    def check(self, settings: PatternSettings) -> None:
        """Refuse settings the pattern cannot meet (a pattern with a free sparsity needs one)."""
        from prunelight.ranking.patterns import check_sparsity

        if settings.sparsity is None:
            raise ConfigError(f"pattern {self.name} needs sparsity.sparsity in [0, 1), e.g. 0.5")
        check_sparsity(settings.sparsity)

    def target(self, settings: PatternSettings) -> float:
        """The overall sparsity the settings ask for."""
        return float(settings.sparsity or 0.0)
