"""What every importance criterion is: a small object that says what it needs and scores from it.

A criterion's class attributes tell the rest of prunelight what to gather and where it may be used
(calibration hooks, gradients, a Hessian, sequential calibration, structured or mask pruning, which sparse
patterns), so callers ask the object instead of comparing names; its methods do the scoring. Structured
pruning calls :meth:`Criterion.group_scores` per layer and kind; mask pruning calls :meth:`Criterion.prune`
per projection, which by default zeroes the lowest :meth:`Criterion.element_scores` in the pattern's shape.
"""

from __future__ import annotations

from abc import ABC
from typing import ClassVar, Protocol

import torch

from prunelight.errors import ConfigError
from prunelight.importance.evidence import LayerEvidence
from prunelight.importance.groups import group_sum
from prunelight.models.projections import KIND_PROJECTIONS


class InputNorms(Protocol):
    """Per-feature input norms of a layer's projections: calibration's :class:`LayerEvidence` or the sparse
    stage's :class:`~prunelight.importance.inputs.LayerInputs`."""

    def input_norm(self, projection: str) -> torch.Tensor: ...


class ProjectionPattern(Protocol):
    """What mask pruning asks one projection to lose (:class:`~prunelight.apply.sparse.LayerPattern`, which
    sits in apply/ and so is only described here): the settings a pruning method reads, and the pattern's
    mask of element scores."""

    sparsity: float
    comparison: str
    n: int
    m: int
    block_size: int
    damping: float

    @property
    def n_of_m(self) -> bool:
        """The pattern keeps ``n`` of every ``m`` (the sparsity is ``1 - n/m``, not :attr:`sparsity`)."""
        ...

    def mask(self, scores: torch.Tensor, label: str) -> torch.Tensor: ...


class Criterion(ABC):
    """One importance criterion; subclasses set the class attributes and override what they score.

    Register a subclass with :func:`~prunelight.importance.criteria.registry.register` and it is a choice of
    ``importance.criterion`` everywhere.
    """

    name: ClassVar[str]
    """The name a configuration chooses it by."""
    description: ClassVar[str]
    """One line for listings: what is summed over a group."""
    needs_gradients: ClassVar[bool] = False
    """Calibration runs a backward pass and the gradient hooks fold ``|W * g|`` into the group scores."""
    second_order: ClassVar[bool] = False
    """The gradient hooks add ``0.5 * (W * g)^2`` (with ``needs_gradients``)."""
    input_norms: ClassVar[bool] = False
    """Calibration sums the squared attention and MLP inputs (the norms of q/k/v's and gate/up's features)."""
    input_sums: ClassVar[bool] = False
    """Calibration sums the o/down inputs (their means; with ``input_sumsq``, their variances)."""
    input_sumsq: ClassVar[bool] = False
    """Calibration sums the squared o/down inputs (their norms)."""
    structured: ClassVar[bool] = True
    """It scores attention groups and MLP channels; False for one that only mask pruning can use."""
    sparse: ClassVar[bool] = False
    """Mask pruning can use it (it scores or prunes single weights)."""
    needs_layer_inputs: ClassVar[bool] = False
    """Mask pruning must calibrate to gather each layer's input statistics
    (:class:`~prunelight.importance.inputs.LayerInputs`) before it can score."""
    needs_hessian: ClassVar[bool] = False
    """Those layer input statistics include ``X^T X`` (a Hessian per shared input)."""
    sequential_only: ClassVar[bool] = False
    """Mask pruning must calibrate layer by layer, each layer seeing the already pruned ones before it."""
    patterns: ClassVar[tuple[str, ...] | None] = None
    """The sparse patterns it can prune in; None for every registered one."""
    sequential_scoring: ClassVar[bool] = False
    """Structured pruning scores it layer by layer on the dense model (one layer's statistics held at a time,
    :mod:`prunelight.calibration.obs_scores`) instead of from the one-pass evidence: :meth:`group_scores` is
    then never called."""

    # ------------------------------------------------------------------ structured
    def group_scores(self, layer: LayerEvidence, kind: str) -> torch.Tensor:
        """Scores of one layer's ``kind`` groups (``attention`` or ``mlp``), float64: by default the sum over
        the kind's projections of :meth:`projection_scores`."""
        return sum(self.projection_scores(layer.weight(name), layer, name) for name in KIND_PROJECTIONS[kind])

    def projection_scores(self, weight: torch.Tensor, layer: LayerEvidence, projection: str) -> torch.Tensor:
        """One projection's share of its groups' scores: its element scores summed per group."""
        return group_sum(self.element_scores(weight, layer, projection), projection, layer.groups(projection))

    # ------------------------------------------------------------------ single weights
    def element_scores(
        self, weight: torch.Tensor, inputs: InputNorms | None, projection: str
    ) -> torch.Tensor:
        """Per-element importance of ``projection``'s weight (float32); higher is kept."""
        raise NotImplementedError(f"criterion {self.name!r} has no per-weight scores")

    def prune(
        self,
        weight: torch.Tensor,
        inputs: InputNorms | None,
        projection: str,
        pattern: ProjectionPattern,
        label: str,
    ) -> torch.Tensor:
        """Zero ``weight`` in place where ``pattern`` drops the lowest element scores; return the mask."""
        keep = pattern.mask(self.element_scores(weight, inputs, projection), label)
        weight.mul_(keep)
        return keep

    def check_sparse(self, pattern: str, calibration: str) -> None:
        """Refuse a sparse setting this criterion cannot prune with (before anything is loaded)."""
        if self.patterns is not None and pattern not in self.patterns:
            raise ConfigError(f"{self.name} prunes in {' and '.join(self.patterns)} patterns, not {pattern}")
        if self.sequential_only and calibration != "sequential":
            raise ConfigError(f"{self.name} needs sparsity.calibration: sequential")
