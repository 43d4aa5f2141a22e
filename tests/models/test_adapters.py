"""Each family loads through its adapter, exposes its projections with the right shapes and biases, and
round-trips through save/load with identical logits."""

import pytest
import torch
from conftest import FAMILY_CONFIGS, build_tiny, save_tokenizer, tiny_config
from transformers import AutoModelForCausalLM, GPT2Config

import prunelight
from prunelight.errors import UnsupportedModelError
from prunelight.models import FAMILIES, adapter_for, supported_model_types


def test_every_registered_family_has_a_tiny_test_config():
    assert {a.family for a in FAMILIES} == set(FAMILY_CONFIGS)


@pytest.mark.parametrize("family", sorted(FAMILY_CONFIGS))
def test_family_loads_through_adapter_and_round_trips(family, tiny_tokenizer, tmp_path):
    folder = build_tiny(family, tiny_tokenizer, tmp_path / family)
    loaded = prunelight.load(str(folder), dtype="float32")
    adapter, config = loaded.adapter, loaded.model.config
    assert adapter.family == family
    layout = adapter.layout(config)
    assert (layout.num_heads, layout.num_kv_heads, layout.head_dim) == (4, 2, 8)
    assert layout.num_key_value_groups == 2
    layers = adapter.decoder_layers(loaded.model)
    assert len(layers) == 2
    for layer in layers:
        m = adapter.modules(layer)
        q_out, kv_out = layout.num_heads * layout.head_dim, layout.num_kv_heads * layout.head_dim
        assert m.q.weight.shape == (q_out, layout.hidden_size)
        assert m.k.weight.shape == m.v.weight.shape == (kv_out, layout.hidden_size)
        assert m.o.weight.shape == (layout.hidden_size, q_out)
        assert m.gate.weight.shape == m.up.weight.shape == (layout.intermediate_size, layout.hidden_size)
        assert m.down.weight.shape == (layout.hidden_size, layout.intermediate_size)
        for name in ("q", "k", "v", "o", "gate", "up", "down"):
            assert (getattr(m, name).bias is not None) == adapter.has_bias(config, name), name
        assert len(m.head_norms) == len(adapter.head_norms)
        for norm in m.head_norms:
            assert norm.weight.shape == (layout.head_dim,)

    ids = tiny_tokenizer("The tower is 324 metres tall.", return_tensors="pt").input_ids
    reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = reference(ids).logits
        assert torch.equal(loaded.model(ids).logits, expected)
    loaded.model.save_pretrained(tmp_path / "again")
    save_tokenizer(loaded.tokenizer, tmp_path / "again")
    again = prunelight.load(str(tmp_path / "again"), dtype="float32").model
    with torch.no_grad():
        assert torch.equal(again(ids).logits, expected)


def test_bias_rules_follow_config_flags(tiny_tokenizer):
    llama = adapter_for(tiny_config("llama", 512))
    assert llama.has_bias(tiny_config("llama", 512), "q") and not llama.has_bias(
        tiny_config("llama", 512), "up"
    )
    qwen2 = adapter_for(tiny_config("qwen2", 512))
    assert qwen2.has_bias(tiny_config("qwen2", 512), "v") and not qwen2.has_bias(
        tiny_config("qwen2", 512), "o"
    )


def test_unknown_family_lists_the_supported_ones(tiny_tokenizer, tmp_path):
    config = GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=len(tiny_tokenizer))
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    save_tokenizer(tiny_tokenizer, tmp_path)
    with pytest.raises(UnsupportedModelError) as err:
        prunelight.load(str(tmp_path))
    assert "'gpt2'" in str(err.value)
    for model_type in supported_model_types():
        assert model_type in str(err.value)
