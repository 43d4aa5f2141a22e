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
from torch import Tensor, nn
from tqdm.auto import tqdm

from prunelight.apply.structured import kept_columns
from prunelight.errors import ConfigError
from prunelight.models import adapter_for
from prunelight.ranking import GroupTable, PruningPlan, RankingConfig, RankingResult, rank
from prunelight.ranking.rank import layer_constraints
from prunelight.ranking.search import (
    Genome,
    SearchSettings,
    genome_plan,
    group_order,
    ladder_for,
    plan_counts,
    search,
)
from prunelight.save.layers import head_dim, read_layer_sizes


@contextmanager
def masked(model: nn.Module, plan: PruningPlan) -> Iterator[nn.Module]:
    """``model`` computing as if ``plan`` were applied, while the context lasts (weights untouched): the
    inputs of o_proj and down_proj outside apply's kept columns are zeroed."""
    adapter = adapter_for(model)
    sizes, dim = read_layer_sizes(model), head_dim(model)
    handles = []

    def zero(columns: Tensor) -> Callable:
        def hook(module: nn.Module, args: tuple) -> tuple:
            return (args[0] * columns.to(device=args[0].device, dtype=args[0].dtype), *args[1:])

        return hook

    try:
        for layer_plan in plan.layers:
            m = adapter.modules(adapter.decoder_layers(model)[layer_plan.layer])
            for name, units in (("o", layer_plan.attention_groups), ("down", layer_plan.mlp_channels)):
                if units:
                    linear = getattr(m, name)
                    keep = torch.zeros(linear.in_features)
                    keep[kept_columns(sizes[layer_plan.layer], dim, name, units, keep.device)] = 1
                    handles.append(linear.register_forward_pre_hook(zero(keep)))
        yield model
    finally:
        for handle in handles:
            handle.remove()


Reduce = Callable[[Tensor], Tensor]
"""Sums a tensor over the processes (e.g. ``lambda t: strategy.reduce(t, reduce_op="sum")``)."""


@torch.no_grad()
def kl_sums(model: nn.Module, windows: Tensor, plan: PruningPlan, batch_size: int = 8) -> tuple[float, int]:
    """Sum over every position of KL(dense || planned) of the next-token distribution (float32), and the
    number of positions."""
    total, positions = 0.0, 0
    device = next(model.parameters()).device
    for i in range(0, len(windows), batch_size):
        ids = windows[i : i + batch_size].to(device)
        dense = torch.log_softmax(model(input_ids=ids, use_cache=False).logits.float(), dim=-1)
        with masked(model, plan):
            pruned = torch.log_softmax(model(input_ids=ids, use_cache=False).logits.float(), dim=-1)
        total += float((dense.exp() * (dense - pruned)).sum())
        positions += ids.numel()
    return total, positions


def kl_to_dense(
    model: nn.Module,
    windows: Tensor,
    plan: PruningPlan,
    batch_size: int = 8,
    process: int = 0,
    processes: int = 1,
    reduce: Reduce | None = None,
) -> float:
    """Mean over every position of KL(dense || planned). With several ``processes`` each takes every
    ``processes``-th window from its ``process`` index and ``reduce`` sums the parts, so all get the same
    number."""
    total, positions = kl_sums(model, windows[process::processes], plan, batch_size)
    if reduce is None:
        return total / positions
    sums = reduce(
        torch.tensor([total, positions], dtype=torch.float64, device=next(model.parameters()).device)
    )
    return float(sums[0] / sums[1])


class KLFitness:
    """``fitness(genome, stage, generation)`` for :func:`prunelight.ranking.search.search`."""

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
    ) -> None:
        if any(n < 1 or n > len(windows) for n in stage_windows):
            raise ValueError(
                f"stage_windows must be between 1 and the {len(windows)} windows, got {stage_windows}"
            )
        self.model, self.windows, self.stage_windows = model, windows, list(stage_windows)
        self.plan_of, self.batch_size, self.seed = plan_of, batch_size, seed
        self.process, self.processes, self.reduce = process, processes, reduce

    def windows_of(self, stage: int, generation: int) -> Tensor:
        """The stage's windows: a seeded draw without replacement from the pool."""
        chosen = random.Random(hash((self.seed, generation, stage))).sample(
            range(len(self.windows)), self.stage_windows[stage]
        )
        return self.windows[sorted(chosen)]

    def kl(self, windows: Tensor, plan: PruningPlan) -> float:
        return kl_to_dense(
            self.model, windows, plan, self.batch_size, self.process, self.processes, self.reduce
        )

    def __call__(self, genome: Genome, stage: int, generation: int) -> float:
        return self.kl(self.windows_of(stage, generation), self.plan_of(genome))


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
) -> tuple[RankingResult, dict[str, Any]]:
    """``ranking.allocation: search``: from the T/tau plan ``seed`` (and the uniform plan), search one ladder
    level per layer and kind on KL to the dense ``model`` over the calibration ``windows`` but the last
    ``holdout_windows``; the seeds (the T/tau plan exact and on the ladder) and the found allocation are then
    compared on those held-out windows and the best becomes the plan. Returns it and the report.

    Under DDP every process runs the same search: each scores its share of every stage's windows and
    ``reduce`` sums the parts, so every decision is made from the same numbers on every rank."""
    settings.check_windows(len(windows))
    start = time.perf_counter()
    model.eval()
    pool, holdout = windows[: -settings.holdout_windows], windows[-settings.holdout_windows :]
    removed_layers = frozenset(seed.plan.removed_layers)
    constraints = layer_constraints(config, table.num_layers, removed_layers)
    kinds = list(config.kinds)
    ladders = {kind: ladder_for(table, kind, settings.levels, constraints) for kind in kinds}
    orders = {kind: group_order(table, kind) for kind in kinds}
    targets = {kind: math.ceil(seed.stages[kind]["target_params"]) for kind in kinds}

    def plan_of(genome: Genome) -> PruningPlan:
        return genome_plan(genome, ladders, orders, table.num_layers, removed_layers)

    plans = {"T/tau": seed}
    with suppress(ConfigError):  # the limits may leave no uniform plan: the T/tau plan seeds alone
        plans["uniform"] = rank(table, replace(config, allocation="uniform"))
    seeds = {
        name: {kind: ladders[kind].nearest(plan_counts(result.plan, kind), targets[kind]) for kind in kinds}
        for name, result in plans.items()
    }
    fitness = KLFitness(
        model, pool, settings.stage_windows, plan_of, batch_size, settings.seed, process, processes, reduce
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
    held_out = {name: fitness.kl(holdout, plan) for name, plan in finals.items()}
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
