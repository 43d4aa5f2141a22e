"""Peak memory of the device a stage ran on: CUDA's allocator peak on GPU, the process's peak resident
memory on CPU.

On Linux the CPU peak is reset too (``/proc/self/clear_refs``), so a stage's ``peak_rss_mb`` is its own and
not the largest of everything the process ran before it; where that file is missing (macOS, some
sandboxes) the CPU figure is the whole process's peak, as ``getrusage`` gives it.
"""

from __future__ import annotations

import resource
from contextlib import suppress
from pathlib import Path

import torch

_STATUS, _CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def _cuda_index(device: torch.device) -> int:
    """A trainer that has not run yet reports ``cuda`` without an index, which the memory calls refuse."""
    return torch.cuda.current_device() if device.index is None else device.index


def reset_peak_memory(device: torch.device) -> None:
    # Before CUDA's first use (a stage that starts a fresh trainer) there is no peak to reset, and the
    # allocator refuses the call.
    if device.type == "cuda" and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats(_cuda_index(device))
    elif device.type == "cpu":
        with suppress(OSError):
            _CLEAR_REFS.write_text("5")  # "5": reset the peak resident set size to the current one


def _rss_peak_mb() -> float:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_memory(device: torch.device) -> dict[str, float]:
    """``peak_gpu_memory_mb`` since the last reset on GPU; ``peak_rss_mb`` on CPU (module docstring)."""
    if device.type == "cuda":
        return {"peak_gpu_memory_mb": torch.cuda.max_memory_allocated(_cuda_index(device)) / 2**20}
    return {"peak_rss_mb": _rss_peak_mb()}
