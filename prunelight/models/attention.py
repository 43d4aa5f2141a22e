"""Float32 attention on CUDA with grouped key/value heads: expanded where that buys the efficient kernel.

With no attention mask, transformers' ``sdpa`` hands grouped key/value heads to
``scaled_dot_product_attention`` with ``enable_gqa=True`` and lets the kernel broadcast them. Flash and
cuDNN attention take no float32, so a float32 run (the Taylor calibration) depends on the memory-efficient
kernel; where that kernel refuses grouped heads, torch runs the math kernel, which keeps a
``batch x heads x seq x seq`` matrix per layer for the backward: 1.2 GB a layer for SmolLM2-135M at
8 x 2048 tokens, about half the calibration's peak.

:func:`efficient_float32_attention` repeats the key/value heads first in exactly that case, decided once
per head layout by asking torch whether the efficient kernel takes the grouped inputs and the expanded
ones. The attention computed is the same; only the kernel differs. Nothing changes on a CPU, in half
precision, with a mask (transformers repeats the heads itself then), or where the kernel takes the groups.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

_verdicts: dict[tuple[int | None, int, int, int], bool] = {}


def efficient_kernel_refuses_groups(query: Tensor, key: Tensor) -> bool:
    """True where torch's memory-efficient kernel takes these float32 inputs with their heads expanded but
    not grouped. Asked once per device and head layout; False wherever torch cannot answer."""
    layout = (query.device.index, query.shape[1], key.shape[1], query.shape[-1])
    if layout not in _verdicts:
        try:
            params = torch.backends.cuda.SDPAParams
            can_use = torch.backends.cuda.can_use_efficient_attention
            grouped = can_use(params(query, key, key, None, 0.0, True, True), False)
            expanded = can_use(params(query, query, query, None, 0.0, True, False), False)
            _verdicts[layout] = bool(expanded and not grouped)
        except (AttributeError, TypeError, RuntimeError):  # an older torch without these checks
            _verdicts[layout] = False
    return _verdicts[layout]


def expands_heads(query: Tensor, key: Tensor, attention_mask: Tensor | None) -> bool:
    """Whether this attention call should get its key/value heads repeated (the module docstring)."""
    return (
        query.is_cuda
        and query.dtype == torch.float32
        and attention_mask is None
        and query.shape[2] > 1
        and key.shape[1] != query.shape[1]
        and efficient_kernel_refuses_groups(query, key)
    )


def _expanding(sdpa: Callable[..., Any], decide: Callable[[Tensor, Tensor, Tensor | None], bool]) -> Callable:
    def attention(module, query, key, value, attention_mask, **kwargs):
        if decide(query, key, attention_mask):
            groups = query.shape[1] // key.shape[1]
            key, value = repeat_kv(key, groups), repeat_kv(value, groups)
        return sdpa(module, query, key, value, attention_mask, **kwargs)

    return attention


@contextmanager
def efficient_float32_attention(
    decide: Callable[[Tensor, Tensor, Tensor | None], bool] = expands_heads,
) -> Iterator[None]:
    """While the context lasts, every model's ``sdpa`` attention repeats grouped key/value heads where
    ``decide`` says so (by default :func:`expands_heads`); transformers' own function is restored after."""
    sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]
    AttentionInterface.register("sdpa", _expanding(sdpa, decide))
    try:
        yield
    finally:
        AttentionInterface.register("sdpa", sdpa)
