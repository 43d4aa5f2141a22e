"""2:4 layers in PyTorch's semi-structured sparse format, for inference on NVIDIA sparse tensor cores.

The saved checkpoint stays an ordinary dense one with zeros (any tool loads it); the conversion is done in
memory after loading or pruning. ``to_sparse_semi_structured`` needs a CUDA GPU of compute capability 8.0 or
newer, fp16/bf16 weights, and shapes it can tile; a layer it cannot take is left dense and reported.
Measured on an H100 (docs/results.md): 37% less weight memory, but 0.80x the forward speed of dense at 16k
tokens; the saving is memory, not time, on that stack.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from prunelight.errors import ConfigError
from prunelight.models.adapters import FamilyAdapter
from prunelight.models.projections import PROJECTIONS


def is_two_four(weight: torch.Tensor) -> bool:
    """At most 2 non-zeros in every 4 consecutive inputs of every row."""
    if weight.shape[1] % 4:
        return False
    return bool(((weight != 0).reshape(weight.shape[0], -1, 4).sum(dim=2) <= 2).all())


def to_semi_structured(model: nn.Module, adapter: FamilyAdapter) -> dict[str, Any]:
    """Convert every 2:4 projection in place; return which were converted and which were left dense (why)."""
    from torch.sparse import to_sparse_semi_structured

    converted, skipped = [], {}
    for index, layer in enumerate(adapter.decoder_layers(model)):
        modules = adapter.modules(layer)
        for name in PROJECTIONS:
            linear: nn.Linear = getattr(modules, name)
            label = f"layer {index} {name}"
            weight = linear.weight.detach()
            if weight.device.type != "cuda" or weight.dtype not in (torch.float16, torch.bfloat16):
                raise ConfigError(
                    f"semi-structured sparsity needs fp16/bf16 weights on a CUDA GPU; {label} is "
                    f"{weight.dtype} on {weight.device} (load the model with dtype bfloat16 on a GPU)"
                )
            if not is_two_four(weight):
                skipped[label] = "not 2:4"
                continue
            try:
                linear.weight = nn.Parameter(to_sparse_semi_structured(weight), requires_grad=False)
            except (RuntimeError, ValueError) as err:  # shapes the kernels cannot tile
                skipped[label] = str(err).splitlines()[0]
                continue
            # cuSPARSELt returns the product as a transposed, non-contiguous view; attention then falls back
            # from its fused kernels to the fp32 math path, which made a 7B-shape model 2.9x slower than
            # dense on an H100 (benchmarks/sparse_pruning_time.py). One copy per projection avoids that.
            linear.register_forward_hook(_contiguous)
            converted.append(label)
    return {"converted": len(converted), "skipped": skipped}


def _contiguous(_module: nn.Module, _args: tuple, output: torch.Tensor) -> torch.Tensor:
    return output.contiguous()
