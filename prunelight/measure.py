"""Peak memory of the device a stage ran on: CUDA's allocator peak on GPU, the process's peak RSS on CPU."""

from __future__ import annotations

import resource

import torch


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict[str, float]:
    """``peak_gpu_memory_mb`` since the last reset on GPU; ``peak_rss_mb`` of the whole process on CPU."""
    if device.type == "cuda":
        return {"peak_gpu_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20}
    return {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
