"""Expanding grouped key/value heads changes the kernel, never the attention: same logits and gradients in
every family, and transformers' sdpa is back once the context ends."""

from __future__ import annotations

import pytest
import torch
from conftest import FAMILY_CONFIGS, make_model, tokens
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from prunelight.calibration.losses import window_losses
from prunelight.models.attention import efficient_float32_attention, expands_heads


def logits_and_grads(model, ids) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=ids, use_cache=False).logits
    window_losses(logits, ids).mean().backward()
    return logits.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("family", sorted(FAMILY_CONFIGS))
def test_expanded_heads_give_the_logits_and_gradients_of_grouped_ones(family):
    model = make_model(family)  # transformers' default: sdpa, or eager where the family has no sdpa (gemma2)
    ids = tokens(batch=2)
    expected, expected_grads = logits_and_grads(model, ids)
    expanded = []

    def always(query, key, mask) -> bool:  # as on a GPU whose efficient kernel refuses groups
        grouped = mask is None and key.shape[1] != query.shape[1]
        expanded.append(grouped)
        return grouped

    with efficient_float32_attention(always):
        got, grads = logits_and_grads(model, ids)
    # with sdpa the unmasked (full-attention) layers take the expanded path; eager never asks
    assert any(expanded) == (model.config._attn_implementation == "sdpa")
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_the_context_restores_transformers_sdpa_even_after_an_error():
    sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]
    with pytest.raises(RuntimeError, match="inside"), efficient_float32_attention():
        assert ALL_ATTENTION_FUNCTIONS["sdpa"] is not sdpa
        raise RuntimeError("inside")
    assert ALL_ATTENTION_FUNCTIONS["sdpa"] is sdpa


def test_heads_are_expanded_only_for_unmasked_float32_attention_with_groups_that_the_kernel_refuses():
    query, key = torch.zeros(1, 4, 8, 16), torch.zeros(1, 2, 8, 16)

    def refuses(q, k) -> bool:
        return True

    assert expands_heads(query, key, None, refuses)
    assert not expands_heads(query.half(), key.half(), None, refuses)
    assert not expands_heads(query, key, torch.zeros(1, 1, 8, 8), refuses)
    assert not expands_heads(query, query, None, refuses)
    assert not expands_heads(query[:, :, :1], key, None, refuses)  # one query position: decoding
    assert not expands_heads(query, key, None, lambda q, k: False)
    assert not expands_heads(query, key, None)  # on a CPU torch is not even asked: no efficient kernel


@pytest.mark.parametrize("head_dim", [8, 320])  # 320: past the head size transformers hands to enable_gqa
def test_nested_contexts_repeat_the_heads_once(head_dim):
    model = make_model("qwen3", head_dim=head_dim)
    ids = tokens(batch=2)
    expected = logits_and_grads(model, ids)[0]

    def always(query, key, mask) -> bool:
        return mask is None and key.shape[1] != query.shape[1]

    with efficient_float32_attention(always), efficient_float32_attention(always):
        got = logits_and_grads(model, ids)[0]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_a_prunelight_run_computes_attention_through_the_expanding_sdpa(monkeypatch):
    import prunelight.main

    seen = []
    monkeypatch.setattr(prunelight.main, "cli", lambda argv: seen.append(ALL_ATTENTION_FUNCTIONS["sdpa"]))
    sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]
    prunelight.main.main(["evaluate"])
    assert len(seen) == 1 and seen[0] is not sdpa
    assert ALL_ATTENTION_FUNCTIONS["sdpa"] is sdpa
