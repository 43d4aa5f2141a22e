"""Gradient hooks that fold each weight gradient into Taylor group scores the moment it is accumulated.

The hook scores the gradient and frees it, so a gradient criterion never holds a second copy of the model's
gradients; with gradient statistics on, the same hook hands the gradient (or the fused kernel's moments of it)
to :class:`~prunelight.importance.gradients.GradientStatistics`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.distributed.tensor import DTensor
from torch.utils.hooks import RemovableHandle

from prunelight.importance.gradients import GradientStatistics
from prunelight.importance.groups import group_count
from prunelight.importance.kernels import taylor_scores
from prunelight.importance.statistics import LayerStatistics
from prunelight.models.adapters import LayerModules
from prunelight.models.projections import ATTENTION_PROJECTIONS, MLP_PROJECTIONS


class GradientHooks:
    """Post-accumulate-grad hooks on every prunable weight, summing ``|W * g|`` per group into ``stats``.

    Args:
        model: the model; while attached only the prunable weights keep ``requires_grad``.
        modules: every decoder layer's projections.
        stats: one :class:`LayerStatistics` per layer (its ``gradient_attention``/``gradient_mlp``).
        head_dim: to count the attention groups.
        second_order: add ``0.5 * (W * g)^2`` (taylor2).
        gradients: where the gradient statistics go, or None.
    """

    def __init__(
        self,
        model: nn.Module,
        modules: Sequence[LayerModules],
        stats: Sequence[LayerStatistics],
        head_dim: int,
        second_order: bool,
        gradients: GradientStatistics | None,
    ) -> None:
        self.model, self.modules, self.stats = model, modules, stats
        self.head_dim, self.second_order, self.gradients = head_dim, second_order, gradients
        self.paused = False
        """While set, gradients are dropped unscored (FSDP2's padding batches)."""
        self._handles: list[RemovableHandle] = []
        self._requires_grad: dict[nn.Parameter, bool] = {}

    def attach(self) -> None:
        """Freeze every parameter but the prunable weights and hook those."""
        for p in self.model.parameters():
            self._requires_grad[p] = p.requires_grad
            p.requires_grad_(False)
        for index, m in enumerate(self.modules):
            for name in ATTENTION_PROJECTIONS + MLP_PROJECTIONS:
                self._watch_gradient(getattr(m, name), self._grad_hook(index, name))

    def detach(self) -> None:
        """Remove the hooks and give every parameter its ``requires_grad`` back (and no gradient)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for p, flag in self._requires_grad.items():
            p.requires_grad_(flag)
            p.grad = None
        self._requires_grad.clear()

    def _watch_gradient(self, linear: nn.Module, hook: Callable[[torch.Tensor], None]) -> None:
        """Run ``hook`` on each of this rank's gradients of ``linear.weight``, whole, as it is accumulated.

        A plain weight is hooked once. Under FSDP2 the module holds a shard (a ``DTensor``) between passes
        and, for its forward and backward, a whole ``nn.Parameter`` that FSDP2 all-gathers into and keeps
        across passes; that parameter is hooked at the first forward that shows it. The hook drops the
        gradient, so FSDP2 has nothing to reduce-scatter: each rank scores its own windows, as under DDP.
        """
        weight = linear.weight
        weight.requires_grad_(True)
        if not isinstance(weight, DTensor):
            self._handles.append(weight.register_post_accumulate_grad_hook(hook))
            return
        hooked: set[int] = set()

        def on_forward(module: nn.Module, _args: tuple) -> None:
            whole = module.weight
            if isinstance(whole, DTensor) or id(whole) in hooked:
                return
            hooked.add(id(whole))
            whole.requires_grad_(True)  # FSDP2 made it when the shard may not have required grad yet
            self._handles.append(whole.register_post_accumulate_grad_hook(hook))

        self._handles.append(linear.register_forward_pre_hook(on_forward))

    def _grad_hook(self, index: int, projection: str) -> Callable[[torch.Tensor], None]:
        m, s = self.modules[index], self.stats[index]
        attention = projection in ATTENTION_PROJECTIONS
        kind = "attention" if attention else "mlp"
        target = s.gradient_attention if attention else s.gradient_mlp
        second = self.second_order
        groups = group_count(m, projection, self.head_dim)
        gradients = self.gradients

        def hook(param: torch.Tensor) -> None:
            if self.paused:
                param.grad = None
                return
            with torch.no_grad():
                grad = param.grad
                score, moments = taylor_scores(param, grad, projection, groups, second, gradients is not None)
                target.add_(score)
                if gradients is not None:
                    gradients.observe(index, kind, grad, moments)
            param.grad = None

        return hook
