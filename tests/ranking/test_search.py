"""The allocation search against an exhaustive search, under its budget, reproducible; one-line errors."""

from __future__ import annotations

import itertools

import pytest

from prunelight.errors import ConfigError
from prunelight.ranking.search import Ladder, SearchSettings, search

# two kinds whose layers differ clearly in sensitivity: a level costs weight * level^2
WEIGHTS = {"attention": (5.0, 1.0, 3.0), "mlp": (8.0, 1.0, 2.0, 6.0, 0.5)}
LADDERS = {
    "attention": Ladder(counts=((0, 1, 2),) * 3, params=(40,) * 3, top=(2, 2, 2)),
    "mlp": Ladder(counts=((0, 2, 4, 6, 8),) * 5, params=(10,) * 5, top=(4, 4, 4, 4, 3)),
}
TARGETS = {"attention": 120, "mlp": 200}  # three groups of attention, ten levels' worth of MLP channels


def cost(genome, stage=0, generation=0) -> float:
    return sum(
        w * j**2 for kind, levels in genome.items() for w, j in zip(WEIGHTS[kind], levels, strict=True)
    )


def exhaustive() -> tuple[dict, float]:
    best = {}
    for kind, ladder in LADDERS.items():
        points = itertools.product(*(range(f, t + 1) for f, t in zip(ladder.floor, ladder.top, strict=True)))
        feasible = [p for p in points if ladder.removed(p) >= TARGETS[kind]]
        best[kind] = min(feasible, key=lambda p, k=kind: cost({k: p}))
    return best, cost(best)


