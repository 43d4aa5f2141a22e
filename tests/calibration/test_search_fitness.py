"""The search's fitness is the KL of the pruned model, computed independently; a search on a tiny model
finds what an exhaustive search over its ladder finds."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from conftest import FAMILY_CONFIGS, logits, make_model, tokens

from prunelight.apply import apply_plan
from prunelight.apply.reconstruction import input_moments, lsq_refit
from prunelight.apply.structured import kept_columns
from prunelight.calibration.reconstruct import LeastSquares
from prunelight.calibration.search_fitness import KLFitness, LevelRepairs, kl_to_dense, masked
from prunelight.importance.groups import structure_table
from prunelight.models import adapter_for
from prunelight.ranking.allocation import Constraints
from prunelight.ranking.search import (
    SearchSettings,
    genome_plan,
    group_order,
    ladder_for,
    plan_counts,
    search,
)


def independent_kl(dense, pruned, ids) -> float:
    """KL(dense || pruned) per position, from the two models' logits, in float64."""
    with torch.no_grad():
        p = torch.log_softmax(dense(ids).logits.double(), -1)
        q = torch.log_softmax(pruned(ids).logits.double(), -1)
    return float((p.exp() * (p - q)).sum(-1).mean())


def setup(family: str, layers: int = 3, levels: int = 4):
    model = make_model(family, layers=layers)
    table = structure_table(model, adapter_for(model), seed=3)
    ladders = {
        kind: ladder_for(table, kind, levels, Constraints(max_rate=0.8)) for kind in ("attention", "mlp")
    }
    orders = {kind: group_order(table, kind) for kind in ladders}
    return model, table, ladders, orders


@pytest.mark.parametrize("family", sorted(FAMILY_CONFIGS))
@pytest.mark.parametrize("slice_elements", [1, 2**26])  # a position at a time, or the whole batch at once
def test_fitness_equals_the_kl_of_the_assembled_pruned_model(family, slice_elements, monkeypatch):
    monkeypatch.setattr("prunelight.models.logits.SLICE_ELEMENTS", slice_elements)
    model, table, ladders, orders = setup(family)
    genome = {"attention": (1, 0, 1), "mlp": tuple(min(2, t) for t in ladders["mlp"].top)}
    plan = genome_plan(genome, ladders, orders, table.num_layers)
    assert plan_counts(plan, "mlp") == [ladders["mlp"].counts[i][j] for i, j in enumerate(genome["mlp"])]
    ids = tokens(batch=3)
    expected = independent_kl(model, apply_plan(copy.deepcopy(model), plan), ids)
    assert expected > 1e-5  # the plan changes the model
    fitness = KLFitness(model, ids, [2, 3], lambda g: genome_plan(g, ladders, orders, table.num_layers))
    torch.testing.assert_close(fitness(genome, 1, 0), expected, rtol=1e-4, atol=1e-7)
    assert kl_to_dense(model, ids, [genome_plan({k: (0,) * 3 for k in ladders}, ladders, orders, 3)]) == [0.0]
    with masked(model, plan):
        pass
    assert independent_kl(model, model, ids) == 0.0  # the hooks are gone after the context


def _dense_inputs(model, ids) -> dict[tuple[int, str], torch.Tensor]:
    """Every layer's o_proj and down_proj inputs in the dense model, captured by hand."""
    adapter, seen, handles = adapter_for(model), {}, []
    for index, layer in enumerate(adapter.decoder_layers(model)):
        for name in ("o", "down"):
            linear = getattr(adapter.modules(layer), name)
            hook = lambda _m, args, key=(index, name): seen.setdefault(key, []).append(args[0].flatten(0, 1))  # noqa: E731
            handles.append(linear.register_forward_pre_hook(hook))
    logits(model, ids)
    for handle in handles:
        handle.remove()
    return {key: torch.cat(xs).double() for key, xs in seen.items()}


