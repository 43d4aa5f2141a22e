"""The fitness of an allocation search: KL(dense || candidate) of the next-token distributions.

A candidate is scored without building it. Removing a group equals zeroing its input columns of o_proj /
down_proj (tests/apply prove it for every family), so a forward pre-hook that multiplies those inputs by a
0/1 mask turns the dense model into the candidate for one forward pass, and the same pass without hooks
is the reference. Nothing is copied, so any number of candidates costs two forwards each and no memory.

The search evaluates in stages on more windows each (:mod:`prunelight.ranking.search`); stage ``s`` of
generation ``g`` reads ``stage_windows[s]`` windows drawn from the pool with a generator seeded by
``(seed, g, s)``, so a parent and its offspring compared in one stage see the same tokens, and a rerun the
same numbers.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from prunelight.models import adapter_for
from prunelight.ranking import PruningPlan
from prunelight.ranking.search import Genome


@contextmanager
def masked(model: nn.Module, plan: PruningPlan) -> Iterator[nn.Module]:
    """``model`` computing as if ``plan`` were applied, while the context lasts (weights untouched)."""
    adapter = adapter_for(model)
    layout = adapter.layout(model.config)
    width = layout.num_key_value_groups * layout.head_dim
    handles = []

    def zero(columns: Tensor) -> Callable:
        def hook(module: nn.Module, args: tuple) -> tuple:
            return (args[0] * columns.to(device=args[0].device, dtype=args[0].dtype), *args[1:])

        return hook

    try:
        for layer_plan in plan.layers:
            m = adapter.modules(adapter.decoder_layers(model)[layer_plan.layer])
            if layer_plan.attention_groups:
                keep = torch.ones(m.o.in_features)
                for g in layer_plan.attention_groups:
                    keep[g * width : (g + 1) * width] = 0
                handles.append(m.o.register_forward_pre_hook(zero(keep)))
            if layer_plan.mlp_channels:
                keep = torch.ones(m.down.in_features)
                keep[layer_plan.mlp_channels] = 0
                handles.append(m.down.register_forward_pre_hook(zero(keep)))
        yield model
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def kl_to_dense(model: nn.Module, windows: Tensor, plan: PruningPlan, batch_size: int = 8) -> float:
    """Mean over every position of KL(dense || planned) of the next-token distribution, in float32."""
    total, positions = 0.0, 0
    for i in range(0, len(windows), batch_size):
        ids = windows[i : i + batch_size]
        dense = torch.log_softmax(model(input_ids=ids, use_cache=False).logits.float(), dim=-1)
        with masked(model, plan):
            pruned = torch.log_softmax(model(input_ids=ids, use_cache=False).logits.float(), dim=-1)
        total += float((dense.exp() * (dense - pruned)).sum())
        positions += ids.numel()
    return total / positions


class KLFitness:
    """``fitness(genome, stage, generation)`` for :func:`prunelight.ranking.search.search`."""

    def __init__(
        self,
        model: nn.Module,
        windows: Tensor,
        stage_windows: Sequence[int],
        plan_of: Callable[[Genome], PruningPlan],
        batch_size: int = 8,
        seed: int = 0,
    ) -> None:
        if any(n < 1 or n > len(windows) for n in stage_windows):
            raise ValueError(
                f"stage_windows must be between 1 and the {len(windows)} windows, got {stage_windows}"
            )
        self.model, self.windows, self.stage_windows = model, windows, list(stage_windows)
        self.plan_of, self.batch_size, self.seed = plan_of, batch_size, seed

    def windows_of(self, stage: int, generation: int) -> Tensor:
        """The stage's windows: a seeded draw without replacement from the pool."""
        chosen = random.Random(hash((self.seed, generation, stage))).sample(
            range(len(self.windows)), self.stage_windows[stage]
        )
        return self.windows[sorted(chosen)]

    def __call__(self, genome: Genome, stage: int, generation: int) -> float:
        return kl_to_dense(
            self.model, self.windows_of(stage, generation), self.plan_of(genome), self.batch_size
        )
