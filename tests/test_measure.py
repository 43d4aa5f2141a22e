"""A stage's CPU peak memory is its own: resetting it forgets what the process held before."""

from __future__ import annotations

import torch

from prunelight.measure import peak_memory, reset_peak_memory


def test_a_reset_forgets_the_cpu_peak_of_earlier_work():
    cpu = torch.device("cpu")
    reset_peak_memory(cpu)
    before = peak_memory(cpu)["peak_rss_mb"]
    held = torch.ones(96 * 2**20)  # 384 MiB, touched
    del held
    high = peak_memory(cpu)["peak_rss_mb"]
    assert high > before + 300
    reset_peak_memory(cpu)
    assert peak_memory(cpu)["peak_rss_mb"] < high - 300
