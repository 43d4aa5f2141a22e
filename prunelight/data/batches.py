"""Fixed batches sharded across ranks: each batch on exactly one rank, and every rank as many steps.

Lightning's own ``DistributedSampler`` evens the ranks out by repeating samples, so a metric summed over
ranks counts some windows twice. Here batch k is cut as one process cuts it and runs on rank k mod N only;
a rank short of batches runs padding batches instead, which keep the ranks in step (under FSDP2 every
forward is a collective, and a DDP-wrapped forward in ``fit`` broadcasts buffers) and count for nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, default_collate

IGNORE_INDEX = -100
"""Label value that the Hugging Face causal-LM loss and :class:`~prunelight.evaluate.Perplexity` skip."""

PADDING = -1
"""The index :class:`BatchShardSampler` hands out for a padding batch."""


class BatchShardSampler(DistributedSampler):
    """Rank r takes batches r, r + N, r + 2N, ...: no repeats, so sums over ranks are exact.

    It is a DistributedSampler so that Lightning leaves it in place instead of injecting its own (which
    pads with repeated samples to even out the ranks). With ``even`` every rank runs as many steps: a
    rank short of batches gets :data:`PADDING` entries, which the dataset turns into batches that count
    for nothing.
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, even: bool = False) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.even = even

    def __iter__(self) -> Iterator[int]:
        mine = list(range(self.rank, len(self.dataset), self.num_replicas))
        return iter(mine + [PADDING] * (len(self) - len(mine)))

    def __len__(self) -> int:
        if self.even:
            return -(-len(self.dataset) // self.num_replicas)
        return len(range(self.rank, len(self.dataset), self.num_replicas))


class LabelledBlocks(Dataset):
    """Rows of token ids as ``{"input_ids", "labels"}`` items; a causal LM shifts the labels itself."""

    def __init__(self, ids: torch.Tensor) -> None:
        self.ids = ids

    def __len__(self) -> int:
        return self.ids.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        row = self.ids[index]
        # The default collate stacks each key into its own tensor, so labels never alias input_ids.
        return {"input_ids": row, "labels": row}


class FixedBatches(Dataset):
    """``items`` cut into batches of ``batch_size``, collated: batch k holds the same items (and so gives
    the same logits) as batch k of a plain sequential DataLoader, whatever the number of ranks.

    :data:`PADDING` gives the first item alone with every label :data:`IGNORE_INDEX`: it runs the model like
    any batch and adds no token, no window and no loss to a metric that skips ignored labels.
    """

    def __init__(self, items: Dataset, batch_size: int, collate: Callable[[list], Any] | None = None) -> None:
        self.items, self.batch_size = items, batch_size
        self.collate = collate or default_collate

    def __len__(self) -> int:
        return -(-len(self.items) // self.batch_size)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        if k == PADDING:
            batch = self.collate([self.items[0]])
            return {**batch, "labels": torch.full_like(batch["labels"], IGNORE_INDEX)}
        end = min((k + 1) * self.batch_size, len(self.items))
        return self.collate([self.items[i] for i in range(k * self.batch_size, end)])


def evaluation_loader(
    items: Dataset,
    batch_size: int,
    trainer: L.Trainer | None,
    collate: Callable[[list], Any] | None = None,
    num_workers: int = 0,
) -> DataLoader:
    """Unshuffled batches of ``items`` (dicts with ``labels``), each scored on exactly one rank of
    ``trainer``, with every rank running as many batches (padding masked out through its labels)."""
    batches = FixedBatches(items, batch_size, collate)
    world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
    return DataLoader(
        batches,
        batch_size=None,
        sampler=BatchShardSampler(batches, world, rank, even=True),
        num_workers=num_workers,
    )
