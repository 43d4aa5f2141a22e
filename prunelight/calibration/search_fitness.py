"""The fitness of an allocation search: KL(dense || candidate) of the next-token distributions.

A candidate is scored without building it. Removing a group equals zeroing its input columns of o_proj /
down_proj (tests/apply prove it for every family), so a forward pre-hook that multiplies those inputs by a
0/1 mask turns the dense model into the candidate for one forward pass, and the same pass without hooks
is the reference. Nothing is copied, so any number of candidates costs two forwards each and no memory.

The search evaluates in stages on more windows each (:mod:`prunelight.ranking.search`); stage ``s`` of
generation ``g`` reads ``stage_windows[s]`` windows drawn from the pool with a generator seeded by
``(seed, g, s)``, so a parent and its offspring compared in one stage see the same tokens, and a rerun the
same numbers.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from prunelight.apply.structured import kept_columns
from prunelight.calibration.reconstruct import InputSums, Reconstruction
from prunelight.errors import ConfigError
from prunelight.models import adapter_for
from prunelight.models.attention import efficient_float32_attention
from prunelight.models.logits import position_slices
from prunelight.ranking import GroupTable, PruningPlan, RankingConfig, RankingResult, rank
from prunelight.ranking.rank import layer_constraints
from prunelight.ranking.search import (
    Genome,
    Ladder,
    SearchSettings,
    genome_plan,
    group_order,
    ladder_for,
    plan_counts,
    search,
)
from prunelight.save.layers import head_dim, projection_path, read_layer_sizes, replace_module


class ColumnMasks:
    """0/1 masks of the o_proj / down_proj inputs that a layer keeps without some groups, built once per
    (layer, projection, removed groups) on the projection's device and dtype.

    A search scores a thousand candidates built from the same few ladder levels; building each mask again
    for every candidate and batch cost more host time than a small model's forward on a GPU, and each
    build copied indices to the device, which waits for the queued forward."""

    def __init__(self, model: nn.Module) -> None:
        self.adapter = adapter_for(model)
        self.layers = self.adapter.decoder_layers(model)
        self.modules = [self.adapter.modules(layer) for layer in self.layers]
        self.sizes, self.head_dim = read_layer_sizes(model), head_dim(model)
        self._masks: dict[tuple[int, str, tuple[int, ...]], Tensor] = {}

    def __call__(self, layer: int, name: str, removed: Sequence[int]) -> Tensor:
        key = (layer, name, tuple(removed))
        if key not in self._masks:
            weight = getattr(self.modules[layer], name).weight
            mask = torch.zeros(weight.shape[1], device=weight.device, dtype=weight.dtype)
            mask[kept_columns(self.sizes[layer], self.head_dim, name, key[2], weight.device)] = 1
            self._masks[key] = mask
        return self._masks[key]


@contextmanager
def masked(
    model: nn.Module,
    plan: PruningPlan,
    repairs: LevelRepairs | None = None,
    masks: ColumnMasks | None = None,
) -> Iterator[nn.Module]:
    """``model`` computing as if ``plan`` were applied, while the context lasts (weights untouched): the
    inputs of o_proj and down_proj outside apply's kept columns are zeroed, and a layer the plan removes
    passes its input through. With ``repairs`` the cut projections compute with their refitted kept
    columns (and intercept) instead, as the run's reconstruction would repair each layer on its own.
    ``masks`` reuses the column masks of earlier calls (a search passes one for all its candidates)."""
    masks = masks or ColumnMasks(model)
    layers = masks.layers
    handles, swapped = [], []

    def zero(columns: Tensor) -> Callable:
        def hook(module: nn.Module, args: tuple) -> tuple:
            return (args[0] * columns.to(device=args[0].device, dtype=args[0].dtype), *args[1:])

        return hook

    try:
        for layer_plan in plan.layers:
            index = layer_plan.layer
            if layer_plan.remove_layer:
                handles.append(layers[index].register_forward_hook(_skipped, with_kwargs=True))
                continue
            for name, units in (("o", layer_plan.attention_groups), ("down", layer_plan.mlp_channels)):
                if not units:
                    continue
                linear = getattr(masks.modules[index], name)
                if repairs is None:
                    handles.append(linear.register_forward_pre_hook(zero(masks(index, name, units))))
                    continue
                path = projection_path(masks.adapter, name)
                replace_module(layers[index], path, _Refitted(*repairs.refit(index, name, units)))
                swapped.append((layers[index], path, linear))
        yield model
    finally:
        for handle in handles:
            handle.remove()
        for layer, path, linear in reversed(swapped):
            replace_module(layer, path, linear)


class _Refitted(nn.Module):
    """A cut projection's refitted kept columns, standing in for the projection while a candidate runs
    (a hook on the projection would compute its dense output too, and throw it away)."""

    def __init__(self, keep: Tensor, weight: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        self.keep, self.weight, self.bias = keep, weight, bias

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x.index_select(-1, self.keep), self.weight, self.bias)


def _skipped(layer: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
    """A removed decoder layer's output: its input, in the layer's output structure."""
    hidden = args[0] if args else kwargs["hidden_states"]
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


class LevelRepairs:
    """The repaired level database of a search with reconstruction: every layer's o_proj and down_proj
    refitted to the dense layer's outputs for whichever kept columns a candidate asks for.

    One pass over the calibration windows sums each projection's inputs in the dense model (float64
    ``X^T X``, ``sum x``; ``reduce`` adds the processes' sums); a refit is solved from them on first use
    (the run's reconstruction method and damping, an intercept where the run compensates or the projection
    has a bias) and kept, on the layer's device, for every later candidate with that layer at that level.
    Memory: the sums are ``in^2`` float64 per projection (4.7 GB for Qwen2.5-0.5B's 24 layers), the refits
    one kept weight per layer, kind and level visited. Each layer is repaired on the dense model's inputs,
    independently of the others: the level database of EvoPress; the chosen plan is then repaired
    layer after layer on the pruned model's inputs, as every run with the reconstruction is.
    """

    def __init__(
        self,
        model: nn.Module,
        windows: Tensor,
        method: Reconstruction,
        damping: float,
        compensation: bool,
        batch_size: int = 8,
        reduce: Reduce | None = None,
    ) -> None:
        adapter = adapter_for(model)
        self.modules = [adapter.modules(layer) for layer in adapter.decoder_layers(model)]
        self.method, self.damping, self.compensation = method, damping, compensation
        self.sums: dict[tuple[int, str], InputSums] = {}
        handles = []
        for index, m in enumerate(self.modules):
            for name in ("o", "down"):
                linear = getattr(m, name)
                sums = self.sums[index, name] = InputSums.zeros(linear.in_features, linear.weight.device)
                handles.append(linear.register_forward_pre_hook(lambda _, args, sums=sums: sums.add(args[0])))
        device = next(model.parameters()).device
        try:
            with torch.no_grad():
                for i in range(0, len(windows), batch_size):
                    model(input_ids=windows[i : i + batch_size].to(device), use_cache=False)
        finally:
            for handle in handles:
                handle.remove()
        if reduce is not None:
            for sums in self.sums.values():
                sums.reduce(reduce)
        self.sizes, self.head_dim = read_layer_sizes(model), head_dim(model)
        self._refits: dict[tuple[int, str, tuple[int, ...]], tuple[Tensor, Tensor, Tensor | None]] = {}

    def refit(self, layer: int, name: str, removed: Sequence[int]) -> tuple[Tensor, Tensor, Tensor | None]:
        """For ``layer``'s ``name`` projection without the ``removed`` groups: the kept input columns, their
        refitted weight ``[d_out, kept]`` and the bias. Keyed by the removed groups, so a lookup needs no
        device sync."""
        key = (layer, name, tuple(removed))
        if key not in self._refits:
            linear = getattr(self.modules[layer], name)
            keep = kept_columns(self.sizes[layer], self.head_dim, name, list(removed), linear.weight.device)
            intercept = self.compensation or linear.bias is not None
            weight, bias, _ = self.method.refit(
                linear.weight, self.sums[layer, name], keep, linear.bias, intercept, self.damping
            )
            self._refits[key] = (keep, weight, bias)
        return self._refits[key]


Reduce = Callable[[Tensor], Tensor]
"""Sums a tensor over the processes (e.g. ``lambda t: strategy.reduce(t, reduce_op="sum")``)."""


@torch.no_grad()
def kl_sums(
    model: nn.Module,
    windows: Tensor,
    plans: Sequence[PruningPlan],
    batch_size: int = 8,
    repairs: LevelRepairs | None = None,
    masks: ColumnMasks | None = None,
) -> tuple[list[float], int]:
    """Per plan, the sum over every position of KL(dense || planned) of the next-token distribution
    (float32), and the number of positions. Each batch runs the dense model once for all the plans; the
    sums stay on the device until the end, so the host queues the next candidate while one computes."""
    masks = masks or ColumnMasks(model)
    device = next(model.parameters()).device
    totals, positions = torch.zeros(len(plans), dtype=torch.float64, device=device), 0
    with efficient_float32_attention():  # a search runs thousands of float32 forwards: the faster kernel
        for i in range(0, len(windows), batch_size):
            ids = windows[i : i + batch_size].to(device)
            dense = torch.log_softmax(model(input_ids=ids, use_cache=False).logits.float(), dim=-1)
            for k, plan in enumerate(plans):
                with masked(model, plan, repairs, masks):
                    logits = model(input_ids=ids, use_cache=False).logits
                totals[k] += _kl_sum(dense, logits)
            positions += ids.numel()
    return totals.tolist(), positions


def _kl_sum(dense: Tensor, logits: Tensor) -> Tensor:
    """Sum over every position of KL(dense || softmax(logits)), in float64. A slice of positions at a time:
    besides the dense log-probabilities and the candidate's logits, a search holds one slice's temporaries,
    not four more tensors of the batch's logits (17 GB each for Gemma-3's 262k vocabulary at 8 x 2048)."""
    total = torch.zeros((), dtype=torch.float64, device=logits.device)
    for at in position_slices(*logits.shape):
        reference, candidate = dense[:, at], torch.log_softmax(logits[:, at].float(), dim=-1)
        total += (reference.exp() * (reference - candidate)).sum().double()
    return total


def kl_to_dense(
    model: nn.Module,
    windows: Tensor,
    plans: Sequence[PruningPlan],
    batch_size: int = 8,
    process: int = 0,
    processes: int = 1,
    reduce: Reduce | None = None,
    repairs: LevelRepairs | None = None,
    masks: ColumnMasks | None = None,
) -> list[float]:
    """Per plan, the mean over every position of KL(dense || planned). With several ``processes`` each
    takes every ``processes``-th window from its ``process`` index and ``reduce`` sums the parts (one
    reduction for all the plans), so all get the same numbers."""
    totals, positions = kl_sums(model, windows[process::processes], plans, batch_size, repairs, masks)
    if reduce is None:
        return [total / positions for total in totals]
    device = next(model.parameters()).device
    sums = reduce(torch.tensor([*totals, positions], dtype=torch.float64, device=device))
    return [float(total / sums[-1]) for total in sums[:-1]]


class KLFitness:
    """``fitness(genome, stage, generation)`` and ``fitness.many(genomes, stage, generation)`` for
    :func:`prunelight.ranking.search.search`; with ``repairs``, candidates compute with refitted layers."""

    def __init__(
        self,
        model: nn.Module,
        windows: Tensor,
        stage_windows: Sequence[int],
        plan_of: Callable[[Genome], PruningPlan],
        batch_size: int = 8,
        seed: int = 0,
        process: int = 0,
        processes: int = 1,
        reduce: Reduce | None = None,
        repairs: LevelRepairs | None = None,
    ) -> None:
        if any(n < 1 or n > len(windows) for n in stage_windows):
            raise ValueError(
                f"stage_windows must be between 1 and the {len(windows)} windows, got {stage_windows}"
            )
        self.model, self.windows, self.stage_windows = model, windows, list(stage_windows)
        self.plan_of, self.batch_size, self.seed = plan_of, batch_size, seed
        self.process, self.processes, self.reduce, self.repairs = process, processes, reduce, repairs
        self.masks = ColumnMasks(model)

    def windows_of(self, stage: int, generation: int) -> Tensor:
        """The stage's windows: a seeded draw without replacement from the pool."""
        chosen = random.Random(hash((self.seed, generation, stage))).sample(
            range(len(self.windows)), self.stage_windows[stage]
        )
        return self.windows[sorted(chosen)]

    def kl(self, windows: Tensor, plans: Sequence[PruningPlan]) -> list[float]:
        return kl_to_dense(
            self.model,
            windows,
            plans,
            self.batch_size,
            self.process,
            self.processes,
            self.reduce,
            self.repairs,
            self.masks,
        )

    def many(self, genomes: Sequence[Genome], stage: int, generation: int) -> list[float]:
        return self.kl(self.windows_of(stage, generation), [self.plan_of(g) for g in genomes])

    def __call__(self, genome: Genome, stage: int, generation: int) -> float:
        return self.many([genome], stage, generation)[0]


