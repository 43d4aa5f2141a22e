"""Peak memory of the device a stage ran on: CUDA's allocator peak on GPU, the process's peak RSS on CPU."""

from __future__ import annotations

import resource

import torch


def _cuda_index(device: torch.device) -> int:
    """A trainer that has not run yet reports ``cuda`` without an index, which the memory calls refuse."""
    return torch.cuda.current_device() if device.index is None else device.index


def reset_peak_memory(device: torch.device) -> None:
    # Before CUDA's first use (a stage that starts a fresh trainer) there is no peak to reset, and the
    # allocator refuses the call.
    if device.type == "cuda" and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats(_cuda_index(device))


def peak_memory(device: torch.device) -> dict[str, float]:
    """``peak_gpu_memory_mb`` since the last reset on GPU; ``peak_rss_mb`` of the whole process on CPU."""
    if device.type == "cuda":
        return {"peak_gpu_memory_mb": torch.cuda.max_memory_allocated(_cuda_index(device)) / 2**20}
    return {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
