"""The GGUF tokenizer rebuild (prunelight.models.gguf) on tiny synthetic vocabularies, offline."""

import pytest
from tokenizers import Tokenizer
from tokenizers.models import Unigram
from transformers import PreTrainedTokenizerFast

from prunelight.errors import ModelError
from prunelight.models.gguf import (
    BYTE,
    CONTROL,
    NORMAL,
    PROBE,
    SPACE,
    USER_DEFINED,
    GgufVocab,
    check_reloads,
    check_tokenizer,
    gguf_tokenizer,
    rank_merges,
    sentencepiece_bpe,
    spelled,
)

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]


def gemma_like(words: list[str]) -> GgufVocab:
    """A Gemma-style GGUF vocabulary: control tokens, user-defined newline/space runs (spaces written as
    spaces, as llama.cpp does), byte tokens, then characters and every prefix of each ``▁word``, in merge
    order. No merges, as in Gemma's GGUF."""
    pieces = [SPACE + w for w in words]
    chars = sorted({c for p in pieces for c in p})
    prefixes = list(dict.fromkeys(p[:n] for p in pieces for n in range(2, len(p) + 1)))
    prefixes = [p for p in prefixes if p not in chars]
    tokens = [*SPECIALS, "\n", "\n\n", "  ", "   ", "<0x00>", "<0x0A>", *chars, *prefixes]
    types = [CONTROL] * 4 + [USER_DEFINED] * 4 + [BYTE] * 2 + [NORMAL] * (len(chars) + len(prefixes))
    return GgufVocab("gemma3", "llama", tokens, types, bos_id=2, eos_id=1, unk_id=3, pad_id=0)


def test_space_runs_are_respelled_and_nothing_else():
    assert spelled("   ") == SPACE * 3
    assert spelled(" a") == " a"
    assert spelled("\t") == "\t"
    assert spelled("\n\n") == "\n\n"


def test_merges_follow_the_file_order_not_the_alphabet():
    vocab = {t: i for i, t in enumerate(["a", "b", "c", "bc", "ab", "abc"])}
    # "bc" comes before "ab" in the file, so (b, c) is merged first; "abc" is reached from a + bc or ab + c
    assert rank_merges(vocab, ["bc", "ab", "abc"]) == [("b", "c"), ("a", "b"), ("a", "bc"), ("ab", "c")]


def test_rebuilt_tokenizer_reads_words_spaces_and_newlines_whole():
    tokenizer = sentencepiece_bpe(gemma_like(["the", "cat", "sat"]))
    ids = tokenizer("the cat  sat\n\nthe")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == [
        "<bos>",
        "t",
        "h",
        "e",  # no prefix space: a text's first word has no ▁, and "the" alone is not in this vocabulary
        f"{SPACE}cat",
        SPACE * 2,  # "  " is stored with real spaces; respelled, it is reached through merges
        "s",
        "a",
        "t",
        "\n\n",
        "t",
        "h",
        "e",
    ]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "the cat  sat\n\nthe"
    assert tokenizer(" the")["input_ids"][1:] == [tokenizer.convert_tokens_to_ids(f"{SPACE}the")]


def test_probe_is_read_word_by_word_and_survives_a_save(tmp_path):
    tokenizer = sentencepiece_bpe(gemma_like(PROBE.split()))
    check_tokenizer(tokenizer, "rebuilt")
    tokenizer.save_pretrained(tmp_path)
    check_reloads(tokenizer, tmp_path)


def test_character_splitting_tokenizers_are_refused():
    vocab = gemma_like(PROBE.split())
    ids = {spelled(t): i for i, t in enumerate(vocab.tokens)}
    # what transformers 5.17 built from Gemma's GGUF: a Unigram over the scores, which are -position
    # (merge ranks, not log-probabilities), so single characters always win
    unigram = Tokenizer(Unigram([(t, -float(i)) for t, i in ids.items()], unk_id=3, byte_fallback=True))
    with pytest.raises(ModelError, match="splits words into characters"):
        check_tokenizer(PreTrainedTokenizerFast(tokenizer_object=unigram), "unigram")
    # and what it became once saved and loaded again: a BPE without merges
    no_merges = sentencepiece_bpe(GgufVocab(**{**vocab.__dict__, "merges": ["\n \n"]}))
    with pytest.raises(ModelError, match="splits words into characters"):
        check_tokenizer(no_merges, "no merges")


def test_gguf_tokenizer_rebuilds_by_architecture(tmp_path):
    gguf = pytest.importorskip("gguf")
    vocab = gemma_like(PROBE.split())
    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_tokenizer_model("llama")
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    writer.add_token_scores([-float(i) for i in range(len(vocab.tokens))])
    writer.add_bos_token_id(2)
    writer.add_eos_token_id(1)
    writer.add_unk_token_id(3)
    writer.add_pad_token_id(0)
    writer.add_add_bos_token(True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    tokenizer = gguf_tokenizer(path)
    ids = tokenizer("The old man")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == ["<bos>", "T", "h", "e", f"{SPACE}old", f"{SPACE}man"]
    assert tokenizer.convert_tokens_to_ids(SPACE * 3) == vocab.tokens.index("   ")
