"""Model families described once, as data.

A :class:`FamilyAdapter` is the only place in prunelight that knows how a family names its projections,
which of them carry biases, where per-head norms sit and how the GQA layout is read from the config.
Everything else (importance, ranking, removal, saving) asks the adapter, so adding a family is adding
one entry to :data:`FAMILIES`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from prunelight.errors import UnsupportedModelError

BiasRule = bool | str
"""``True``/``False``, or the name of a boolean config attribute that switches the bias on."""

PRUNED_MODEL_TYPE_PREFIX = "prunelight_"
"""A pruned model whose layers differ in size is saved as ``prunelight_<stock model_type>`` (see
:mod:`prunelight.save`); it belongs to the stock family."""


@dataclass(frozen=True)
class AttentionLayout:
    """Sizes of one decoder layer, as the stock attention code sees them."""

    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int

    @property
    def num_key_value_groups(self) -> int:
        """Query heads per key/value head: removing whole groups keeps this constant."""
        return self.num_heads // self.num_kv_heads


@dataclass(frozen=True)
class LayerModules:
    """The prunable linear maps of one decoder layer."""

    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    o: nn.Linear
    gate: nn.Linear
    up: nn.Linear
    down: nn.Linear
    head_norms: tuple[nn.Module, ...] = ()


@dataclass(frozen=True)
class FamilyAdapter:
    """How one architecture family lays out its decoder.

    The attribute paths are relative: ``layers`` from the ``*ForCausalLM`` model, the others from one
    decoder layer.
    """

    family: str
    model_types: tuple[str, ...]
    layers: str = "model.layers"
    attention: str = "self_attn"
    mlp: str = "mlp"
    q_proj: str = "q_proj"
    k_proj: str = "k_proj"
    v_proj: str = "v_proj"
    o_proj: str = "o_proj"
    gate_proj: str = "gate_proj"
    up_proj: str = "up_proj"
    down_proj: str = "down_proj"
    qkv_bias: BiasRule = False
    o_bias: BiasRule = False
    mlp_bias: BiasRule = False
    head_norms: tuple[str, ...] = ()
    """Norms over ``head_dim`` applied per head (Gemma3/Qwen3 ``q_norm``/``k_norm``): pruning whole heads
    leaves them untouched."""
    mlp_output_norm: str | None = None
    """A norm applied to the MLP's output before the residual add (Gemma 2/3 ``post_feedforward_layernorm``):
    a linear map folded into down_proj then no longer acts linearly on the residual."""
    gguf_sentencepiece_bpe: bool = False
    """The family's GGUF files hold a SentencePiece BPE vocabulary without merges whose scores are merge ranks
    (Gemma): prunelight builds that tokenizer itself, since transformers 5.17 rebuilds it as a Unigram that
    reloads as one token per character (:func:`prunelight.models.gguf.gguf_tokenizer`)."""

    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        return _get(model, self.layers)

    def modules(self, layer: nn.Module) -> LayerModules:
        attn, mlp = _get(layer, self.attention), _get(layer, self.mlp)
        return LayerModules(
            q=_get(attn, self.q_proj),
            k=_get(attn, self.k_proj),
            v=_get(attn, self.v_proj),
            o=_get(attn, self.o_proj),
            gate=_get(mlp, self.gate_proj),
            up=_get(mlp, self.up_proj),
            down=_get(mlp, self.down_proj),
            head_norms=tuple(_get(attn, name) for name in self.head_norms),
        )

    def layout(self, config: Any) -> AttentionLayout:
        """The uniform layout a stock config describes (a pruned model's layers may differ: docs/design.md,
        Application and saving)."""
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return AttentionLayout(config.hidden_size, heads, kv_heads, head_dim, config.intermediate_size)

    def has_bias(self, config: Any, projection: str) -> bool:
        """Whether ``projection`` (one of q, k, v, o, gate, up, down) carries a bias in this config."""
        rule = {"q": self.qkv_bias, "k": self.qkv_bias, "v": self.qkv_bias, "o": self.o_bias}.get(
            projection, self.mlp_bias
        )
        return bool(getattr(config, rule, False)) if isinstance(rule, str) else rule


def _get(root: nn.Module, dotted: str) -> Any:
    obj = root
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


FAMILIES: tuple[FamilyAdapter, ...] = (
    FamilyAdapter(
        "llama", ("llama",), qkv_bias="attention_bias", o_bias="attention_bias", mlp_bias="mlp_bias"
    ),
    FamilyAdapter("mistral", ("mistral",)),
    FamilyAdapter("qwen2", ("qwen2",), qkv_bias=True),
    FamilyAdapter(
        "qwen3",
        ("qwen3",),
        qkv_bias="attention_bias",
        o_bias="attention_bias",
        head_norms=("q_norm", "k_norm"),
    ),
    FamilyAdapter(
        "gemma", ("gemma",), qkv_bias="attention_bias", o_bias="attention_bias", gguf_sentencepiece_bpe=True
    ),
    FamilyAdapter(
        "gemma2",
        ("gemma2",),
        qkv_bias="attention_bias",
        o_bias="attention_bias",
        mlp_output_norm="post_feedforward_layernorm",
        gguf_sentencepiece_bpe=True,
    ),
    FamilyAdapter(
        "gemma3",
        ("gemma3_text",),
        qkv_bias="attention_bias",
        o_bias="attention_bias",
        head_norms=("q_norm", "k_norm"),
        mlp_output_norm="post_feedforward_layernorm",
        gguf_sentencepiece_bpe=True,
    ),
)

_BY_MODEL_TYPE = {model_type: adapter for adapter in FAMILIES for model_type in adapter.model_types}
BY_FAMILY = {adapter.family: adapter for adapter in FAMILIES}
"""Adapters by family name, which is also llama.cpp's ``general.architecture`` for these families."""


def supported_model_types() -> list[str]:
    return sorted(_BY_MODEL_TYPE)


def adapter_for(config_or_model: Any) -> FamilyAdapter:
    """The adapter of a model or config, or an error that lists the families prunelight supports."""
    config = getattr(config_or_model, "config", config_or_model)
    model_type = getattr(config, "model_type", None)
    if isinstance(model_type, str):
        model_type = model_type.removeprefix(PRUNED_MODEL_TYPE_PREFIX)
    try:
        return _BY_MODEL_TYPE[model_type]
    except KeyError:
        raise UnsupportedModelError(
            f"model family {model_type!r} is not supported; supported model_type values: "
            f"{', '.join(supported_model_types())}. A new family is one FamilyAdapter entry in "
            "prunelight/models/adapters.py."
        ) from None
