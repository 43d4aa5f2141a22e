"""Float32 attention on CUDA with grouped key/value heads: expanded where that buys the efficient kernel.

With no attention mask, transformers' ``sdpa`` hands grouped key/value heads to
``scaled_dot_product_attention`` with ``enable_gqa=True`` and lets the kernel broadcast them. Flash and
cuDNN attention take no float32, so a float32 run (the Taylor calibration) depends on the memory-efficient
kernel; where that kernel refuses grouped heads, torch runs the math kernel, which keeps a
``batch x heads x seq x seq`` matrix per layer for the backward: 1.2 GB a layer for SmolLM2-135M at
8 x 2048 tokens, about half the calibration's peak.

:func:`efficient_float32_attention` repeats the key/value heads first in exactly that case, decided once
per head layout by asking torch whether the efficient kernel takes the grouped inputs and the expanded
ones, and then hands transformers' ``sdpa`` a view of the attention module with one group, so that it
neither repeats the heads again nor asks for ``enable_gqa``. The attention computed is the same; only the
kernel differs. Nothing changes on a CPU, in half precision, with a mask (transformers repeats the heads
itself then), or where the kernel takes the groups.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv

Decide = Callable[[Tensor, Tensor, Tensor | None], bool]
_verdicts: dict[tuple[int | None, int, int, int], bool] = {}


def efficient_kernel_answers(query: Tensor, key: Tensor, debug: bool = False) -> tuple[bool, bool]:
    """Whether torch's memory-efficient CUDA kernel takes causal ``query``/``key`` inputs with grouped
    key/value heads (``enable_gqa``), and with the heads expanded to the query's; ``debug`` has torch warn
    why not. Raises AttributeError/TypeError on a torch without these checks."""
    params = torch.backends.cuda.SDPAParams
    can_use = torch.backends.cuda.can_use_efficient_attention
    grouped = can_use(params(query, key, key, None, 0.0, True, True), debug)
    expanded = can_use(params(query, query, query, None, 0.0, True, False), debug)
    return bool(grouped), bool(expanded)


def efficient_kernel_refuses_groups(query: Tensor, key: Tensor) -> bool:
    """True where torch's memory-efficient CUDA kernel takes these inputs with their heads expanded but not
    grouped. Asked once per device and head layout; False off CUDA and wherever torch cannot answer."""
    if not query.is_cuda:
        return False
    layout = (query.device.index, query.shape[1], key.shape[1], query.shape[-1])
    if layout not in _verdicts:
        try:
            grouped, expanded = efficient_kernel_answers(query, key)
            _verdicts[layout] = expanded and not grouped
        except (AttributeError, TypeError, RuntimeError):  # an older torch without these checks
            _verdicts[layout] = False
    return _verdicts[layout]


def expands_heads(
    query: Tensor,
    key: Tensor,
    attention_mask: Tensor | None,
    refuses_groups: Callable[[Tensor, Tensor], bool] = efficient_kernel_refuses_groups,
) -> bool:
    """Whether this attention call gets its key/value heads repeated: float32, no mask, more than one query
    position, grouped heads, and a kernel that ``refuses_groups`` (by default, torch's answer on CUDA)."""
    return (
        query.dtype == torch.float32
        and attention_mask is None
        and query.shape[2] > 1
        and key.shape[1] != query.shape[1]
        and refuses_groups(query, key)
    )


class _OneGroup:
    """The attention module as transformers' ``sdpa`` reads it, with its key/value heads already repeated."""

    num_key_value_groups = 1

    def __init__(self, module: nn.Module) -> None:
        self._module = module

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


def _expanding(sdpa: Callable[..., Any], decide: Decide) -> Callable[..., Any]:
    def attention(module, query, key, value, attention_mask, **kwargs):
        if decide(query, key, attention_mask):
            groups = query.shape[1] // key.shape[1]
            key, value, module = repeat_kv(key, groups), repeat_kv(value, groups), _OneGroup(module)
        return sdpa(module, query, key, value, attention_mask, **kwargs)

    attention.expands_with = decide  # type: ignore[attr-defined]
    return attention


@contextmanager
def efficient_float32_attention(decide: Decide = expands_heads) -> Iterator[None]:
    """While the context lasts, every model's ``sdpa`` attention repeats grouped key/value heads where
    ``decide`` says so (by default :func:`expands_heads`); transformers' own function is restored after.
    Inside a context with the same ``decide`` (a calibration in a ``prunelight`` run) it changes nothing;
    other contexts nest: an inner one sees the heads already repeated and passes them on."""
    sdpa = AttentionInterface._global_mapping["sdpa"]  # what register() replaces, and what is put back
    if getattr(sdpa, "expands_with", None) is decide:
        yield
        return
    AttentionInterface.register("sdpa", _expanding(sdpa, decide))
    try:
        yield
    finally:
        AttentionInterface.register("sdpa", sdpa)
