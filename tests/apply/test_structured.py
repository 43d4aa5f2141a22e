"""Structured removal equals masking the dense model, for every family, with biases and per-head norms that
matter; FLAP compensation equals feeding the removed channels their means; removed layers equal skipped
layers; bad plans fail before the model changes."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import (
    FAMILY_CONFIGS,
    TINY,
    WINDOW,
    logits,
    make_model,
    masked,
    non_uniform_plan,
    tokens,
)
from torch import nn

from prunelight.apply import LayerInputMeans, apply_plan
from prunelight.errors import ConfigError
from prunelight.models import adapter_for
from prunelight.ranking import LayerPlan, PruningPlan
from prunelight.save import read_layer_sizes

FAMILIES = sorted(FAMILY_CONFIGS)


def assert_nontrivial_extras(model: nn.Module) -> None:
    """The test would be blind to bias and per-head-norm handling if these were still zero / one."""
    adapter = adapter_for(model)
    for layer in adapter.decoder_layers(model):
        m = adapter.modules(layer)
        for name in ("q", "k", "v"):
            bias = getattr(m, name).bias
            if adapter.has_bias(model.config, name):
                assert bias is not None and bias.abs().min() > 0
        for norm in m.head_norms:
            assert norm.weight.std() > 0.1


@pytest.mark.parametrize("family", FAMILIES)
def test_pruned_equals_masked_dense_non_uniform(family):
    dense = make_model(family, layers=3)
    assert_nontrivial_extras(dense)
    plan = non_uniform_plan(layers=3)
    ids = tokens()
    expected = logits(masked(dense, plan), ids)
    assert not torch.allclose(
        expected, logits(dense, ids), atol=1e-3
    )  # the plan removes something that matters

    pruned = apply_plan(copy.deepcopy(dense), plan)
    torch.testing.assert_close(logits(pruned, ids), expected, atol=1e-5, rtol=0)

    sizes = read_layer_sizes(pruned)
    assert [(s.num_attention_heads, s.num_key_value_heads) for s in sizes] == [(2, 1), (2, 1), (4, 2)]
    assert [s.intermediate_size for s in sizes] == [64 - 9, 64 - 16, 64]
    config = pruned.config
    assert config.model_type == "prunelight_" + dense.config.model_type
    assert config.prunelight_layers == [s.to_dict() for s in sizes]
    assert config.head_dim == TINY["head_dim"]
    adapter = adapter_for(pruned)
    for layer, s in zip(adapter.decoder_layers(pruned), sizes, strict=True):
        m = adapter.modules(layer)
        for name in ("q", "k", "v"):
            linear = getattr(m, name)
            assert (linear.bias is not None) == adapter.has_bias(config, name)
            if linear.bias is not None:
                assert linear.bias.shape == (linear.out_features,)
        if m.o.bias is not None:
            assert m.o.bias.shape == (TINY["hidden_size"],)
        assert m.down.in_features == s.intermediate_size


@pytest.mark.parametrize("family", FAMILIES)
def test_uniform_plan_keeps_a_stock_config(family):
    dense = make_model(family)
    plan = PruningPlan([LayerPlan(i, [1], list(range(0, 64, 4))) for i in range(2)])
    ids = tokens()
    expected = logits(masked(dense, plan), ids)
    pruned = apply_plan(copy.deepcopy(dense), plan)
    torch.testing.assert_close(logits(pruned, ids), expected, atol=1e-5, rtol=0)
    config = pruned.config
    assert config.model_type == dense.config.model_type
    assert type(config) is type(dense.config) and type(pruned) is type(dense)
    assert (config.num_attention_heads, config.num_key_value_heads, config.intermediate_size) == (2, 1, 48)
    assert config.head_dim == TINY["head_dim"]


def test_uniform_but_invalid_for_the_stock_config_becomes_per_layer():
    # Gemma3's config insists on hidden_size % num_attention_heads == 0: 3 heads of 32 cannot be stock.
    dense = make_model("gemma3", num_key_value_heads=4)
    plan = PruningPlan([LayerPlan(i, [2]) for i in range(2)])
    ids = tokens()
    expected = logits(masked(dense, plan), ids)
    pruned = apply_plan(copy.deepcopy(dense), plan)
    assert pruned.config.model_type == "prunelight_gemma3_text"
    assert pruned.config.num_attention_heads == 4  # the top level stays buildable by the stock init
    torch.testing.assert_close(logits(pruned, ids), expected, atol=1e-5, rtol=0)


def random_means(model: nn.Module, seed: int = 3) -> dict[int, LayerInputMeans]:
    g = torch.Generator().manual_seed(seed)
    sizes = read_layer_sizes(model)
    dim = TINY["head_dim"]
    return {
        i: LayerInputMeans(
            o=torch.randn(s.num_attention_heads * dim, generator=g),
            down=torch.randn(s.intermediate_size, generator=g),
        )
        for i, s in enumerate(sizes)
    }


def with_means_fed(dense: nn.Module, plan: PruningPlan, means: dict[int, LayerInputMeans]) -> nn.Module:
    """The dense model whose o/down inputs carry the given means on the removed channels."""
    out = copy.deepcopy(dense)
    adapter = adapter_for(out)
    layout = adapter.layout(out.config)

    def feed(columns: torch.Tensor, mean: torch.Tensor):
        def hook(module, args):
            x = args[0].clone()
            x[..., columns] = mean[columns].to(x.dtype)
            return (x, *args[1:])

        return hook

    for layer_plan in plan.layers:
        m = adapter.modules(adapter.decoder_layers(out)[layer_plan.layer])
        width = layout.head_dim * layout.num_key_value_groups
        heads = [c for g in layer_plan.attention_groups for c in range(g * width, (g + 1) * width)]
        if heads:
            m.o.register_forward_pre_hook(feed(torch.tensor(heads), means[layer_plan.layer].o))
        if layer_plan.mlp_channels:
            m.down.register_forward_pre_hook(
                feed(torch.tensor(layer_plan.mlp_channels), means[layer_plan.layer].down)
            )
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_flap_compensation_equals_dense_fed_with_means(family):
    dense = make_model(family, layers=3)
    plan = non_uniform_plan(layers=3)
    means = random_means(dense)
    ids = tokens()
    expected = logits(with_means_fed(dense, plan, means), ids)
    pruned = apply_plan(copy.deepcopy(dense), plan, compensation=means)
    torch.testing.assert_close(logits(pruned, ids), expected, atol=1e-5, rtol=0)
    adapter = adapter_for(pruned)
    for layer, layer_plan in zip(adapter.decoder_layers(pruned), plan.layers, strict=True):
        m = adapter.modules(layer)
        if layer_plan.attention_groups:
            assert m.o.bias is not None
        if layer_plan.mlp_channels:
            assert m.down.bias is not None


def test_compensation_creating_a_bias_makes_the_config_per_layer():
    dense = make_model("mistral")  # no bias on o or down
    plan = PruningPlan([LayerPlan(i, [0], [1, 2, 3]) for i in range(2)])
    uniform = apply_plan(copy.deepcopy(dense), plan)
    assert uniform.config.model_type == "mistral"
    compensated = apply_plan(copy.deepcopy(dense), plan, compensation=random_means(dense))
    assert compensated.config.model_type == "prunelight_mistral"
    assert all(r["o_bias"] and r["down_bias"] for r in compensated.config.prunelight_layers)


def skipping(dense: nn.Module, removed: list[int]) -> nn.Module:
    """The dense model with the given decoder layers replaced by the identity."""
    out = copy.deepcopy(dense)
    adapter = adapter_for(out)

    def identity(module, args, kwargs, output):
        hidden = args[0] if args else kwargs["hidden_states"]
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    for i in removed:
        adapter.decoder_layers(out)[i].register_forward_hook(identity, with_kwargs=True)
    return out


def generate(model: nn.Module, ids: torch.Tensor, use_cache: bool) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(
            ids, max_new_tokens=2 * WINDOW, do_sample=False, use_cache=use_cache, pad_token_id=0
        )


@pytest.mark.parametrize("family", FAMILIES)
def test_layer_removal_equals_skipping_and_generates_with_cache(family):
    dense = make_model(family, layers=4)
    removed = [1]
    plan = PruningPlan(
        [LayerPlan(0, [0], [5, 6]), LayerPlan(1, remove_layer=True), LayerPlan(2, [1]), LayerPlan(3)]
    )
    ids = tokens()
    expected_model = masked(skipping(dense, removed), plan)
    pruned = apply_plan(copy.deepcopy(dense), plan)
    torch.testing.assert_close(logits(pruned, ids), logits(expected_model, ids), atol=1e-5, rtol=0)

    adapter = adapter_for(pruned)
    layers = adapter.decoder_layers(pruned)
    assert len(layers) == pruned.config.num_hidden_layers == 3
    assert [layer.get_submodule(adapter.attention).layer_idx for layer in layers] == [0, 1, 2]
    dense_types = getattr(dense.config, "layer_types", None)
    if dense_types is not None:
        assert pruned.config.layer_types == [t for i, t in enumerate(dense_types) if i not in removed]

    prompt = tokens(batch=1, seq=6, seed=4)
    cached = generate(pruned, prompt, use_cache=True)
    assert cached.shape[1] == 6 + 2 * WINDOW  # runs past the sliding window
    assert torch.equal(cached, generate(pruned, prompt, use_cache=False))
    assert torch.equal(cached, generate(expected_model, prompt, use_cache=False))


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    ("plan", "compensation", "message"),
    [
        (PruningPlan([LayerPlan(0, [2])]), None, "attention group index 2 is out of range"),
        (PruningPlan([LayerPlan(1, [0, 1])]), None, "removes all 2 attention groups"),
        (PruningPlan([LayerPlan(0, [], [64])]), None, "MLP channel index 64 is out of range"),
        (PruningPlan([LayerPlan(0, [], list(range(64)))]), None, "removes all 64 MLP channels"),
        (PruningPlan([LayerPlan(0, [0, 0])]), None, "more than once"),
        (PruningPlan([LayerPlan(2, [0])]), None, "names layer 2"),
        (PruningPlan([LayerPlan(0, remove_layer=True), LayerPlan(1, remove_layer=True)]), None, "all 2"),
        (
            PruningPlan([LayerPlan(1, [0]), LayerPlan(0, [1])]),
            {0: LayerInputMeans(o=torch.zeros(5))},
            r"must have shape \(32,\)",
        ),
    ],
)
def test_bad_plan_raises_before_touching_the_model(plan, compensation, message):
    model = make_model("qwen2")
    before, config_before = state(model), model.config.to_dict()
    with pytest.raises(ConfigError, match=message):
        apply_plan(model, plan, compensation=compensation)
    after = state(model)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert model.config.to_dict() == config_before