@pytest.mark.parametrize("family", sorted(FAMILY_CONFIGS))
def test_removed_layers_and_repaired_levels_compute_like_the_assembled_model(family):
    """A removed layer passes its input through; with the level database, each cut projection computes
    with the least-squares refit of its kept columns on the dense model's inputs: the model assembled by
    apply_plan with those refits set by hand gives the same logits."""
    model, table, ladders, orders = setup(family)
    genome = {"attention": (1, 0, 1), "mlp": tuple(min(2, t) for t in ladders["mlp"].top)}
    ids = tokens(batch=3)
    skipping = genome_plan(genome, ladders, orders, table.num_layers, frozenset({1}))
    with masked(model, skipping):
        got = logits(model, ids)
    torch.testing.assert_close(got, logits(apply_plan(copy.deepcopy(model), skipping), ids))

    plan = genome_plan(genome, ladders, orders, table.num_layers)
    repairs = LevelRepairs(model, ids, LeastSquares(), damping=0.01, compensation=True, batch_size=2)
    with masked(model, plan, repairs):
        got = logits(model, ids)
    inputs = _dense_inputs(model, ids)
    adapter = adapter_for(model)
    refits = {}
    for layer_plan in plan.layers:
        for name, units in (("o", layer_plan.attention_groups), ("down", layer_plan.mlp_channels)):
            if units:
                linear = getattr(adapter.modules(adapter.decoder_layers(model)[layer_plan.layer]), name)
                x = inputs[layer_plan.layer, name]
                hessian, mean = input_moments(x.T @ x, x.sum(0), len(x), center=True)
                keep = kept_columns(*_sizes(model, layer_plan.layer), name, units, x.device)
                refits[layer_plan.layer, name] = lsq_refit(
                    linear.weight, hessian, keep, 0.01, mean, linear.bias
                )
    assembled = apply_plan(copy.deepcopy(model), plan)
    with torch.no_grad():
        for (index, name), (weight, bias, _) in refits.items():
            linear = getattr(adapter.modules(adapter.decoder_layers(assembled)[index]), name)
            linear.weight.copy_(weight)
            if linear.bias is None:
                linear.bias = torch.nn.Parameter(bias)
            else:
                linear.bias.copy_(bias)
    expected = logits(assembled, ids)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    with masked(model, plan):
        unrepaired = logits(model, ids)
    assert not torch.allclose(unrepaired, expected, rtol=1e-3, atol=1e-4)  # the refit changes the model


def _sizes(model, layer: int):
    from prunelight.save.layers import head_dim, read_layer_sizes

    return read_layer_sizes(model)[layer], head_dim(model)


def test_many_candidates_score_as_one_at_a_time():
    """``many`` runs the dense model once per batch for all the candidates: the same numbers, bit for bit."""
    model, table, ladders, orders = setup("llama")

    def plan_of(genome):
        return genome_plan(genome, ladders, orders, table.num_layers)

    fitness = KLFitness(model, tokens(batch=5), [4], plan_of, batch_size=2)
    genomes = [
        {"attention": (1, 0, 1), "mlp": (0, 1, 2)},
        {"attention": (0, 0, 0), "mlp": (2, 2, 0)},
        {"attention": (1, 1, 1), "mlp": (1, 1, 1)},
    ]
    assert fitness.many(genomes, 0, 7) == [fitness(g, 0, 7) for g in genomes]
    assert len(set(fitness.many(genomes, 0, 7))) == 3


def test_stages_draw_seeded_windows():
    model, table, ladders, orders = setup("llama")
    fitness = KLFitness(model, tokens(batch=6), [2, 4], lambda g: None)
    assert torch.equal(fitness.windows_of(0, 3), fitness.windows_of(0, 3))
    assert len(fitness.windows_of(1, 3)) == 4
    draws = {tuple(fitness.windows_of(0, g)[:, 0].tolist()) for g in range(8)}
    assert len(draws) > 1  # generations see different windows


def test_the_search_on_a_tiny_model_finds_the_exhaustive_optimum():
    model, table, ladders, orders = setup("llama", layers=3, levels=3)
    ladders = {"mlp": ladders["mlp"]}
    ids = tokens(batch=2)

    def plan_of(genome):
        return genome_plan(genome, ladders, orders, table.num_layers)

    fitness = KLFitness(model, ids, [2], plan_of)
    ladder = ladders["mlp"]
    target = ladder.removed([1, 1, 1])
    # the search's space: the exact budget, i.e. at least the target and less than one more level's groups
    step = max(c[1] * p for c, p in zip(ladder.counts, ladder.params, strict=True))
    points = [
        p
        for p in itertools.product(*(range(t + 1) for t in ladder.top))
        if target <= ladder.removed(p) < target + step
    ]
    kl = dict(zip(points, kl_to_dense(model, ids, [plan_of({"mlp": p}) for p in points]), strict=True))
    best = min(kl, key=kl.get)
    assert best != (1, 1, 1)  # the layers differ in sensitivity: uniform is not the answer
    settings = SearchSettings(generations=20, offspring=6, stage_windows=(2,), survivors=())
    result = search(ladders, {"mlp": target}, {"uniform": {"mlp": (1, 1, 1)}}, fitness, settings)
    assert result.best["mlp"] == best
    assert target <= ladder.removed(result.best["mlp"]) < target + step
