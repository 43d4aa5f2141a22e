"""Scoring structures by greedy grouped OBS, layer by layer on the dense model (criterion ``obs``).

The statistics of OBS are the second moment ``H`` of a projection's input, ``d^2`` entries (for a 7B MLP,
``11008^2`` float64, about 1 GB), too many to gather for every layer in one pass as the other criteria do. So,
as the ``lsq`` reconstruction does (:mod:`prunelight.calibration.reconstruct`), the first layer's inputs are
captured and every decoder layer is run in order on the outputs of the one before: one run per layer sums the
o_proj and down_proj inputs (float64, all-reduced under DDP), the layer's block influence and its outputs (the
next layer's inputs); the layer's groups are scored and its sums dropped before the next layer. The model is
not changed, so every layer sees the dense model's activations.

A group's score is its error increase in the greedy (:func:`~prunelight.apply.reconstruction.obs_group_scores`
on ``H = sum x x^T / n``, the uncentred second moment, or the covariance where the refit fits an intercept,
with ``reconstruction.damping``; the MLP channels ``reconstruction.obs_batch_fraction`` of the live ones per
step, the attention groups one at a time), the last survivor's ``+inf`` made finite by
:func:`~prunelight.importance.criteria.obs.finite_scores`. The result has the layout of the one-pass
calibration's (:class:`~prunelight.importance.accumulator.Calibrated`), so the ranking, the apply stage and
the reports take it unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from prunelight.apply.reconstruction import input_moments, obs_group_scores
from prunelight.calibration.reconstruct import InputSums, ReduceSum
from prunelight.calibration.sequential import Captured, layer_output, on_device
from prunelight.importance.accumulator import Calibrated
from prunelight.importance.criteria.obs import finite_scores
from prunelight.importance.groups import attention_groups, group_params
from prunelight.importance.kernels import influence_sum
from prunelight.models.adapters import FamilyAdapter
from prunelight.models.projections import ATTENTION_PROJECTIONS, MLP_PROJECTIONS
from prunelight.ranking.table import GroupTable


def obs_scores_sequentially(
    model: nn.Module,
    adapter: FamilyAdapter,
    captured: Captured,
    damping: float,
    reduce_sum: ReduceSum | None = None,
    progress: bool = True,
    center: bool = False,
    device: torch.device | None = None,
    batch_fraction: float = 0.0,
) -> Calibrated:
    """Every layer's OBS group scores, block influence and o/down input means, from the captured inputs.

    Args:
        captured: the first layer's inputs and every layer's keyword arguments (this rank's batches).
        damping: ``lam = damping * mean(diag H)`` added to ``H`` (the reconstruction's damping).
        reduce_sum: all-reduce of the sums across ranks (None: one process).
        center: score on the inputs' covariance (FLAP compensation is on), as the lsq refit then fits the
            intercept; a projection that has a bias is scored on its covariance in any case. The greedy's
            error is then the one the refit with intercept leaves, so the choice and the repair agree.
        device: where each layer runs, moved there one at a time (under FSDP2 the model is a whole copy in
            host memory); None runs every layer where its weights are.
        batch_fraction: the share of the live MLP channels the down_proj greedy removes per step with one
            joint OBS update (:func:`~prunelight.apply.reconstruction.obs_greedy`); 0 is the exact greedy,
            one channel per step. The attention groups (a few per layer) are always scored one at a time.
    """
    layers = adapter.decoder_layers(model)
    head_dim = adapter.layout(model.config).head_dim
    hidden = captured.hidden
    attention: list[Tensor] = []
    mlp: list[Tensor] = []
    influence: list[Tensor] = []
    means: dict[int, dict[str, Tensor]] = {}
    attention_params: list[int] = []
    mlp_params: list[int] = []
    tokens = 0
    for index in tqdm(range(len(layers)), desc="obs scores", unit="layer", disable=not progress):
        layer, kwargs = layers[index], captured.kwargs[index]
        with on_device([layer], device):
            m = adapter.modules(layer)
            here = m.o.weight.device
            o_sums = InputSums.zeros(m.o.in_features, here)
            down_sums = InputSums.zeros(m.down.in_features, here)
            changed = torch.zeros((), dtype=torch.float64, device=here)
            outputs = []
            handles = [
                m.o.register_forward_pre_hook(_summing(o_sums)),
                m.down.register_forward_pre_hook(_summing(down_sums)),
            ]
            try:
                with torch.no_grad():
                    for h, kw in zip(hidden, kwargs, strict=True):
                        h_in = h.to(here)
                        h_out = layer_output(layer(h_in, **kw))
                        changed += influence_sum(h_in, h_out)
                        outputs.append(h_out.to(h.device))
            finally:
                for handle in handles:
                    handle.remove()
            if reduce_sum is not None:
                o_sums.reduce(reduce_sum)
                down_sums.reduce(reduce_sum)
                changed = reduce_sum(changed.clone())
            n = int(o_sums.tokens)
            tokens = tokens or n
            groups = attention_groups(m, head_dim)
            o_columns = torch.arange(m.o.in_features).reshape(groups, -1)
            attention.append(
                _layer_scores(m.o.weight, o_sums, o_columns, damping, center or m.o.bias is not None)
            )
            down_columns = torch.arange(m.down.in_features).reshape(-1, 1)
            down_center = center or m.down.bias is not None
            mlp.append(
                _layer_scores(m.down.weight, down_sums, down_columns, damping, down_center, batch_fraction)
            )
            influence.append((changed / n).cpu())
            means[index] = {"o": (o_sums.total / n).cpu(), "down": (down_sums.total / n).cpu()}
            attention_params.append(group_params(m, ATTENTION_PROJECTIONS, head_dim))
            mlp_params.append(group_params(m, MLP_PROJECTIONS, head_dim))
            del o_sums, down_sums
            hidden = outputs
    table = GroupTable(
        attention=attention,
        mlp=mlp,
        attention_group_params=attention_params,
        mlp_channel_params=mlp_params,
        layer_params=[sum(p.numel() for p in layer.parameters()) for layer in layers],
        total_params=sum(p.numel() for p in model.parameters()),
        block_importance=torch.stack(influence).double(),
    )
    return Calibrated(table, means, tokens, None)


def _layer_scores(
    weight: Tensor, sums: InputSums, groups: Tensor, damping: float, center: bool, batch_fraction: float = 0.0
) -> Tensor:
    """One projection's group scores: the greedy OBS increases on its input's second moment (or covariance,
    ``center``), ``batch_fraction`` of the live groups per step, made finite."""
    hessian, _ = input_moments(sums.xtx, sums.total if center else None, int(sums.tokens), center=center)
    _, increase = obs_group_scores(weight, hessian, groups.to(weight.device), damping, batch_fraction)
    return finite_scores(increase).double().cpu()


def _summing(sums: InputSums) -> Callable[[nn.Module, tuple], None]:
    """A forward pre-hook adding the module's input to ``sums``."""
    return lambda _module, args: sums.add(args[0])
