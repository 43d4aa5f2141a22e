"""Forward hooks that sum, per decoder layer, what a criterion reads of the layer's inputs and outputs.

Only what the criterion asks for is hooked (Wanda: the input norms of q, gate, o and down; FLAP's fluctuation:
the o/down input means and variances), plus every layer's block influence, which the ranking's block
correction needs whatever the criterion. Everything is a float64 sum over tokens, so the sums of N ranks are
the statistics of one process that saw every window.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from prunelight.importance.groups import attention_groups
from prunelight.importance.kernels import influence_sum
from prunelight.models.adapters import LayerModules


@dataclass
class LayerStatistics:
    """Sums over all calibration tokens for one decoder layer (float64, on the layer's device)."""

    attn_input_sumsq: torch.Tensor
    o_input_sum: torch.Tensor
    o_input_sumsq: torch.Tensor
    mlp_input_sumsq: torch.Tensor
    down_input_sum: torch.Tensor
    down_input_sumsq: torch.Tensor
    influence_sum: torch.Tensor
    gradient_attention: torch.Tensor
    gradient_mlp: torch.Tensor

    @classmethod
    def zeros(cls, m: LayerModules, head_dim: int) -> LayerStatistics:
        def z(n: int) -> torch.Tensor:
            return torch.zeros(n, dtype=torch.float64, device=m.q.weight.device)

        return cls(
            attn_input_sumsq=z(m.q.in_features),
            o_input_sum=z(m.o.in_features),
            o_input_sumsq=z(m.o.in_features),
            mlp_input_sumsq=z(m.gate.in_features),
            down_input_sum=z(m.down.in_features),
            down_input_sumsq=z(m.down.in_features),
            influence_sum=z(1)[0],
            gradient_attention=z(attention_groups(m, head_dim)),
            gradient_mlp=z(m.down.in_features),
        )

    def tensors(self) -> dict[str, torch.Tensor]:
        return dict(vars(self))


def summable(part: torch.Tensor) -> torch.Tensor:
    """One pass's float64 sum, rounded to float32 before it joins a float64 total across passes.

    Why: a float64 sum over a pass's tokens can use all 53 bits, and then adding the passes in another
    order (DDP: each rank sums its own batches, the all-reduce adds the ranks' totals) changes the last bit.
    Values of at most 24 bits add exactly in float64, in any order, while their magnitudes lie within
    2^29 of each other (the passes of one calibration do), so N ranks give one process's bits. The cost is
    a relative 6e-8 on each pass's value.
    """
    return part.float().double()


def _feature_sumsq(x: torch.Tensor) -> torch.Tensor:
    x = x.reshape(-1, x.shape[-1])
    return torch.linalg.vector_norm(x, ord=2, dim=0, dtype=torch.float32).double().square()


def _feature_sum(x: torch.Tensor) -> torch.Tensor:
    """Per-feature sum of one batch in float32 (one batch's tokens), accumulated across batches in float64."""
    return x.reshape(-1, x.shape[-1]).sum(dim=0, dtype=torch.float32).double()


def _add_moments(x: torch.Tensor, total: torch.Tensor, total_sq: torch.Tensor) -> None:
    """Per-feature sum and sum of squares (mean and variance of an o/down input)."""
    total.add_(_feature_sum(x))
    total_sq.add_(_feature_sumsq(x))


class StatisticsHooks:
    """The forward hooks of one accumulator, writing into its :class:`LayerStatistics`.

    Args:
        modules: every decoder layer's projections.
        stats: one :class:`LayerStatistics` per layer, summed into in place.
        input_norms: sum the squared q and gate inputs (the attention and MLP inputs' norms).
        input_sums: sum the o and down inputs (their means).
        input_sumsq: sum the squared o and down inputs (their norms; with ``input_sums``, their variances).
    """

    def __init__(
        self,
        modules: Sequence[LayerModules],
        stats: Sequence[LayerStatistics],
        input_norms: bool,
        input_sums: bool,
        input_sumsq: bool,
    ) -> None:
        self.modules, self.stats = modules, stats
        self.input_norms, self.input_sums, self.input_sumsq = input_norms, input_sums, input_sumsq
        self.paused = False
        """While set, the hooks see passes without recording them (FSDP2's padding batches)."""
        self._handles: list[RemovableHandle] = []

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self, layers: Sequence[nn.Module]) -> None:
        """Hook ``layers`` (the decoder layers whose projections are ``modules``)."""
        for layer, m, s in zip(layers, self.modules, self.stats, strict=True):
            if self.input_norms:
                self._pre_hook(m.q, lambda x, s=s: s.attn_input_sumsq.add_(_feature_sumsq(x)))
                self._pre_hook(m.gate, lambda x, s=s: s.mlp_input_sumsq.add_(_feature_sumsq(x)))
            self._output_hook(m.o, s.o_input_sum, s.o_input_sumsq)
            self._output_hook(m.down, s.down_input_sum, s.down_input_sumsq)
            self._handles.append(layer.register_forward_hook(self._influence_hook(s), with_kwargs=True))

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _output_hook(self, module: nn.Module, total: torch.Tensor, total_sq: torch.Tensor) -> None:
        """The o/down input statistics this run needs: sums (means), sums of squares (norms), or both."""
        if self.input_sums and self.input_sumsq:
            self._pre_hook(module, lambda x: _add_moments(x, total, total_sq))
        elif self.input_sums:
            self._pre_hook(module, lambda x: total.add_(_feature_sum(x)))
        elif self.input_sumsq:
            self._pre_hook(module, lambda x: total_sq.add_(_feature_sumsq(x)))

    def _pre_hook(self, module: nn.Module, fn: Callable[[torch.Tensor], object]) -> None:
        def hook(_module: nn.Module, args: tuple) -> None:
            if not self.paused:
                with torch.no_grad():
                    fn(args[0].detach())

        self._handles.append(module.register_forward_pre_hook(hook))

    def _influence_hook(self, s: LayerStatistics) -> Callable:
        def hook(_layer: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
            if self.paused:
                return
            h_in = args[0] if args else kwargs["hidden_states"]
            h_out = output[0] if isinstance(output, tuple) else output
            with torch.no_grad():
                s.influence_sum.add_(summable(influence_sum(h_in.detach(), h_out.detach())))

        return hook
