"""Structured pruning with repair: remove a plan layer by layer, refitting what each layer keeps.

After the ranking has chosen what goes, every decoder layer is visited in order on the calibration windows,
as the layer-by-layer sparse calibration does (:mod:`prunelight.calibration.sequential`): layer ``l`` sees the
outputs of layers ``0..l-1`` *after* they were pruned and repaired, so its refit also absorbs their error.
Within a layer the attention goes first: the o_proj inputs are gathered, the kept o_proj columns refit to
the dense o_proj output (:func:`~prunelight.apply.reconstruction.lsq_refit`), the layer's attention groups
removed; then the down_proj inputs are gathered *with the pruned attention* (so the MLP repairs what the
attention cut changed too), the kept down_proj columns refit and the layer's MLP channels removed; last, the
repaired layer's outputs become the next layer's inputs. One layer's statistics are held at a time (for a
7B MLP, ``11008^2`` float64 entries, about 1 GB).

An intercept is fitted (the projection gets or keeps a bias) when FLAP compensation is asked for or the
projection already has a bias: then the refit runs on the covariance and the bias takes the mean's share,
which with an unchanged ``W_K`` is exactly FLAP's compensation. Without a method (``None``) the groups are
removed as planned, without a refit (with FLAP's compensation on the sequential inputs if asked for).

Whole layers that the plan removes are skipped (their input passes on unchanged, as in the pruned model) and
removed at the end; with ``layer_map="lsq"`` each maximal span ``[start, end)`` of removed layers is repaired
as ReplaceMe does (Shopkhoev et al., 2025, training-free): with ``M`` the MLP output (after down_proj, before
the residual add) of the kept layer ``start - 1`` on the calibration tokens, ``h_in`` that layer's output and
``h_out`` the output of the *dense* span run on ``h_in``, the least squares ``T`` of ``Y ~ M T`` with
``Y = h_out - h_in + M`` (:func:`~prunelight.apply.reconstruction.linear_map`) is folded into layer
``start - 1``'s down_proj (``W' = T^T W``, its bias likewise), so that its new output ``h_in - M + M T``
approximates ``h_out`` without a new parameter. A span at layer 0 has no such layer and is only skipped.

Every statistic is a sum over tokens, so under DDP the all-reduced sums of N ranks equal one process's and
the ranks compute the same weights.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from prunelight.apply import LayerInputMeans, apply_plan
from prunelight.apply.reconstruction import (
    ReconstructionError,
    fold_linear_map,
    input_moments,
    linear_map,
    lsq_refit,
)
from prunelight.apply.structured import kept_columns
from prunelight.calibration.sequential import Captured, layer_output, on_device
from prunelight.errors import ConfigError
from prunelight.models.adapters import FamilyAdapter
from prunelight.ranking.plan import LayerPlan, PruningPlan
from prunelight.registry import Registry
from prunelight.save.layers import head_dim, read_layer_sizes

ReduceSum = Callable[[Tensor], Tensor]
log = logging.getLogger(__name__)

TOKENS_PER_INPUT = 4
"""Below this many calibration tokens per input column a refit has too few equations per unknown and is
warned about: SmolLM2-135M refit from 8 x 64 tokens (512, for down_proj's 1536 inputs) gave a WikiText-2
perplexity of 96.7 at 20%, against 65.5 without the refit; 128 x 2048 tokens gave 36.3 against 48.4."""


@dataclass
class InputSums:
    """Sums over calibration tokens of one projection's input ``x``: ``x x^T``, ``x`` and the token count,
    all in float64."""

    xtx: Tensor
    total: Tensor
    tokens: Tensor

    @classmethod
    def zeros(cls, features: int, device: torch.device) -> InputSums:
        def z(*shape: int) -> Tensor:
            return torch.zeros(shape, dtype=torch.float64, device=device)

        return cls(z(features, features), z(features), z())

    def add(self, x: Tensor) -> None:
        # float64 products: the intercept's covariance is S/n - mu mu^T, and where an input's mean is large
        # against its spread (a biased v_proj feeding o_proj) float32 products leave rounding larger than the
        # variance itself (measured: a negative eigenvalue a tenth of the mean diagonal on a tiny llama)
        x = x.detach().reshape(-1, x.shape[-1]).double()
        self.xtx.addmm_(x.T, x)
        self.total.add_(x.sum(dim=0))
        self.tokens.add_(x.shape[0])

    def reduce(self, reduce_sum: ReduceSum) -> None:
        self.xtx, self.total, self.tokens = (
            reduce_sum(t.clone()) for t in (self.xtx, self.total, self.tokens)
        )


class Reconstruction(ABC):
    """One way of repairing a projection whose input columns ``K`` are kept; registered by name."""

    name: ClassVar[str]

    @abstractmethod
    def refit(
        self,
        weight: Tensor,
        sums: InputSums,
        keep: Tensor,
        bias: Tensor | None,
        intercept: bool,
        damping: float,
    ) -> tuple[Tensor, Tensor | None, ReconstructionError]:
        """The kept columns' new weights ``[d_out, |K|]``, the new bias (or None) and the relative errors."""


RECONSTRUCTIONS: Registry[Reconstruction] = Registry(
    "reconstruction",
    lambda name, names: f"reconstruction.method must be one of {', '.join(['none', *names])}, got {name!r}",
)
"""The registered methods by name; ``none`` (no repair) is the absence of one."""

register = RECONSTRUCTIONS.register


@register
class LeastSquares(Reconstruction):
    """``W'_K = (W H[:, K] + lam W_K)(H_KK + lam I)^-1``: the kept columns that best reproduce the dense
    output on the calibration inputs (ridge toward the original weights), with the intercept on request."""

    name = "lsq"

    def refit(
        self,
        weight: Tensor,
        sums: InputSums,
        keep: Tensor,
        bias: Tensor | None,
        intercept: bool,
        damping: float,
    ) -> tuple[Tensor, Tensor | None, ReconstructionError]:
        hessian, mean = input_moments(sums.xtx, sums.total, int(sums.tokens), center=intercept)
        return lsq_refit(weight, hessian, keep, damping, mean=mean if intercept else None, bias=bias)


ReconstructionName = Literal[("none", *RECONSTRUCTIONS)]  # type: ignore[valid-type]
"""``reconstruction.method``'s choices: ``none`` and every registered method (the CLI lists them)."""


reconstruction_named = RECONSTRUCTIONS.named

LayerMapName = Literal["none", "lsq"]
"""``reconstruction.layers``' choices: ``none`` (removed layers are only dropped) or ``lsq`` (ReplaceMe's
least-squares linear map of each removed span, folded into the preceding down_proj)."""


def reconstruct_sequentially(
    model: nn.Module,
    adapter: FamilyAdapter,
    captured: Captured,
    plan: PruningPlan,
    method: Reconstruction | None,
    damping: float,
    compensation: bool,
    reduce_sum: ReduceSum | None = None,
    progress: bool = True,
    layer_map: LayerMapName = "none",
    device: torch.device | None = None,
) -> list[dict[str, Any]]:
    """Apply ``plan`` to ``model`` in place, layer by layer, refitting each layer's kept o/down columns
    (``method``; None removes them without a refit) and, with ``layer_map="lsq"``, repairing each span of
    removed layers by a linear map folded into the preceding down_proj.

    Returns one entry per dense layer: the relative reconstruction errors of o_proj and down_proj before
    and after the refit (``tr(D H D^T) / tr(W H W^T)`` on the layer's calibration inputs; None where
    nothing of that kind was removed or without a method), or ``removed: True`` for a layer the plan drops;
    with ``layer_map="lsq"`` the first layer of each removed span also carries ``map`` (see
    :func:`_map_span`). ``damping`` is relative to the mean diagonal of the inputs' second moment, for the
    refits and the map alike. ``device``: where each layer runs, moved there one at a time (FSDP2 repairs a
    whole copy held in host memory this way); None runs every layer where its weights are.
    """
    if layer_map not in ("none", "lsq"):
        raise ConfigError(f"reconstruction.layers must be one of none, lsq, got {layer_map!r}")
    layers = adapter.decoder_layers(model)
    by_layer = {p.layer: p for p in plan.layers}
    removed = [p.layer for p in plan.layers if p.remove_layer]
    if layer_map == "lsq" and removed:
        _check_foldable(adapter, layers[0])
    hidden = captured.hidden
    mlp_out: list[Tensor] | None = None  # the MLP outputs of the last kept layer, when a span follows it
    report: list[dict[str, Any]] = []
    for index in tqdm(range(len(layers)), desc="reconstruction", unit="layer", disable=not progress):
        layer_plan = by_layer.get(index, LayerPlan(index))
        kwargs = captured.kwargs[index]
        if layer_plan.remove_layer:
            entry = {"layer": index, "removed": True, "o": None, "down": None}
            first = index == 0 or not by_layer.get(index - 1, LayerPlan(index - 1)).remove_layer
            if layer_map == "lsq" and first:
                end = index
                while end < len(layers) and by_layer.get(end, LayerPlan(end)).remove_layer:
                    end += 1
                if index == 0:
                    entry["map"] = {"span": [0, end], "skipped": "no kept layer before the span to fold into"}
                else:
                    assert mlp_out is not None
                    kw = [captured.kwargs[j] for j in range(index, end)]
                    into = adapter.modules(layers[index - 1]).down
                    with on_device([*layers[index - 1 : end]], device):
                        hidden, entry["map"] = _map_span(
                            layers[index:end], into, hidden, mlp_out, kw, damping, reduce_sum
                        )
                    entry["map"] = {"span": [index, end], "into_layer": index - 1, **entry["map"]}
                mlp_out = None
            report.append(entry)
            continue  # the pruned model skips it: its input is the next layer's input
        layer = layers[index]
        with on_device([layer], device):
            entry = _repair_layer(
                model, adapter, index, layer_plan, hidden, kwargs, method, damping, compensation, reduce_sum
            )
            report.append(entry)
            follows = by_layer.get(index + 1, LayerPlan(index + 1)).remove_layer and index + 1 < len(layers)
            mlp_out = [] if layer_map == "lsq" and follows else None
            with torch.no_grad(), _kept_outputs(adapter.modules(layer).down, mlp_out):
                here = next(layer.parameters()).device
                hidden = [
                    layer_output(layer(h.to(here), **kw)).to(h.device)
                    for h, kw in zip(hidden, kwargs, strict=True)
                ]
    if removed:
        apply_plan(model, PruningPlan([LayerPlan(i, remove_layer=True) for i in removed]))
    return report


def _repair_layer(
    model: nn.Module,
    adapter: FamilyAdapter,
    index: int,
    layer_plan: LayerPlan,
    hidden: list[Tensor],
    kwargs: list[dict],
    method: Reconstruction | None,
    damping: float,
    compensation: bool,
    reduce_sum: ReduceSum | None,
) -> dict[str, Any]:
    """Remove one kept layer's planned groups, attention first, refitting o_proj then down_proj on the
    inputs the (already repaired) layer gives them; return the layer's report entry."""
    layer = adapter.decoder_layers(model)[index]
    entry: dict[str, Any] = {"layer": index, "removed": False}
    for name, field in (("o", "attention_groups"), ("down", "mlp_channels")):
        units = getattr(layer_plan, field)
        entry[name] = None
        if not units:
            continue
        only = PruningPlan([LayerPlan(index, **{field: units})])
        linear = getattr(adapter.modules(layer), name)
        if method is None and not compensation:
            apply_plan(model, only)
            continue
        sums = _gather(layer, linear, hidden, kwargs)
        if reduce_sum is not None:
            sums.reduce(reduce_sum)
        intercept = compensation or linear.bias is not None
        means = LayerInputMeans(**{name: sums.total / sums.tokens}) if intercept else None
        if method is None:  # FLAP's compensation on the inputs the pruned model gives the layer
            apply_plan(model, only, compensation={index: means})
            continue
        sizes = read_layer_sizes(model)[index]
        keep = kept_columns(sizes, head_dim(model), name, units, linear.weight.device)
        weight, bias, errors = method.refit(linear.weight, sums, keep, linear.bias, intercept, damping)
        apply_plan(model, only, compensation={index: means} if means is not None else None)
        _set(getattr(adapter.modules(layer), name), weight, bias)
        entry[name] = {"before": errors.before, "after": errors.after}
    return entry


def reconstruction_summary(layers: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The mean relative errors of o_proj and down_proj over the repaired layers, before and after (the
    numbers summary.md reports); empty without a repair."""
    if layers is None:
        return {}
    summary: dict[str, Any] = {}
    for name in ("o", "down"):
        entries = [e[name] for e in layers if e.get(name)]
        summary[name] = (
            {
                "layers": len(entries),
                "before": sum(e["before"] for e in entries) / len(entries),
                "after": sum(e["after"] for e in entries) / len(entries),
            }
            if entries
            else None
        )
    maps = [e["map"] for e in layers if e.get("map") and "after" in e["map"]]
    if maps:
        summary["map"] = {
            "spans": len(maps),
            "before": sum(m["before"] for m in maps) / len(maps),
            "after": sum(m["after"] for m in maps) / len(maps),
        }
    return {"mean_error": summary}


def _map_span(
    span: list[nn.Module],
    down: nn.Module,
    hidden: list[Tensor],
    mlp_out: list[Tensor],
    kwargs: list[list[dict]],
    damping: float,
    reduce_sum: ReduceSum | None,
) -> tuple[list[Tensor], dict[str, Any]]:
    """ReplaceMe on one span: fit ``T`` with ``h_out - h_in + M ~ M T``, fold it into ``down``, and return
    the repaired layer's outputs ``h_in - M + M T`` with the span's relative output errors.

    ``hidden`` holds ``h_in`` per batch (the kept layer's outputs), ``mlp_out`` its MLP outputs ``M``;
    ``kwargs[k]`` are the keyword arguments of the span's ``k``-th layer per batch. The report: ``before``
    and ``after`` are ``||h_out - h~||^2 / ||h_out||^2`` over the calibration tokens with ``h~ = h_in`` (the
    span skipped) and ``h~ = h_in - M + M T`` (the map); ``fit`` is ``||Y - M T||^2 / ||Y||^2``; ``tokens``
    the count. All sums are float64 and all-reduced under DDP.
    """
    width = down.out_features
    device = down.weight.device
    sum_xx = torch.zeros(width, width, dtype=torch.float64, device=device)
    sum_xy = torch.zeros_like(sum_xx)
    targets = []
    with torch.no_grad():
        for b, (h_in, m) in enumerate(zip(hidden, mlp_out, strict=True)):
            h = h_in.to(device)
            for k, layer in enumerate(span):
                h = layer_output(layer(h, **kwargs[k][b]))
            h_out = h.to(h_in.device)
            targets.append(h_out)
            x = m.to(device).reshape(-1, width).double()
            y = (h_out - h_in).to(device).reshape(-1, width).double() + x
            sum_xx.addmm_(x.T, x)
            sum_xy.addmm_(x.T, y)
        if reduce_sum is not None:
            sum_xx, sum_xy = reduce_sum(sum_xx.clone()), reduce_sum(sum_xy.clone())
        T = linear_map(sum_xx, sum_xy, damping)
        weight, bias = fold_linear_map(down.weight, T, down.bias)
        _set(down, weight, bias)
        # [skip error, map error, ||h_out||^2, fit error, ||Y||^2, tokens]
        stats = torch.zeros(6, dtype=torch.float64, device=device)
        repaired = []
        for h_in, m, h_out in zip(hidden, mlp_out, targets, strict=True):
            x = m.to(device).double()
            mapped = x @ T
            new = h_in.to(device).double() - x + mapped
            out = h_out.to(device).double()
            y = out - h_in.to(device).double() + x
            stats += torch.stack(
                [
                    (out - h_in.to(device).double()).square().sum(),
                    (out - new).square().sum(),
                    out.square().sum(),
                    (y - mapped).square().sum(),
                    y.square().sum(),
                    torch.tensor(float(x.numel() // width), dtype=torch.float64, device=device),
                ]
            )
            repaired.append(new.to(dtype=h_in.dtype, device=h_in.device))
        if reduce_sum is not None:
            stats = reduce_sum(stats.clone())
    skip, after, norm, fit, y_norm, tokens = stats.tolist()
    return repaired, {
        "tokens": int(tokens),
        "before": skip / norm,
        "after": after / norm,
        "fit": fit / y_norm if y_norm > 0 else 0.0,
    }


def warn_if_few_tokens(tokens: int, model: nn.Module, adapter: FamilyAdapter) -> None:
    """A log warning when ``tokens`` calibration tokens are fewer than :data:`TOKENS_PER_INPUT` per input
    column of the widest projection a refit solves for (o_proj's or down_proj's)."""
    widest = max(
        max(m.o.in_features, m.down.in_features)
        for m in (adapter.modules(layer) for layer in adapter.decoder_layers(model))
    )
    if tokens < TOKENS_PER_INPUT * widest:
        log.warning(
            "reconstruction: %d calibration tokens refit projections of up to %d input columns (fewer than "
            "%d tokens per column), so the refit can be worse than none; raise data.nsamples x data.seqlen "
            "to at least %d, or raise reconstruction.damping",
            tokens,
            widest,
            TOKENS_PER_INPUT,
            TOKENS_PER_INPUT * widest,
        )


def _check_foldable(adapter: FamilyAdapter, layer: nn.Module) -> None:
    """The fold maps the MLP output that the residual adds; a norm after the MLP (the adapter's
    ``mlp_output_norm``, Gemma 2/3) breaks that."""
    if adapter.mlp_output_norm is not None:
        raise ConfigError(
            f"reconstruction.layers=lsq folds the map into down_proj, but {type(layer).__name__} normalises "
            "the MLP output before the residual add, so the fold would not be linear; set "
            "reconstruction.layers: none for this family"
        )


@contextmanager
def _kept_outputs(linear: nn.Module, outputs: list[Tensor] | None) -> Iterator[None]:
    """Append ``linear``'s outputs to ``outputs`` while in the block (nothing when ``outputs`` is None)."""
    if outputs is None:
        yield
        return
    handle = linear.register_forward_hook(lambda _module, _args, out: outputs.append(out.detach()))
    try:
        yield
    finally:
        handle.remove()


def _gather(layer: nn.Module, linear: nn.Module, hidden: list[Tensor], kwargs: list[dict]) -> InputSums:
    """Run the layer over its inputs and sum what ``linear`` receives."""
    device = linear.weight.device
    sums = InputSums.zeros(linear.in_features, device)
    with _hooked(linear, sums), torch.no_grad():
        for h, kw in zip(hidden, kwargs, strict=True):
            layer(h.to(device), **kw)
    return sums


@contextmanager
def _hooked(linear: nn.Module, sums: InputSums) -> Iterator[None]:
    handle = linear.register_forward_pre_hook(lambda _module, args: sums.add(args[0]))
    try:
        yield
    finally:
        handle.remove()


def _set(linear: nn.Module, weight: Tensor, bias: Tensor | None) -> None:
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias)
