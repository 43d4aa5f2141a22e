"""Allocation search: one level per layer and kind, found by an evolutionary search under a parameter budget.

The corrections of :mod:`prunelight.ranking.corrections` decide how much each layer loses by a heuristic.
Searching the allocation (EvoPress, DarwinLM) measures it instead: a candidate gives every layer of a kind
a *level* of a ladder (level ``j`` removes ``counts[layer][j]`` groups, chosen within the layer by the
run's criterion), and its fitness is how far the model assembled from those levels is from the dense
model (KL divergence of the next-token distributions). This module is the search alone, on genomes and
a fitness function it is given, so it knows nothing of models and is tested against an exhaustive search.

- **Budget.** With ``budget: per_kind`` (the default) each kind keeps the removed parameters of its seed: a
  candidate is feasible when it removes at least ``target[kind]`` parameters. Moves trade one level
  between two layers of a kind, so the total stays within one level's parameters of the target, and an
  infeasible move is never taken. With ``budget: joint`` only the sum counts: a candidate removes at least
  the sum of the targets, and a move may trade a level of one kind for a level of the other (attention
  for MLP channels), which lets a model whose attention has few groups per layer (Qwen2.5-0.5B: two) keep
  attention where it matters and pay in channels. Levels of the two kinds differ in size, so after each
  move levels are lowered elsewhere while the sum still holds: a candidate never removes a whole level
  more than it must.
- **Search.** A (1 + offspring) evolution strategy: each generation mutates the parent ``offspring`` times
  (1 to ``max_switches`` level switches each), then selects in stages, each stage's fitness on more tokens
  than the last (``survivors`` of each stage go on); the last stage compares the best offspring with the
  parent on the same tokens, so the parent is only replaced by a better candidate.
- **Reproducible.** Every random choice comes from one ``random.Random(seed)``; the fitness is given the
  stage and the generation, so the tokens it draws can depend on them and nothing else.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from prunelight.errors import ConfigError
from prunelight.ranking.allocation import Constraints
from prunelight.ranking.plan import LayerPlan, PruningPlan
from prunelight.ranking.table import GroupTable

Genome = dict[str, tuple[int, ...]]
"""kind -> the level of every layer."""

Fitness = Callable[[Genome, int, int], float]
"""``fitness(genome, stage, generation)``: lower is better (e.g. KL to the dense model on the stage's
tokens). A fitness object may also have ``many(genomes, stage, generation) -> list[float]``, the same
numbers for several genomes at once; the search then asks for each stage's pool in one call (the KL
fitness runs the dense model once per batch for all of them)."""


@dataclass(frozen=True)
class Ladder:
    """The levels one kind can take in each layer.

    Attributes:
        counts: per layer, the groups removed at each level, ascending, starting at 0.
        params: per layer, the parameters of one group.
        top: per layer, the highest level allowed (the ranking's max rate; 0 for a protected layer).
        floor: per layer, the lowest level allowed (the ranking's min rate).
    """

    counts: tuple[tuple[int, ...], ...]
    params: tuple[int, ...]
    top: tuple[int, ...]
    floor: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.floor:
            object.__setattr__(self, "floor", (0,) * len(self.counts))
        sizes = {len(self.counts), len(self.params), len(self.top), len(self.floor)}
        if len(sizes) != 1:
            raise ValueError(
                f"ladder: counts, params, top and floor must have one entry per layer, got {sizes}"
            )
        for layer, (counts, low, high) in enumerate(zip(self.counts, self.floor, self.top, strict=True)):
            if not counts or counts[0] != 0 or list(counts) != sorted(counts):
                raise ValueError(f"ladder: layer {layer}'s counts must ascend from 0, got {counts}")
            if not 0 <= low <= high < len(counts):
                raise ValueError(f"ladder: layer {layer} needs 0 <= floor <= top < {len(counts)}")

    @property
    def num_layers(self) -> int:
        return len(self.counts)

    def removed(self, levels: Sequence[int]) -> int:
        """Parameters the levels remove."""
        return sum(c[j] * p for c, j, p in zip(self.counts, levels, self.params, strict=True))

    def most(self) -> int:
        return self.removed(self.top)

    def nearest(self, removed_groups: Sequence[int], target: int) -> tuple[int, ...]:
        """The ladder point closest to a plan's per-layer group counts that still removes ``target``: each
        layer's nearest level, then levels raised where the plan wanted most above its level until the
        target is met, then lowered where it wanted least, while the target stays met."""
        if self.most() < target:
            raise ConfigError(
                f"the ladder removes at most {self.most()} parameters of this kind, fewer than the target "
                f"{target}: use more levels, or a higher ranking.max_rate"
            )
        want = list(removed_groups)
        levels = [
            min(range(low, high + 1), key=lambda j, c=c, w=w: (abs(c[j] - w), j))
            for c, w, low, high in zip(self.counts, want, self.floor, self.top, strict=True)
        ]
        while self.removed(levels) < target:
            up = [i for i in range(self.num_layers) if levels[i] < self.top[i]]
            i = max(up, key=lambda i: (want[i] - self.counts[i][levels[i]], -i))
            levels[i] += 1
        while True:
            down = [
                i
                for i in range(self.num_layers)
                if levels[i] > self.floor[i] and self.removed(levels) - self.step(i, levels[i] - 1) >= target
            ]
            if not down:
                return tuple(levels)
            i = max(down, key=lambda i: (self.counts[i][levels[i]] - want[i], -i))
            levels[i] -= 1

    def step(self, layer: int, level: int) -> int:
        """Parameters between ``level`` and ``level + 1`` of ``layer``."""
        counts = self.counts[layer]
        return (counts[level + 1] - counts[level]) * self.params[layer]


@dataclass(frozen=True)
class SearchSettings:
    """How long and how carefully to search (the ``search`` section, with ``ranking.allocation: search``).

    Attributes:
        levels: the ladder: level ``j`` of a layer removes ``j / levels`` of its groups, ``j < levels``,
            up to the ranking's ``max_rate`` (10: 0, 10, ..., 90%).
        generations: parent updates (each evaluates ``offspring`` new candidates).
        offspring: candidates mutated from the parent per generation.
        max_switches: level switches per mutation, drawn from 1 to this.
        stage_windows: calibration windows each selection stage scores a candidate on, increasing; the
            last stage compares the best offspring with the parent.
        survivors: how many candidates each stage but the last passes on (one entry per such stage).
        holdout_windows: the last calibration windows, never searched on: the seeds and the found
            allocation are compared on them, and the best is the plan.
        seed: the search's random seed (mutations and the windows each stage draws).
        budget: ``per_kind``: every kind removes its own share of the target, as the ranking's other
            allocations do; ``joint``: only the total counts, and the search may move budget between
            attention and MLP (see the module's docstring).
    """

    levels: int = 10
    generations: int = 50
    offspring: int = 16
    max_switches: int = 3
    stage_windows: tuple[int, ...] = (4, 16)
    survivors: tuple[int, ...] = (4,)
    holdout_windows: int = 8
    seed: int = 0
    budget: Literal["per_kind", "joint"] = "per_kind"

    def __post_init__(self) -> None:
        object.__setattr__(self, "survivors", tuple(int(s) for s in self.survivors))
        object.__setattr__(self, "stage_windows", tuple(int(s) for s in self.stage_windows))
        for name in ("generations", "offspring", "max_switches"):
            if getattr(self, name) < 1:
                raise ConfigError(f"search.{name} must be at least 1, got {getattr(self, name)}")
        if self.levels < 2:
            raise ConfigError(
                f"search.levels must be at least 2 (level 0 keeps the layer whole), got {self.levels}"
            )
        if any(s < 1 for s in self.survivors) or list(self.survivors) != sorted(self.survivors, reverse=True):
            raise ConfigError(
                f"search.survivors must be positive and not increasing, got {list(self.survivors)}"
            )
        windows = list(self.stage_windows)
        if not windows or windows[0] < 1 or windows != sorted(windows):
            raise ConfigError(f"search.stage_windows must be positive and not decreasing, got {windows}")
        if len(self.survivors) != len(windows) - 1:
            raise ConfigError(
                f"search.survivors needs one entry per stage but the last: {len(windows) - 1} for "
                f"stage_windows {windows}, got {list(self.survivors)}"
            )
        if self.holdout_windows < 1:
            raise ConfigError(f"search.holdout_windows must be at least 1, got {self.holdout_windows}")
        if self.budget not in ("per_kind", "joint"):
            raise ConfigError(f"search.budget must be per_kind or joint, got {self.budget!r}")

    @property
    def stages(self) -> int:
        return len(self.stage_windows)

    def check_windows(self, available: int) -> None:
        """The last stage's windows and the held-out ones must come from ``available`` calibration windows."""
        needed = self.stage_windows[-1] + self.holdout_windows
        if available < needed:
            raise ConfigError(
                f"ranking.allocation: search needs {needed} calibration windows (its last stage's "
                f"{self.stage_windows[-1]} plus {self.holdout_windows} held out), got {available}: raise "
                "data.nsamples or lower search.stage_windows / search.holdout_windows"
            )


@dataclass
class SearchResult:
    """The found genome, where it started, and how fitness went."""

    best: Genome
    best_fitness: float
    seeds: dict[str, Genome]
    seed_fitness: dict[str, float]
    history: list[dict] = field(default_factory=list)
    """Per generation: the parent's fitness at the last stage, whether it changed, evaluations so far."""
    evaluations: int = 0


def search(
    ladders: Mapping[str, Ladder],
    targets: Mapping[str, int],
    seeds: Mapping[str, Genome],
    fitness: Fitness,
    settings: SearchSettings,
    on_generation: Callable[[dict], None] | None = None,
) -> SearchResult:
    """Evolve one level per layer and kind, removing at least ``targets[kind]`` parameters of each kind
    (with ``settings.budget == "joint"``: at least their sum), from the best of ``seeds`` (each already a
    feasible ladder point, e.g. from :meth:`Ladder.nearest`); ``on_generation`` gets each generation's
    history entry (for a progress bar)."""
    if not seeds:
        raise ValueError("search needs at least one seed genome")
    budget = Budget(ladders, targets, settings.budget)
    for name, genome in seeds.items():
        for kind, ladder in ladders.items():
            levels = genome[kind]
            if (settings.budget == "per_kind" and ladder.removed(levels) < targets[kind]) or any(
                not low <= j <= high for j, low, high in zip(levels, ladder.floor, ladder.top, strict=True)
            ):
                raise ValueError(f"seed {name!r} is not a feasible {kind} ladder point")
        if not budget.holds(genome):
            raise ValueError(f"seed {name!r} removes fewer parameters than the targets' sum {budget.total}")
    rng = random.Random(settings.seed)
    last = settings.stages - 1
    count = 0

    many = getattr(fitness, "many", None)

    def scores(genomes: list[Genome], stage: int, generation: int) -> list[float]:
        nonlocal count
        count += len(genomes)
        if many is not None:
            return [float(v) for v in many(genomes, stage, generation)]
        return [float(fitness(g, stage, generation)) for g in genomes]

    seed_fitness = dict(zip(seeds, scores(list(seeds.values()), last, 0), strict=True))
    start = min(seed_fitness, key=lambda name: (seed_fitness[name], name))
    parent, parent_fitness = dict(seeds[start]), seed_fitness[start]
    history: list[dict] = []
    for generation in range(1, settings.generations + 1):
        pool = _offspring(parent, budget, settings, rng)
        for stage, keep in enumerate(settings.survivors):
            values = scores(pool, stage, generation)
            order = sorted(range(len(pool)), key=lambda i: (values[i], _key(pool[i])))
            pool = [pool[i] for i in order[:keep]]
        changed = False
        if pool:
            # the parent is scored again on this generation's tokens, so the comparison is on equal terms
            *values, parent_now = scores([*pool, parent], last, generation)
            final = {_key(g): v for g, v in zip(pool, values, strict=True)}
            best_key = min(final, key=lambda k: (final[k], k))
            if final[best_key] < parent_now:
                parent, parent_fitness, changed = (
                    dict(zip(sorted(ladders), best_key, strict=True)),
                    final[best_key],
                    True,
                )
            else:
                parent_fitness = parent_now
        history.append({"generation": generation, "fitness": parent_fitness, "changed": changed,
                        "evaluations": count})  # fmt: skip
        if on_generation is not None:
            on_generation(history[-1])
    return SearchResult(parent, parent_fitness, dict(seeds), seed_fitness, history, count)


def _key(genome: Genome) -> tuple[tuple[int, ...], ...]:
    return tuple(genome[kind] for kind in sorted(genome))


@dataclass(frozen=True)
class Budget:
    """Which genomes are feasible: each kind's removal at least its target, or (``joint``) their sum at
    least the targets' sum."""

    ladders: Mapping[str, Ladder]
    targets: Mapping[str, int]
    mode: str = "per_kind"

    @property
    def total(self) -> int:
        return sum(self.targets[kind] for kind in self.ladders)

    def slack(self, genome: Mapping[str, Sequence[int]]) -> int:
        """Parameters removed beyond the targets' sum."""
        return sum(ladder.removed(genome[kind]) for kind, ladder in self.ladders.items()) - self.total

    def holds(self, genome: Mapping[str, Sequence[int]]) -> bool:
        if self.mode == "joint":
            return self.slack(genome) >= 0
        return all(ladder.removed(genome[k]) >= self.targets[k] for k, ladder in self.ladders.items())


def _offspring(parent: Genome, budget: Budget, settings: SearchSettings, rng: random.Random) -> list[Genome]:
    """Distinct feasible mutants of the parent (fewer when the ladder leaves few moves)."""
    seen = {_key(parent)}
    children: list[Genome] = []
    for _ in range(settings.offspring * 4):  # a small ladder may not hold `offspring` distinct mutants
        child = {kind: list(levels) for kind, levels in parent.items()}
        for _ in range(rng.randint(1, settings.max_switches)):
            if budget.mode == "joint":
                _switch_joint(child, budget, rng)
            else:
                _switch(child, budget.ladders, budget.targets, rng)
        genome = {kind: tuple(levels) for kind, levels in child.items()}
        if _key(genome) not in seen:
            seen.add(_key(genome))
            children.append(genome)
            if len(children) == settings.offspring:
                break
    return children


def _switch(
    child: dict[str, list[int]], ladders: Mapping[str, Ladder], targets: Mapping[str, int], rng: random.Random
) -> None:
    """One level up in one layer and one down in another of the same kind, if the budget still holds."""
    kind = rng.choice(sorted(ladders))
    ladder, levels = ladders[kind], child[kind]
    up = [i for i in range(ladder.num_layers) if levels[i] < ladder.top[i]]
    down = [i for i in range(ladder.num_layers) if levels[i] > ladder.floor[i]]
    if not up or not down:
        return
    a, b = rng.choice(up), rng.choice(down)
    if a == b:
        return
    levels[a] += 1
    levels[b] -= 1
    if ladder.removed(levels) < targets[kind]:
        levels[a] -= 1
        levels[b] += 1


def _switch_joint(child: dict[str, list[int]], budget: Budget, rng: random.Random) -> None:
    """One level up and one down in any two (kind, layer) places, if the sum still holds; then levels
    lowered elsewhere, in random order, while it holds (:func:`_trim`)."""
    ladders = budget.ladders
    places = [(kind, layer) for kind in sorted(ladders) for layer in range(ladders[kind].num_layers)]
    up = [(k, i) for k, i in places if child[k][i] < ladders[k].top[i]]
    down = [(k, i) for k, i in places if child[k][i] > ladders[k].floor[i]]
    if not up or not down:
        return
    a, b = rng.choice(up), rng.choice(down)
    if a == b:
        return
    child[a[0]][a[1]] += 1
    child[b[0]][b[1]] -= 1
    if budget.slack(child) < 0:
        child[a[0]][a[1]] -= 1
        child[b[0]][b[1]] += 1
        return
    _trim(child, budget, rng, keep=a)


def _trim(child: dict[str, list[int]], budget: Budget, rng: random.Random, keep: tuple[str, int]) -> None:
    """Lower levels (not ``keep``'s, just raised) in random order while the sum holds. Levels of the two
    kinds differ in size, so trading a large level for a small one overshoots the target; this gives the
    difference back, so a candidate removes less than any level it could still lower above the target,
    and a move may end as one level up for several down."""
    ladders = budget.ladders
    places = [
        (k, i)
        for k in sorted(ladders)
        for i in range(ladders[k].num_layers)
        if (k, i) != keep and child[k][i] > ladders[k].floor[i]
    ]
    rng.shuffle(places)
    for kind, layer in places:
        level = child[kind][layer]
        if budget.slack(child) >= ladders[kind].step(layer, level - 1):  # level is above the floor
            child[kind][layer] -= 1


# ----------------------------------------------------------------------------------------------------------
# From a group table and a plan to ladders, seeds and back


def ladder_for(table: GroupTable, kind: str, levels: int, constraints: Constraints) -> Ladder:
    """Levels ``0, 1/levels, 2/levels, ...`` of each layer's groups (rounded, repeats dropped), up to the
    most the ranking's limits let the layer lose; its min rate is the floor."""
    sizes = [len(s) for s in table.scores(kind)]
    counts, top, floor = [], [], []
    for layer, n in enumerate(sizes):
        ladder = tuple(dict.fromkeys(round(j * n / levels) for j in range(levels)))
        high, low = constraints.max_count(layer, n), constraints.min_count(layer, n)
        top.append(max(j for j, c in enumerate(ladder) if c <= high))
        floor.append(min((j for j, c in enumerate(ladder) if c >= low), default=top[-1]))
        counts.append(ladder)
    return Ladder(tuple(counts), tuple(table.group_params(kind)), tuple(top), tuple(floor))


def group_order(table: GroupTable, kind: str) -> list[list[int]]:
    """Per layer, the groups in the order they go: lowest score first (ties: lower index first)."""
    return [sorted(range(len(s)), key=lambda g, s=s: (float(s[g]), g)) for s in table.scores(kind)]


def plan_counts(plan: PruningPlan, kind: str) -> list[int]:
    """Groups of ``kind`` the plan removes from each layer."""
    return [len(p.attention_groups if kind == "attention" else p.mlp_channels) for p in plan.layers]


def genome_plan(
    genome: Genome,
    ladders: Mapping[str, Ladder],
    orders: Mapping[str, list[list[int]]],
    num_layers: int,
    removed_layers: frozenset[int] = frozenset(),
) -> PruningPlan:
    """The plan of a genome: each layer loses the lowest-scored groups its level counts (whole layers the
    ranking removes stay removed)."""
    removed = {
        kind: [
            orders[kind][layer][: ladders[kind].counts[layer][level]] for layer, level in enumerate(levels)
        ]
        for kind, levels in genome.items()
    }
    empty: list[list[int]] = [[] for _ in range(num_layers)]
    return PruningPlan(
        [
            LayerPlan(
                layer,
                removed.get("attention", empty)[layer],
                removed.get("mlp", empty)[layer],
                remove_layer=layer in removed_layers,
            )
            for layer in range(num_layers)
        ]
    )
