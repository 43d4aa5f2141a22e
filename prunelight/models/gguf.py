"""GGUF checkpoints, dequantised through transformers' own GGUF reader.

The weights and the config come from transformers. The tokenizer does too, except for the families whose
adapter sets ``gguf_sentencepiece_bpe`` (Gemma): some transformers versions rebuild it wrongly from the GGUF
metadata: Gemma's GGUF stores a SentencePiece BPE vocabulary with no merges and with scores that are merge
ranks (``-position``), not log-probabilities. transformers 5.17 turns it into a Unigram model over those
scores, which splits words into short pieces, adds no ``<bos>``, and once saved and loaded again becomes a
BPE without merges: one token per character (WikiText-2 test: 1.29M tokens instead of about 0.29M, and a
perplexity in the thousands). Those architectures get their tokenizer built here from the GGUF
vocabulary, and every converted tokenizer is checked before it is written.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from prunelight.errors import ModelError
from prunelight.models.adapters import BY_FAMILY

# llama.cpp's token types (gguf.TokenType)
NORMAL, CONTROL, USER_DEFINED, BYTE = 1, 3, 4, 6
SPACE = "\u2581"
"""SentencePiece's visible space."""

PROBE = (
    "The old man walked slowly along the river with his dog, and when the evening came they went home "
    "together.\n\nIn  the  morning\tthe  sun was shining again."
)
"""English text that any real tokenizer cuts into far fewer tokens than characters (spaces, tabs and a
blank line included, to check that a saved tokenizer reads them as the converted one does)."""
MAX_TOKENS_PER_CHAR = 1 / 3
"""Healthy tokenizers give about 0.2 tokens a character on :data:`PROBE`; character splitting gives ~1."""


def require_gguf(what: str) -> None:
    """Fail early, with the install line, when the optional ``gguf`` package is missing."""
    if importlib.util.find_spec("gguf") is None:
        raise ModelError(
            f"{what} is a GGUF checkpoint and reading it needs the 'gguf' package, which is not installed: "
            "pip install 'prunelight[gguf]' (or pip install gguf)"
        )


def drop_quantization_config(model: PreTrainedModel) -> PreTrainedModel:
    """transformers records the GGUF quantisation on the config but cannot save it back; the weights are
    already dequantised, so the record only stands in the way of ``save_pretrained``."""
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.__dict__.pop("hf_quantizer", None)
    model.is_quantized = False
    return model


# ----------------------------------------------------------------------------------------------------------
# Tokenizer


@dataclass(frozen=True)
class GgufVocab:
    """The tokenizer metadata of a GGUF file (llama.cpp's ``tokenizer.ggml.*`` keys)."""

    architecture: str
    model: str
    """``tokenizer.ggml.model``: ``llama`` (SentencePiece), ``gpt2`` (byte-level BPE), ..."""
    tokens: list[str]
    types: list[int]
    merges: list[str] | None = None
    bos_id: int | None = None
    eos_id: int | None = None
    unk_id: int | None = None
    pad_id: int | None = None
    add_bos: bool = True
    add_eos: bool = False

    def token(self, index: int | None) -> str | None:
        return None if index is None else self.tokens[index]


def read_vocab(gguf: Path) -> GgufVocab:
    """The tokenizer metadata of ``gguf``, read with the ``gguf`` package."""
    from gguf import GGUFReader

    fields = GGUFReader(str(gguf)).fields

    def scalar(key: str, default=None):
        field = fields.get(key)
        if field is None:
            return default
        value = field.parts[field.data[0]]
        return bytes(value).decode("utf-8") if field.types[0].name == "STRING" else value[0].item()

    def strings(key: str) -> list[str] | None:
        field = fields.get(key)
        return None if field is None else [bytes(field.parts[i]).decode("utf-8") for i in field.data]

    tokens = strings("tokenizer.ggml.tokens")
    if tokens is None:
        raise ModelError(f"{gguf}: the GGUF holds no tokenizer (no tokenizer.ggml.tokens)")
    types_field = fields.get("tokenizer.ggml.token_type")
    types = (
        [int(types_field.parts[i][0]) for i in types_field.data] if types_field else [NORMAL] * len(tokens)
    )
    return GgufVocab(
        architecture=scalar("general.architecture"),
        model=scalar("tokenizer.ggml.model", "llama"),
        tokens=tokens,
        types=types,
        merges=strings("tokenizer.ggml.merges"),
        bos_id=scalar("tokenizer.ggml.bos_token_id"),
        eos_id=scalar("tokenizer.ggml.eos_token_id"),
        unk_id=scalar("tokenizer.ggml.unknown_token_id"),
        pad_id=scalar("tokenizer.ggml.padding_token_id"),
        add_bos=bool(scalar("tokenizer.ggml.add_bos_token", True)),
        add_eos=bool(scalar("tokenizer.ggml.add_eos_token", False)),
    )


def spelled(token: str) -> str:
    """A vocabulary entry as SentencePiece spells it: llama.cpp writes runs of spaces as real spaces."""
    return SPACE * len(token) if token and not token.strip(" ") else token


def rank_merges(vocab: dict[str, int], products: list[str]) -> list[tuple[str, str]]:
    """BPE merges implied by a SentencePiece BPE vocabulary: every way of cutting a token of ``products``
    into two vocabulary entries, ranked by the token's place in ``products`` (best first), then by the ids
    of the two halves."""
    found = []
    for rank, token in enumerate(products):
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in vocab and right in vocab:
                found.append((rank, vocab[left], vocab[right], left, right))
    found.sort()
    return [(left, right) for *_, left, right in found]


