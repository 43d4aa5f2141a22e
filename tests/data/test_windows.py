"""Calibration windows: seeded, distinct, weighted by source; evaluation windows: consecutive."""

import pytest
import torch

from prunelight.data import calibration_windows, evaluation_windows, load_corpus
from prunelight.data.windows import split_counts, tokenize
from prunelight.errors import ConfigError, DataError


def _contains(stream: torch.Tensor, window: torch.Tensor) -> bool:
    return stream.unfold(0, window.numel(), 1).eq(window).all(dim=1).any().item()


def test_same_seed_same_windows_other_seed_other_windows(tiny_tokenizer):
    a = calibration_windows("c4", tiny_tokenizer, nsamples=8, seqlen=64, seed=3)
    b = calibration_windows("c4", tiny_tokenizer, nsamples=8, seqlen=64, seed=3)
    c = calibration_windows("c4", tiny_tokenizer, nsamples=8, seqlen=64, seed=4)
    assert torch.equal(a.input_ids, b.input_ids)
    assert not torch.equal(a.input_ids, c.input_ids)
    assert a.input_ids.shape == (8, 64)
    assert len({tuple(w.tolist()) for w in a.input_ids}) == 8  # distinct windows


def test_ordered_corpus_windows_are_slices_of_the_running_text(tiny_tokenizer):
    windows = calibration_windows({"name": "wikitext2", "split": "validation"}, tiny_tokenizer, 6, 32, seed=0)
    stream = tokenize(load_corpus("wikitext2", "validation").running_text(), tiny_tokenizer)
    assert all(_contains(stream, w) for w in windows.input_ids)


def test_mixture_respects_weights_and_tags_sources(tiny_tokenizer):
    mixture = [
        {"name": "ptb", "split": "validation", "weight": 3},
        {"name": "wikitext2", "split": "validation"},
    ]
    windows = calibration_windows(mixture, tiny_tokenizer, nsamples=16, seqlen=32, seed=1)
    assert windows.counts() == [12, 4]
    assert windows.sources == ["ptb", "wikitext2"]
    ptb = tokenize(load_corpus("ptb", "validation").running_text(), tiny_tokenizer)
    for window, source in zip(windows.input_ids, windows.source, strict=True):
        assert _contains(ptb, window) == (source.item() == 0)


def test_split_counts_sum_and_round_by_largest_remainder():
    assert split_counts(10, [1, 1, 1]) == [4, 3, 3]
    assert split_counts(128, [0.7, 0.2, 0.1]) == [90, 25, 13]
    assert sum(split_counts(7, [0.3, 0.3, 0.4])) == 7


def test_corpus_too_short_for_nsamples_x_seqlen(tiny_tokenizer):
    with pytest.raises(DataError, match=r"fewer than nsamples x seqlen = 2000 x 512"):
        calibration_windows({"name": "ptb", "split": "test"}, tiny_tokenizer, nsamples=2000, seqlen=512)


def test_bad_sizes(tiny_tokenizer):
    with pytest.raises(ConfigError, match="nsamples"):
        calibration_windows("c4", tiny_tokenizer, nsamples=0, seqlen=64)
    with pytest.raises(ConfigError, match="seqlen"):
        evaluation_windows("ptb", tiny_tokenizer, seqlen=1)
    with pytest.raises(ConfigError, match="max_windows"):
        evaluation_windows("ptb", tiny_tokenizer, seqlen=64, max_windows=0)


def test_evaluation_windows_are_consecutive_and_capped(tiny_tokenizer):
    full = evaluation_windows("ptb", tiny_tokenizer, seqlen=256)
    capped = evaluation_windows("ptb", tiny_tokenizer, seqlen=256, max_windows=3)
    assert torch.equal(capped.input_ids, full.input_ids[:3])
    stream = tokenize(load_corpus("ptb", "test").running_text(), tiny_tokenizer)
    assert torch.equal(full.input_ids.flatten(), stream[: len(full) * 256])


def test_one_window_longer_than_the_corpus(tiny_tokenizer, tmp_path):
    (tmp_path / "short.txt").write_text("only a few words here")
    with pytest.raises(DataError, match="fewer than one window"):
        evaluation_windows(str(tmp_path / "short.txt"), tiny_tokenizer, seqlen=2048)
