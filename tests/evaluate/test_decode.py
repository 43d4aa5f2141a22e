"""GraphDecoder's tokens are greedy tokens, for dense and pruned models of every family.

The CUDA graph itself needs a GPU (the benchmark checks its tokens against the eager step there); here the
same step runs eagerly, which checks everything the graph holds: the static cache sized per layer from its
first keys (pruned layers keep different key/value head counts), the positions, and the cache's reset.
"""

from __future__ import annotations

import pytest
import torch
from conftest import FAMILY_CONFIGS, make_model, non_uniform_plan, tokens

from prunelight.apply import apply_plan
from prunelight.errors import ConfigError
from prunelight.evaluate.decode import GraphDecoder


def _is_greedy(model, decoded: tuple[torch.Tensor, torch.Tensor], prompt: int) -> bool:
    """Every new token's logits are the model's own over all tokens before it (one full forward, no cache),
    and the token is their argmax: greedy decoding by definition, without ``generate``'s end rules."""
    out, logits = decoded
    with torch.no_grad():
        full = model(out[:, :-1]).logits[:, prompt - 1 :]
    close = torch.allclose(logits, full, rtol=1e-4, atol=1e-4)
    return close and torch.equal(full.argmax(-1), out[:, prompt:])


@pytest.mark.parametrize("family", sorted(FAMILY_CONFIGS))
@pytest.mark.parametrize("pruned", [False, True])
def test_tokens_are_greedy(family, pruned):
    model = make_model(family)
    if pruned:
        model = apply_plan(model, non_uniform_plan()).eval()
    decoder = GraphDecoder(model, max_length=40)
    assert not decoder.graph  # on the CPU the step runs eagerly
    for seed in (1, 2):  # the second prompt reuses the cache after its reset
        ids = tokens(batch=1, seq=12, seed=seed)
        out = decoder.generate(ids, new_tokens=20)
        assert out.shape == (1, 32) and torch.equal(out[:, :12], ids)
        assert _is_greedy(model, decoder.generate(ids, new_tokens=20, return_logits=True), 12)
    batch = tokens(batch=2, seq=12, seed=3)  # another batch size builds its own cache
    assert _is_greedy(model, decoder.generate(batch, new_tokens=6, return_logits=True), 12)
    # not vacuous: a decoder that forgot the cache's reset would attend to the last prompt's keys
    decoder.cache.reset = lambda: None
    stale = decoder.generate(tokens(batch=2, seq=12, seed=4), new_tokens=6, return_logits=True)
    assert not _is_greedy(model, stale, 12)


def test_too_long_a_request_and_a_graph_on_the_cpu_are_one_line_errors():
    model = make_model("llama")
    with pytest.raises(ConfigError, match="max_length >= 30"):
        GraphDecoder(model, max_length=16).generate(tokens(batch=1, seq=10), new_tokens=20)
    with pytest.raises(ConfigError, match="needs the model on a CUDA device"):
        GraphDecoder(model, max_length=16, graph=True)
