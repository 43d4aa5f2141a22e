"""Per-layer statistics gathered while calibration windows flow through the model, and the group scores.

The accumulator composes three parts with one job each: forward hooks that sum what the criterion reads of
the layers' inputs and every layer's block influence (:mod:`prunelight.importance.statistics`), gradient
hooks that fold each weight gradient into Taylor group scores and free it
(:mod:`prunelight.importance.gradient_hooks`), and the scoring, which the criterion object does from the
reduced sums (:mod:`prunelight.importance.scoring`). What to hook is read off the criterion's attributes, so
no part knows a criterion by name. Everything is a sum, so summing the accumulators of N ranks gives exactly
the statistics of one process that saw all windows; :meth:`ImportanceAccumulator.reduce` is where that
happens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from prunelight.importance.criteria import criterion_info
from prunelight.importance.evidence import LayerEvidence
from prunelight.importance.gradient_hooks import GradientHooks
from prunelight.importance.gradients import GradientStatistics
from prunelight.importance.scoring import group_table
from prunelight.importance.statistics import LayerStatistics, StatisticsHooks
from prunelight.models.adapters import FamilyAdapter, LayerModules
from prunelight.models.projections import ATTENTION_PROJECTIONS, MLP_PROJECTIONS
from prunelight.ranking.table import GroupTable


@dataclass
class Calibrated:
    """What calibration hands to the ranking and the apply stage."""

    table: GroupTable
    input_means: dict[int, dict[str, torch.Tensor]]
    """Per layer, the calibration mean of the o and down inputs (FLAP bias compensation); empty unless the
    accumulator kept them (``input_means``, or the fluctuation criterion, which needs them anyway)."""
    tokens: int
    mean_loss: float | None
    gradients: list[dict] | None = None
    """Per layer and kind, gradient statistics (:meth:`GradientStatistics.summary`); None for forward
    criteria or when collection was off."""


class ImportanceAccumulator:
    """Hooks a causal LM's decoder layers and accumulates what ``criterion`` needs.

    Args:
        model: the ``*ForCausalLM`` model.
        adapter: its family adapter (the only source of module names).
        criterion: one of :data:`~prunelight.importance.criteria.CRITERIA`.
        magnitude_norm: 1 (sum of |W|) or 2 (L2 norm) for ``magnitude``.
        gradient_statistics: with a gradient criterion, also keep per-layer gradient statistics
            (docs/design.md: Diagnostics); three extra reductions per weight gradient.
        input_means: also keep the o/down input means that FLAP bias compensation folds into the biases
            (two reductions per layer and window; off unless compensation will use them).

    Only the statistics the criterion reads are hooked (its ``input_norms``, ``input_sums`` and
    ``input_sumsq``; the gradient hooks for ``needs_gradients``). Every criterion keeps the block influence
    (the block correction of the ranking needs it), so a Taylor run pays for its gradients and one cosine per
    layer, and nothing else.
    """

    def __init__(
        self,
        model: nn.Module,
        adapter: FamilyAdapter,
        criterion: str = "taylor",
        magnitude_norm: int = 1,
        gradient_statistics: bool = True,
        input_means: bool = False,
    ) -> None:
        self.criterion = criterion_info(criterion)
        self.keeps_means = self.criterion.input_sums or input_means
        self.magnitude_norm = magnitude_norm
        self.model, self.adapter = model, adapter
        self.head_dim = adapter.layout(model.config).head_dim
        self.layers: list[LayerModules] = [adapter.modules(layer) for layer in adapter.decoder_layers(model)]
        self.stats = [LayerStatistics.zeros(m, self.head_dim) for m in self.layers]
        # on the model's device like every other accumulator: NCCL reduces only CUDA tensors
        device = self.layers[0].q.weight.device
        self.tokens = torch.zeros((), dtype=torch.float64, device=device)
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.batches = torch.zeros((), dtype=torch.float64, device=device)
        self.gradients: GradientStatistics | None = None
        if gradient_statistics and self.criterion.needs_gradients:
            self.gradients = GradientStatistics(
                [m.q.weight.device for m in self.layers],
                {"attention": len(ATTENTION_PROJECTIONS), "mlp": len(MLP_PROJECTIONS)},
            )
        self.statistics = StatisticsHooks(
            self.layers,
            self.stats,
            input_norms=self.criterion.input_norms,
            input_sums=self.keeps_means,
            input_sumsq=self.criterion.input_sumsq,
        )
        self.gradient_hooks: GradientHooks | None = None
        if self.criterion.needs_gradients:
            self.gradient_hooks = GradientHooks(
                model, self.layers, self.stats, self.head_dim, self.criterion.second_order, self.gradients
            )
        self._paused = False

    @property
    def paused(self) -> bool:
        """While set, the hooks see passes without recording them (FSDP2's padding batches)."""
        return self._paused

    @paused.setter
    def paused(self, value: bool) -> None:
        self._paused = value
        self.statistics.paused = value
        if self.gradient_hooks is not None:
            self.gradient_hooks.paused = value

    # ------------------------------------------------------------------ hooks
    def attach(self) -> None:
        """Register the hooks; for gradient criteria only the prunable weights keep ``requires_grad``."""
        if self.statistics.attached:
            return
        self.statistics.attach(self.adapter.decoder_layers(self.model))
        if self.gradient_hooks is not None:
            self.gradient_hooks.attach()

    def detach(self) -> None:
        self.statistics.detach()
        if self.gradient_hooks is not None:
            self.gradient_hooks.detach()

    def count(self, tokens: int, loss: float | None = None) -> None:
        """Record one batch: its token count (for means and variances) and its calibration loss."""
        if self.paused:
            return
        self.tokens += tokens
        self.batches += 1
        if self.gradients is not None:
            self.gradients.flush()
        if loss is not None:
            self.loss_sum += loss

    # ------------------------------------------------------------------ results
    def reduce(
        self,
        reduce_sum: Callable[[torch.Tensor], torch.Tensor],
        reduce_max: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        """Combine every accumulator across ranks (the strategy's all-reduce: sum, and max for extremes)."""
        if self.gradients is not None:
            if reduce_max is None:
                raise ValueError("gradient statistics need reduce_max to combine their minima and maxima")
            self.gradients.reduce(reduce_sum, reduce_max)
        for s in self.stats:
            for name, tensor in s.tensors().items():
                setattr(s, name, reduce_sum(tensor.clone()))
        self.tokens = reduce_sum(self.tokens.clone())
        self.loss_sum = reduce_sum(self.loss_sum.clone())
        self.batches = reduce_sum(self.batches.clone())

    def result(self) -> Calibrated:
        """Group scores for the criterion, from the (reduced) statistics and the current weights."""
        n = float(self.tokens)
        if n < 2:
            raise RuntimeError("calibration saw fewer than 2 tokens; no statistics to score with")
        influence = torch.stack([s.influence_sum / n for s in self.stats]).cpu()
        evidence = [
            LayerEvidence(m, s, n, influence[index], self.head_dim, self.magnitude_norm)
            for index, (m, s) in enumerate(zip(self.layers, self.stats, strict=True))
        ]
        layers = self.adapter.decoder_layers(self.model)
        table = group_table(self.criterion, evidence, self.model, layers, influence)
        means = {index: e.input_means() for index, e in enumerate(evidence)} if self.keeps_means else {}
        batches = float(self.batches)
        mean_loss = float(self.loss_sum) / batches if self.criterion.needs_gradients and batches else None
        gradients = self.gradients.summary() if self.gradients is not None else None
        return Calibrated(table, means, int(n), mean_loss, gradients)
