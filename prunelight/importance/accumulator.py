"""Per-layer statistics gathered while calibration windows flow through the model.

Forward hooks keep sums (float64) of the inputs of q, o, gate and down and of each decoder layer's block
influence; gradient hooks fold each weight's gradient into group scores the moment it is accumulated and
then free it, so a gradient criterion never holds a second copy of the model's gradients. Everything is a
sum, so summing the accumulators of N ranks gives exactly the statistics of one process that saw all
windows; :meth:`ImportanceAccumulator.reduce` is where that happens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.distributed.tensor import DTensor
from torch.utils.hooks import RemovableHandle

from prunelight.importance.criteria import (
    criterion_info,
    fluctuation_elements,
    group_sum,
    magnitude_elements,
    wanda_elements,
)
from prunelight.importance.gradients import GradientStatistics
from prunelight.importance.kernels import influence_sum, taylor_scores
from prunelight.models.adapters import FamilyAdapter, LayerModules
from prunelight.models.projections import (
    ATTENTION_PROJECTIONS,
    COLUMN_PROJECTIONS,
    MLP_PROJECTIONS,
    ROW_PROJECTIONS,
)
from prunelight.models.sharding import full_tensor
from prunelight.ranking.table import GroupTable


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

    def tensors(self) -> dict[str, torch.Tensor]:
        return dict(vars(self))


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


class ImportanceAccumulator:
    """Hooks a causal LM's decoder layers and accumulates what ``criterion`` needs.

    Args:
        model: the ``*ForCausalLM`` model.
        adapter: its family adapter (the only source of module names).
        criterion: one of :data:`~prunelight.importance.criteria.CRITERIA`.
        magnitude_norm: 1 (sum of |W|) or 2 (L2 norm) for ``magnitude``.
        gradient_statistics: with a gradient criterion, also keep per-layer gradient statistics (DESIGN:
            Diagnostics); three extra reductions per weight gradient.
        input_means: also keep the o/down input means that FLAP bias compensation folds into the biases
            (two reductions per layer and window; off unless compensation will use them).

    Only the statistics the criterion reads are hooked: wanda reads the input norms of q, gate, o and
    down; fluctuation the o/down input variances; the gradient criteria and magnitude none. Every
    criterion keeps the block influence (the block correction of the ranking needs it), so a Taylor run
    pays for its gradients and one cosine per layer, and nothing else.
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
        self.info = criterion_info(criterion)
        self.input_norms = criterion == "wanda"
        self.output_sums = criterion == "fluctuation" or input_means
        self.output_sumsq = criterion in ("wanda", "fluctuation")
        self.criterion = criterion
        self.magnitude_norm = magnitude_norm
        self.model, self.adapter = model, adapter
        self.head_dim = adapter.layout(model.config).head_dim
        self.layers: list[LayerModules] = [adapter.modules(layer) for layer in adapter.decoder_layers(model)]
        self.stats = [self._zeros(m) for m in self.layers]
        # on the model's device like every other accumulator: NCCL reduces only CUDA tensors
        device = self.layers[0].q.weight.device
        self.tokens = torch.zeros((), dtype=torch.float64, device=device)
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.batches = torch.zeros((), dtype=torch.float64, device=device)
        self.gradients: GradientStatistics | None = None
        if gradient_statistics and self.info.needs_gradients:
            self.gradients = GradientStatistics(
                [m.q.weight.device for m in self.layers],
                {"attention": len(ATTENTION_PROJECTIONS), "mlp": len(MLP_PROJECTIONS)},
            )
        self._handles: list[RemovableHandle] = []
        self._requires_grad: dict[nn.Parameter, bool] = {}
        self.paused = False
        """While set, the hooks see passes without recording them (FSDP2's padding batches)."""

    # ------------------------------------------------------------------ shapes
    def attention_groups(self, m: LayerModules) -> int:
        return m.k.out_features // self.head_dim

    def _zeros(self, m: LayerModules) -> LayerStatistics:
        def z(n: int) -> torch.Tensor:
            return torch.zeros(n, dtype=torch.float64, device=m.q.weight.device)

        hidden = m.q.in_features
        return LayerStatistics(
            attn_input_sumsq=z(hidden),
            o_input_sum=z(m.o.in_features),
            o_input_sumsq=z(m.o.in_features),
            mlp_input_sumsq=z(m.gate.in_features),
            down_input_sum=z(m.down.in_features),
            down_input_sumsq=z(m.down.in_features),
            influence_sum=z(1)[0],
            gradient_attention=z(self.attention_groups(m)),
            gradient_mlp=z(m.down.in_features),
        )

    def _groups(self, m: LayerModules, projection: str) -> int:
        return self.attention_groups(m) if projection in ATTENTION_PROJECTIONS else m.down.in_features

    # ------------------------------------------------------------------ hooks
    def attach(self) -> None:
        """Register the hooks; for gradient criteria only the prunable weights keep ``requires_grad``."""
        if self._handles:
            return
        for index, (layer, m) in enumerate(
            zip(self.adapter.decoder_layers(self.model), self.layers, strict=True)
        ):
            s = self.stats[index]
            if self.input_norms:
                self._pre_hook(m.q, lambda x, s=s: s.attn_input_sumsq.add_(_feature_sumsq(x)))
                self._pre_hook(m.gate, lambda x, s=s: s.mlp_input_sumsq.add_(_feature_sumsq(x)))
            self._output_hook(m.o, s.o_input_sum, s.o_input_sumsq)
            self._output_hook(m.down, s.down_input_sum, s.down_input_sumsq)
            self._handles.append(layer.register_forward_hook(self._influence_hook(s), with_kwargs=True))
        if self.info.needs_gradients:
            for p in self.model.parameters():
                self._requires_grad[p] = p.requires_grad
                p.requires_grad_(False)
            for index, m in enumerate(self.layers):
                for name in ATTENTION_PROJECTIONS + MLP_PROJECTIONS:
                    self._watch_gradient(getattr(m, name), self._grad_hook(index, name))

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

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for p, flag in self._requires_grad.items():
            p.requires_grad_(flag)
            p.grad = None
        self._requires_grad.clear()

    def _output_hook(self, module: nn.Module, total: torch.Tensor, total_sq: torch.Tensor) -> None:
        """The o/down input statistics this run needs: sums (means), sums of squares (norms), or both."""
        if self.output_sums and self.output_sumsq:
            self._pre_hook(module, lambda x: _add_moments(x, total, total_sq))
        elif self.output_sums:
            self._pre_hook(module, lambda x: total.add_(_feature_sum(x)))
        elif self.output_sumsq:
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
                s.influence_sum.add_(influence_sum(h_in.detach(), h_out.detach()))

        return hook

    def _grad_hook(self, index: int, projection: str) -> Callable[[torch.Tensor], None]:
        m, s = self.layers[index], self.stats[index]
        kind = "attention" if projection in ATTENTION_PROJECTIONS else "mlp"
        target = s.gradient_attention if kind == "attention" else s.gradient_mlp
        second = self.criterion == "taylor2"
        groups = self._groups(m, projection)
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
        attention, mlp, means = [], [], {}
        influence = torch.stack([s.influence_sum / n for s in self.stats]).cpu()
        for index, (m, s) in enumerate(zip(self.layers, self.stats, strict=True)):
            inputs = {
                "q": s.attn_input_sumsq,
                "k": s.attn_input_sumsq,
                "v": s.attn_input_sumsq,
                "o": s.o_input_sumsq,
                "gate": s.mlp_input_sumsq,
                "up": s.mlp_input_sumsq,
                "down": s.down_input_sumsq,
            }
            variance = {}  # only fluctuation hooked both sums; for the others they are zeros
            if self.output_sums and self.output_sumsq:
                variance = {
                    "o": (s.o_input_sumsq - s.o_input_sum.square() / n) / (n - 1),
                    "down": (s.down_input_sumsq - s.down_input_sum.square() / n) / (n - 1),
                }
            per_kind = {}
            for kind, names in (("attention", ATTENTION_PROJECTIONS), ("mlp", MLP_PROJECTIONS)):
                if self.info.needs_gradients:
                    score = s.gradient_attention if kind == "attention" else s.gradient_mlp
                else:
                    score = sum(
                        self._forward_score(
                            full_tensor(getattr(m, name).weight), name, inputs[name], variance.get(name), m
                        )
                        for name in names
                    )
                    if self.criterion == "magnitude" and self.magnitude_norm == 2:
                        score = score.sqrt()
                    if self.criterion == "block_influence":
                        score = influence[index].to(score) * score / score.mean().clamp_min(1e-30)
                per_kind[kind] = score.detach().double().cpu()
            attention.append(per_kind["attention"])
            mlp.append(per_kind["mlp"])
            if self.output_sums:
                means[index] = {"o": (s.o_input_sum / n).cpu(), "down": (s.down_input_sum / n).cpu()}
        layers = self.adapter.decoder_layers(self.model)
        table = GroupTable(
            attention=attention,
            mlp=mlp,
            attention_group_params=[self._group_params(m, ATTENTION_PROJECTIONS) for m in self.layers],
            mlp_channel_params=[self._group_params(m, MLP_PROJECTIONS) for m in self.layers],
            layer_params=[sum(p.numel() for p in layer.parameters()) for layer in layers],
            total_params=sum(p.numel() for p in self.model.parameters()),
            block_importance=influence.double(),
        )
        batches = float(self.batches)
        mean_loss = float(self.loss_sum) / batches if self.info.needs_gradients and batches else None
        gradients = self.gradients.summary() if self.gradients is not None else None
        return Calibrated(table, means, int(n), mean_loss, gradients)

    def _forward_score(
        self,
        weight: torch.Tensor,
        projection: str,
        input_sumsq: torch.Tensor,
        variance: torch.Tensor | None,
        m: LayerModules,
    ) -> torch.Tensor:
        groups = self._groups(m, projection)
        if self.criterion in ("magnitude", "block_influence"):
            elements = magnitude_elements(
                weight, 1 if self.criterion == "block_influence" else self.magnitude_norm
            )
        elif self.criterion == "wanda":
            elements = wanda_elements(weight, input_sumsq.sqrt())
        elif self.criterion == "fluctuation":
            if variance is None:  # FLAP scores only the output projections' input channels
                return torch.zeros(groups, dtype=torch.float64, device=weight.device)
            elements = fluctuation_elements(weight, variance.clamp_min(0))
        else:
            raise AssertionError(self.criterion)
        return group_sum(elements, projection, groups)

    def _group_params(self, m: LayerModules, names: tuple[str, ...]) -> int:
        total = 0
        for name in names:
            linear: nn.Linear = getattr(m, name)
            groups = self._groups(m, name)
            if name in ROW_PROJECTIONS:
                total += (linear.in_features + (linear.bias is not None)) * linear.out_features // groups
            elif name in COLUMN_PROJECTIONS:
                total += linear.out_features * linear.in_features // groups
        return total
