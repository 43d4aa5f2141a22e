"""Token windows: seeded calibration samples (single corpora and weighted mixtures) and non-overlapping
evaluation windows over a whole split.

Calibration windows are distinct, non-overlapping ``seqlen`` slices of the corpus's running text: a random
offset, then ``nsamples`` slots drawn without replacement, all from ``random.Random`` seeded per source, so
the same seed gives the same windows on every machine and every number of ranks.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from prunelight.data.corpora import Corpus, CorpusSpec, as_spec, load_corpus
from prunelight.errors import ConfigError, DataError

OVERSAMPLE = 4
"""Calibration draws from a running text about this many times longer than it needs."""
CHARS_PER_TOKEN_BOUND = 8
"""Generous upper bound of characters per token, to stop reading documents early."""


@dataclass
class WindowSet:
    """``input_ids[i]`` is one window of ``seqlen`` tokens from ``sources[source[i]]``."""

    input_ids: torch.Tensor
    source: torch.Tensor
    sources: list[str]
    weights: list[float]
    seqlen: int
    origins: list[str] = field(default_factory=list)
    tokens_available: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def counts(self) -> list[int]:
        return torch.bincount(self.source, minlength=len(self.sources)).tolist()


def tokenize(text: str, tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """The token ids of a running text, special tokens added once at the start, as the literature does."""
    ids = tokenizer(text, return_attention_mask=False, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def _check_sizes(seqlen: int, count: int | None = None) -> None:
    if seqlen < 2:
        raise ConfigError(f"seqlen must be at least 2 tokens, got {seqlen}")
    if count is not None and count < 1:
        raise ConfigError(f"nsamples must be at least 1, got {count}")


def split_counts(nsamples: int, weights: Sequence[float]) -> list[int]:
    """Windows per source: proportional to the weights, rounded by largest remainder (sums to nsamples)."""
    total = float(sum(weights))
    exact = [nsamples * w / total for w in weights]
    counts = [int(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: (exact[i] - counts[i], -i), reverse=True)
    for i in order[: nsamples - sum(counts)]:
        counts[i] += 1
    return counts


def _stream_for(corpus: Corpus, tokenizer, need_tokens: int, rng: random.Random) -> torch.Tensor:
    """Tokens of the corpus's running text, reading only as many (shuffled) documents as needed."""
    if corpus.ordered:
        return tokenize(corpus.running_text(), tokenizer)
    texts = list(corpus.texts)
    rng.shuffle(texts)
    taken = texts_for(texts, need_tokens * OVERSAMPLE, corpus.join)
    stream = tokenize(corpus.running_text(taken), tokenizer)
    if stream.numel() < need_tokens * OVERSAMPLE and len(taken) < len(texts):
        stream = tokenize(corpus.running_text(texts), tokenizer)
    return stream


def texts_for(texts: list[str], tokens: int, join: str) -> list[str]:
    """The leading texts that surely hold ``tokens`` tokens (by the characters-per-token bound)."""
    budget, chars, taken = tokens * CHARS_PER_TOKEN_BOUND, 0, 0
    while taken < len(texts) and chars < budget:
        chars, taken = chars + len(texts[taken]) + len(join), taken + 1
    return texts[:taken]


def _draw(stream: torch.Tensor, count: int, seqlen: int, rng: random.Random) -> torch.Tensor:
    slots = stream.numel() // seqlen
    offset = rng.randrange(stream.numel() - slots * seqlen + 1)
    chosen = rng.sample(range(slots), count)
    return torch.stack([stream[offset + s * seqlen : offset + (s + 1) * seqlen] for s in chosen])


def calibration_windows(
    corpora: str | CorpusSpec | dict | Sequence[str | CorpusSpec | dict],
    tokenizer: PreTrainedTokenizerBase,
    nsamples: int = 128,
    seqlen: int = 2048,
    seed: int = 0,
    split: str = "train",
    data_root: str | Path | None = None,
) -> WindowSet:
    """``nsamples`` x ``seqlen`` calibration windows from one corpus or a weighted mixture.

    A mixture gives each source a share of ``nsamples`` proportional to its weight; the window set keeps
    each window's source so that gradient criteria can weight per-source losses (mixed gradient).
    """
    _check_sizes(seqlen, nsamples)
    specs = [as_spec(c) for c in ([corpora] if isinstance(corpora, (str, CorpusSpec, dict)) else corpora)]
    if not specs:
        raise ConfigError("no calibration corpus given")
    weights = [s.weight for s in specs]
    counts = split_counts(nsamples, weights)
    windows, sources, origins, available = [], [], [], []
    for index, (spec, count) in enumerate(zip(specs, counts, strict=True)):
        corpus = load_corpus(spec, split, data_root)
        rng = random.Random(f"{seed}/{index}/{spec.label}")
        stream = _stream_for(corpus, tokenizer, count * seqlen, rng)
        available.append(stream.numel())
        origins.append(corpus.origin)
        if stream.numel() < count * seqlen:
            raise DataError(
                f"corpus {spec.label!r} ({corpus.origin}) has {stream.numel()} tokens, "
                f"fewer than nsamples x seqlen "
                f"= {count} x {seqlen} = {count * seqlen}; lower nsamples or seqlen, or use a larger corpus"
            )
        if count:
            windows.append(_draw(stream, count, seqlen, rng))
            sources.append(torch.full((count,), index, dtype=torch.long))
    return WindowSet(
        torch.cat(windows), torch.cat(sources), [s.label for s in specs], weights, seqlen, origins, available
    )


def evaluation_windows(
    corpus: str | CorpusSpec | dict,
    tokenizer: PreTrainedTokenizerBase,
    seqlen: int = 2048,
    split: str = "test",
    data_root: str | Path | None = None,
    max_windows: int | None = None,
) -> WindowSet:
    """Consecutive, non-overlapping windows over the whole split (the tail shorter than seqlen is dropped)."""
    _check_sizes(seqlen)
    if max_windows is not None and max_windows < 1:
        raise ConfigError(f"max_windows must be at least 1 (or None for the whole split), got {max_windows}")
    spec = as_spec(corpus)
    loaded = load_corpus(spec, split, data_root)
    texts = loaded.texts
    if max_windows is not None and not loaded.ordered:  # stop reading documents once there is enough text
        texts = texts_for(texts, max_windows * seqlen, loaded.join)
    stream = tokenize(loaded.running_text(texts), tokenizer)
    count = stream.numel() // seqlen
    if max_windows is not None:
        count = min(count, max_windows)
    if count == 0:
        raise DataError(
            f"corpus {spec.label!r} ({loaded.origin}) has {stream.numel()} tokens, fewer than one window of "
            f"seqlen {seqlen}; lower seqlen or use a larger split"
        )
    ids = stream[: count * seqlen].view(count, seqlen)
    return WindowSet(
        ids,
        torch.zeros(count, dtype=torch.long),
        [spec.label],
        [1.0],
        seqlen,
        [loaded.origin],
        [stream.numel()],
    )
