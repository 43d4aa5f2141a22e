"""The per-pass sums that calibration adds up: one process and N ranks must give the same bits."""

from __future__ import annotations

import torch

from prunelight.importance.statistics import summable


def _ordered(values: torch.Tensor) -> float:
    total = torch.zeros((), dtype=torch.float64)
    for v in values:
        total += v
    return float(total)


def _two_ranks(values: torch.Tensor) -> float:
    """Rank k adds passes k, k + 2, ...; the all-reduce adds the two totals."""
    totals = [_ordered(values[rank::2]) for rank in range(2)]
    return _ordered(torch.tensor(totals, dtype=torch.float64))


def test_pass_sums_add_to_the_same_bits_in_any_order():
    """A GPU's float64 pass sums carry all 53 bits: summed in DDP's order they differ in the last bit from
    one process's order; rounded to float32 first (``summable``), every order gives the same total."""
    g = torch.Generator().manual_seed(0)
    passes = torch.rand(64, generator=g, dtype=torch.float64) * 30 + 10  # like 64 batches' influence sums
    assert _ordered(passes) != _two_ranks(passes)  # the failure this guards against
    rounded = summable(passes)
    assert rounded.dtype == torch.float64
    assert _ordered(rounded) == _two_ranks(rounded) == _ordered(rounded.flip(0))
    assert torch.allclose(rounded, passes, rtol=1e-7, atol=0)