def uniform_seed() -> dict:
    return {
        kind: ladder.nearest(
            [TARGETS[kind] // ladder.params[0] // ladder.num_layers] * ladder.num_layers, TARGETS[kind]
        )  # fmt: skip
        for kind, ladder in LADDERS.items()
    }


def test_the_search_finds_the_exhaustive_optimum_and_never_leaves_the_budget():
    seen = []

    def fitness(genome, stage, generation):
        seen.append(genome)
        return cost(genome)

    expected, expected_cost = exhaustive()
    seed = uniform_seed()
    assert cost(seed) > expected_cost  # the seed is not already the answer
    result = search(LADDERS, TARGETS, {"uniform": seed}, fitness, SearchSettings(generations=60, offspring=8))
    assert result.best == expected and result.best_fitness == expected_cost
    assert all(LADDERS[k].removed(g[k]) >= TARGETS[k] for g in seen for k in LADDERS)
    assert all(j <= t for g in seen for k in LADDERS for j, t in zip(g[k], LADDERS[k].top, strict=True))
    fitness_curve = [h["fitness"] for h in result.history]
    assert fitness_curve == sorted(fitness_curve, reverse=True)  # the parent is only replaced by a better one


def test_the_same_seed_gives_the_same_search_and_stages_come_in_order():
    stages = []

    def fitness(genome, stage, generation):
        stages.append((generation, stage))
        return cost(genome) + 0.1 * stage  # the stages see different numbers, as on more tokens

    settings = SearchSettings(generations=5, offspring=6, stage_windows=(1, 2, 3), survivors=(4, 2))
    first = search(LADDERS, TARGETS, {"uniform": uniform_seed()}, fitness, settings)
    calls = list(stages)
    second = search(LADDERS, TARGETS, {"uniform": uniform_seed()}, fitness, settings)
    assert first.best == second.best and first.history == second.history and stages[len(calls) :] == calls
    for generation in range(1, 6):
        order = [s for g, s in calls if g == generation]
        assert order == sorted(order) and set(order) == {0, 1, 2}
    other = search(
        LADDERS, TARGETS, {"uniform": uniform_seed()}, fitness, SearchSettings(generations=5, seed=1)
    )
    assert other.history != first.history or other.best != first.best


def test_the_best_seed_is_the_start_and_is_reported():
    good, _ = exhaustive()
    result = search(LADDERS, TARGETS, {"uniform": uniform_seed(), "good": good}, cost,
                    SearchSettings(generations=2, offspring=4))  # fmt: skip
    assert result.seed_fitness["good"] < result.seed_fitness["uniform"] and result.best == good


def test_nearest_projects_a_plan_onto_the_ladder_and_meets_the_target():
    ladder = LADDERS["mlp"]
    levels = ladder.nearest([3, 0, 9, 5, 1], 200)  # 18 groups wanted; 20 needed
    assert ladder.removed(levels) >= 200 and ladder.removed(levels) - 20 < 200
    assert levels[2] == 4 and levels[1] <= 1  # the plan's heaviest layer stays heaviest, its lightest light


def test_a_ladder_that_cannot_meet_the_target_is_one_line():
    with pytest.raises(ConfigError, match="the ladder removes at most 150 parameters"):
        Ladder(counts=((0, 1),) * 3, params=(50,) * 3, top=(1, 1, 1)).nearest([1, 1, 1], 200)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (dict(generations=0), "search.generations must be at least 1, got 0"),
        (dict(offspring=0), "search.offspring must be at least 1"),
        (
            dict(survivors=(2, 4), stage_windows=(1, 2, 3)),
            "search.survivors must be positive and not increasing",
        ),
        (
            dict(survivors=(4,), stage_windows=(8, 4)),
            "search.stage_windows must be positive and not decreasing",
        ),
        (dict(survivors=(4, 2)), "search.survivors needs one entry per stage but the last: 1"),
        (dict(levels=1), "search.levels must be at least 2"),
    ],
)
def test_bad_settings_are_one_line(settings, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        SearchSettings(**settings)


def test_an_infeasible_seed_is_refused():
    seed = uniform_seed()
    seed["mlp"] = (0, 0, 0, 0, 0)
    with pytest.raises(ValueError, match="seed 'uniform' is not a feasible mlp ladder point"):
        search(LADDERS, TARGETS, {"uniform": seed}, cost, SearchSettings(generations=1))


def exhaustive_joint() -> tuple[dict, float]:
    """The cheapest genome whose two kinds together remove at least the targets' sum."""
    total = sum(TARGETS.values())
    points = {
        kind: list(
            itertools.product(*(range(f, t + 1) for f, t in zip(ladder.floor, ladder.top, strict=True)))
        )
        for kind, ladder in LADDERS.items()
    }
    best, best_cost = None, float("inf")
    for attention in points["attention"]:
        for mlp in points["mlp"]:
            genome = {"attention": attention, "mlp": mlp}
            removed = LADDERS["attention"].removed(attention) + LADDERS["mlp"].removed(mlp)
            if removed >= total and cost(genome) < best_cost:
                best, best_cost = genome, cost(genome)
    return best, best_cost


def test_a_joint_budget_moves_parameters_between_kinds_and_finds_the_joint_optimum():
    """Under ``budget: joint`` the search trades attention levels for MLP levels: it finds the exhaustive
    optimum over all genomes that remove the targets' sum, which is cheaper than the per-kind optimum and
    removes another split of the kinds; no candidate removes less than the sum, or a whole level more."""
    seen = []

    def fitness(genome, stage, generation):
        seen.append(genome)
        return cost(genome)

    expected, expected_cost = exhaustive_joint()
    per_kind, per_kind_cost = exhaustive()
    assert expected_cost < per_kind_cost  # the joint budget has something to gain here
    assert LADDERS["mlp"].removed(expected["mlp"]) < TARGETS["mlp"]  # it pays in attention instead
    settings = SearchSettings(generations=150, offspring=8, budget="joint")
    result = search(LADDERS, TARGETS, {"uniform": uniform_seed()}, fitness, settings)
    assert result.best == expected and result.best_fitness == expected_cost
    total, step = sum(TARGETS.values()), 40  # the largest level: one attention group
    removed = [sum(LADDERS[k].removed(g[k]) for k in LADDERS) for g in seen]
    assert min(removed) >= total and max(removed) < total + step


def test_a_seed_under_the_joint_budget_is_refused_and_the_budget_is_checked():
    seed = uniform_seed()
    seed["mlp"] = (0, 0, 0, 0, 0)
    with pytest.raises(ValueError, match="seed 'uniform' removes fewer parameters than the targets' sum 320"):
        search(LADDERS, TARGETS, {"uniform": seed}, cost, SearchSettings(generations=1, budget="joint"))
    with pytest.raises(ConfigError, match="search.budget must be per_kind or joint, got 'both'"):
        SearchSettings(budget="both")
