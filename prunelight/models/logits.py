"""Logits in slices of positions: what the losses over a whole vocabulary hold at once.

A loss over ``batch x seqlen x vocab`` logits (10 GB in float32 for Qwen2.5's 152k vocabulary at 8 x 2048
tokens, 17 GB for Gemma-3's 262k) makes float32 copies, log-softmaxes and products of the same size. Taken a
slice of positions at a time, each of those is of one slice: the calibration's loss, perplexity and the
allocation search's KL all do so.
"""

from __future__ import annotations

from collections.abc import Iterator

SLICE_ELEMENTS = 2**26
"""Logits in one slice (256 MiB in float32)."""


def position_slices(batch: int, positions: int, vocab: int, elements: int | None = None) -> Iterator[slice]:
    """Consecutive slices of ``range(positions)`` of at most ``elements`` (default :data:`SLICE_ELEMENTS`)
    logits of a ``batch x positions x vocab`` tensor each, at least one position."""
    step = max(1, (SLICE_ELEMENTS if elements is None else elements) // (batch * vocab))
    for start in range(0, positions, step):
        yield slice(start, min(start + step, positions))