def sentencepiece_bpe(vocab: GgufVocab) -> PreTrainedTokenizerBase:
    """A SentencePiece BPE tokenizer (Gemma's) rebuilt from a GGUF vocabulary with ``tokenizers``.

    Spaces become ``▁`` (no prefix space, no pre-tokenizer split), characters outside the vocabulary fall
    back to ``<0xNN>`` byte tokens, and the merges are derived from the vocabulary, ranked by the order of
    the file: Gemma's scores are ``-position`` for normal tokens, but control, user-defined and byte tokens
    carry placeholder scores (-1000, 0), so the position is the rank. Control tokens are special tokens,
    user-defined ones (newline and tab runs, HTML tags) are matched whole, as SentencePiece does; runs of
    spaces, which llama.cpp stores as spaces, are respelled ``▁▁..`` and reached through merges.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    tokens = [spelled(t) for t in vocab.tokens]
    ids = {token: index for index, token in enumerate(tokens)}
    if len(ids) != len(tokens):
        raise ModelError(f"{vocab.architecture} GGUF vocabulary has repeated tokens; cannot rebuild it")
    merge_results = [
        tokens[i]
        for i, kind in enumerate(vocab.types)
        if kind == NORMAL or (kind == USER_DEFINED and tokens[i] != vocab.tokens[i])
    ]
    merges = [tuple(m.split(" ")) for m in vocab.merges] if vocab.merges else rank_merges(ids, merge_results)
    unk = vocab.token(vocab.unk_id)
    backend = Tokenizer(BPE(ids, merges, unk_token=unk, fuse_unk=True, byte_fallback=True, dropout=None))
    backend.normalizer = normalizers.Replace(" ", SPACE)
    backend.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    backend.decoder = decoders.Sequence(
        [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    backend.add_special_tokens(
        [
            AddedToken(t, normalized=False, special=True)
            for t, k in zip(tokens, vocab.types, strict=True)
            if k == CONTROL
        ]
    )
    backend.add_tokens(
        [
            AddedToken(t, normalized=False, special=False)
            for t, original, kind in zip(tokens, vocab.tokens, vocab.types, strict=True)
            if kind == USER_DEFINED and t == original
        ]
    )
    bos, eos = vocab.token(vocab.bos_id), vocab.token(vocab.eos_id)
    starts = [bos] if vocab.add_bos and bos else []
    ends = [eos] if vocab.add_eos and eos else []
    single, pair = [*starts, "$A", *ends], [*starts, "$A", *ends, "$B:1", *ends]
    specials = [(t, ids[t]) for t in dict.fromkeys([*starts, *ends])]
    backend.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=specials)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos,
        eos_token=eos,
        unk_token=unk,
        pad_token=vocab.token(vocab.pad_id),
        add_bos_token=vocab.add_bos,
        add_eos_token=vocab.add_eos,
    )


def gguf_tokenizer(gguf: Path) -> PreTrainedTokenizerBase:
    """The tokenizer of a GGUF file: built here for a family whose adapter says its vocabulary needs it
    (``FamilyAdapter.gguf_sentencepiece_bpe``), else by transformers."""
    require_gguf(str(gguf))
    vocab = read_vocab(gguf)
    family = BY_FAMILY.get(vocab.architecture)
    if family is not None and family.gguf_sentencepiece_bpe and vocab.model == "llama":
        tokenizer = sentencepiece_bpe(vocab)
    else:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    check_tokenizer(tokenizer, str(gguf))
    return tokenizer


def check_tokenizer(tokenizer: PreTrainedTokenizerBase, where: str) -> None:
    """Refuse a tokenizer that cuts English into (near) characters: its merges are missing or ignored."""
    count = len(tokenizer(PROBE, add_special_tokens=False)["input_ids"])
    if count > MAX_TOKENS_PER_CHAR * len(PROBE):
        raise ModelError(
            f"{where}: the tokenizer cuts {len(PROBE)} characters of English into {count} tokens (a real "
            f"one gives about {len(PROBE) // 5}); it splits words into characters or short pieces, so its "
            "merges are missing or it is the wrong kind of model (Unigram over BPE ranks)"
        )


def check_reloads(tokenizer: PreTrainedTokenizerBase, folder: Path) -> None:
    """The tokenizer saved in ``folder`` reads text as ``tokenizer`` does (a save can lose merges)."""
    reloaded = AutoTokenizer.from_pretrained(folder)
    want, got = tokenizer(PROBE)["input_ids"], reloaded(PROBE)["input_ids"]
    if want != got:
        raise ModelError(
            f"{folder}: the saved tokenizer reads text differently from the converted one "
            f"({len(got)} tokens instead of {len(want)}: {reloaded.convert_ids_to_tokens(got)[:12]}...)"
        )


# ----------------------------------------------------------------------------------------------------------
# Conversion


def convert_gguf(gguf: Path, out: Path, dtype: torch.dtype = torch.bfloat16) -> None:
    """Write a plain Hugging Face folder (config, safetensors, tokenizer) from a GGUF file.

    The weights are copied into a model built fresh from the same config, so nothing of the GGUF
    loading path (quantizer hooks, config entries) survives into the saved folder. The tokenizer is
    :func:`gguf_tokenizer`'s, checked once more after it is saved.
    """
    tokenizer = gguf_tokenizer(gguf)  # checks that the gguf package is installed
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = drop_quantization_config(loaded).config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.to(dtype).save_pretrained(out)
    tokenizer.save_pretrained(out)
    check_reloads(tokenizer, out)