def search_space(
    table: GroupTable, seed: RankingResult, config: RankingConfig, levels: int
) -> tuple[dict[str, Ladder], dict[str, int]]:
    """Per kind, the ladder of ``levels`` within the ranking's per-layer limits (the seed's removed layers
    stay removed), and the parameters the kind must lose (its share of the target, from the seed)."""
    constraints = layer_constraints(config, table.num_layers, frozenset(seed.plan.removed_layers))
    ladders = {kind: ladder_for(table, kind, levels, constraints) for kind in config.kinds}
    targets = {kind: math.ceil(seed.stages[kind]["target_params"]) for kind in config.kinds}
    return ladders, targets


def search_allocation(
    model: nn.Module,
    table: GroupTable,
    seed: RankingResult,
    config: RankingConfig,
    settings: SearchSettings,
    windows: Tensor,
    batch_size: int = 8,
    progress: bool = True,
    process: int = 0,
    processes: int = 1,
    reduce: Reduce | None = None,
    reconstruction: Reconstruction | None = None,
    damping: float = 0.01,
    compensation: bool = False,
) -> tuple[RankingResult, dict[str, Any]]:
    """``ranking.allocation: search``: from the T/tau plan ``seed`` (and the uniform plan), search one ladder
    level per layer and kind on KL to the dense ``model`` over the calibration ``windows`` but the last
    ``holdout_windows``; the seeds (the T/tau plan exact and on the ladder) and the found allocation are then
    compared on those held-out windows and the best becomes the plan. Returns it and the report.

    With a ``reconstruction`` (the run's method, ``damping`` and ``compensation``), every candidate is
    scored with its cut layers refitted (:class:`LevelRepairs`, summed over all the calibration windows),
    so the search looks for the allocation that is best after the repair, not before it.

    Under DDP every process runs the same search: each scores its share of every stage's windows and
    ``reduce`` sums the parts, so every decision is made from the same numbers on every rank."""
    settings.check_windows(len(windows))
    start = time.perf_counter()
    model.eval()
    pool, holdout = windows[: -settings.holdout_windows], windows[-settings.holdout_windows :]
    removed_layers = frozenset(seed.plan.removed_layers)
    kinds = list(config.kinds)
    ladders, targets = search_space(table, seed, config, settings.levels)
    orders = {kind: group_order(table, kind) for kind in kinds}

    def plan_of(genome: Genome) -> PruningPlan:
        return genome_plan(genome, ladders, orders, table.num_layers, removed_layers)

    plans = {"T/tau": seed}
    with suppress(ConfigError):  # the limits may leave no uniform plan: the T/tau plan seeds alone
        plans["uniform"] = rank(table, replace(config, allocation="uniform"))
    seeds = {
        name: {kind: ladders[kind].nearest(plan_counts(result.plan, kind), targets[kind]) for kind in kinds}
        for name, result in plans.items()
    }
    repairs = None
    if reconstruction is not None:
        repairs = LevelRepairs(
            model, windows[process::processes], reconstruction, damping, compensation, batch_size, reduce
        )
    fitness = KLFitness(
        model,
        pool,
        settings.stage_windows,
        plan_of,
        batch_size,
        settings.seed,
        process,
        processes,
        reduce,
        repairs,
    )
    with tqdm(
        total=settings.generations, desc="allocation search", unit="generation", disable=not progress
    ) as bar:

        def step(entry: dict) -> None:
            bar.set_postfix(kl=f"{entry['fitness']:.4g}", evaluations=entry["evaluations"])
            bar.update()

        found = search(ladders, targets, seeds, fitness, settings, step)
    finals = {"T/tau plan": seed.plan, **{f"{name} on the ladder": plan_of(g) for name, g in seeds.items()}}
    finals["search"] = plan_of(found.best)
    held_out = dict(zip(finals, fitness.kl(holdout, list(finals.values())), strict=True))
    chosen = min(held_out, key=lambda name: (held_out[name], name != "search"))
    result = seed.replanned(finals[chosen], table)

    def rates(plan: PruningPlan) -> dict[str, list[float]]:
        sizes = {kind: [len(s) for s in table.scores(kind)] for kind in kinds}
        return {
            kind: [c / n for c, n in zip(plan_counts(plan, kind), sizes[kind], strict=True)] for kind in kinds
        }

    report = {
        "settings": {
            **vars(settings),
            "stage_windows": list(settings.stage_windows),
            "survivors": list(settings.survivors),
        },
        "windows": {"searched": len(pool), "held_out": len(holdout), "seqlen": int(windows.shape[1])},
        "repaired": None if reconstruction is None else {"method": reconstruction.name, "damping": damping},
        "targets": targets,
        "ladder_counts": {kind: [list(c) for c in ladders[kind].counts] for kind in kinds},
        "levels": {**{name: dict(g) for name, g in seeds.items()}, "search": dict(found.best)},
        "seed_fitness": found.seed_fitness,
        "history": found.history,
        "evaluations": found.evaluations,
        "held_out_kl": held_out,
        "chosen": chosen,
        "rates": {name: rates(plan) for name, plan in finals.items()},
        "removed_params": {name: seed.replanned(plan, table).removed_params for name, plan in finals.items()},
        "seconds": time.perf_counter() - start,
    }
    return result, report
