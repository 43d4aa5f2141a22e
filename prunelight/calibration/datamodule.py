"""Calibration windows as a LightningDataModule, sharded across ranks by whole batches
(:class:`~prunelight.data.batches.BatchShardSampler`)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from prunelight.data.batches import PADDING, BatchShardSampler
from prunelight.data.corpora import CorpusSpec, as_spec
from prunelight.data.datamodule import datamodule_tokenizer
from prunelight.data.windows import WindowSet, calibration_windows
from prunelight.errors import ConfigError
from prunelight.models.sharding import is_fully_sharded


def window_weights(windows: WindowSet) -> torch.Tensor:
    """Per-window loss weight c_i = N * (w_s / sum w) / n_s for a window of source s.

    Summed over all windows, c_i * grad L_i / N is the weighted mean of the per-source mean gradients (the
    mixed-gradient scheme); for one source every c_i is 1, so the plain mean loss is unchanged.
    """
    counts = torch.tensor(windows.counts(), dtype=torch.float64)
    weights = torch.tensor(windows.weights, dtype=torch.float64)
    per_source = len(windows) * (weights / weights.sum()) / counts.clamp_min(1)
    return per_source[windows.source]


class _Batches(Dataset):
    """The calibration set cut into fixed batches: batch k is the same whatever the number of ranks."""

    def __init__(self, windows: WindowSet, batch_size: int) -> None:
        self.ids, self.weights = windows.input_ids, window_weights(windows)
        self.batch_size = batch_size

    def __len__(self) -> int:
        return -(-len(self.ids) // self.batch_size)

    def __getitem__(self, k: int) -> dict[str, Any]:
        if k == PADDING:  # batch 0 again, marked: it runs for the collectives and counts for nothing
            return {**self[0], "padding": True}
        part = slice(k * self.batch_size, (k + 1) * self.batch_size)
        return {"input_ids": self.ids[part], "weights": self.weights[part], "padding": False}


class CalibrationDataModule(L.LightningDataModule):
    """``nsamples`` x ``seqlen`` seeded calibration windows from one corpus or a weighted mixture.

    Args:
        corpora: corpora to calibrate on (a name such as ``wikitext2``, ``squad:prompt``, a local file, or a
            mapping with CorpusSpec fields; ``weight`` sets a source's share of a mixture).
        nsamples: number of windows.
        seqlen: tokens per window.
        batch_size: windows per forward(+backward) pass. Taylor scores are summed per batch, so the batch
            size is part of the criterion (``aggregation: sample`` makes it irrelevant).
        seed: the windows depend only on the seed, never on the number of ranks.
        split: ``train`` (the literature's choice); ``validation`` where only that split is available.
        data_root: where named corpora live without the hub (default ``$PRUNELIGHT_DATA``).
        tokenizer: a tokenizer to load; None uses the model's.
        num_workers: dataloader workers.
    """

    def __init__(
        self,
        corpora: list[str | CorpusSpec] | None = None,
        nsamples: int = 128,
        seqlen: int = 128,
        batch_size: int = 1,
        seed: int = 0,
        split: str = "train",
        data_root: str | None = None,
        tokenizer: str | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.specs = [as_spec(c) for c in (corpora or ["wikitext2"])]
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        self.nsamples, self.seqlen, self.batch_size, self.seed = nsamples, seqlen, batch_size, seed
        self.split, self.data_root, self.num_workers = split, data_root, num_workers
        self.tokenizer_path = tokenizer
        self.windows: WindowSet | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.windows is None:
            tokenizer = datamodule_tokenizer(self, self.tokenizer_path)
            self.windows = calibration_windows(
                self.specs, tokenizer, self.nsamples, self.seqlen, self.seed, self.split, self.data_root
            )

    def describe(self) -> dict[str, Any]:
        """What the calibration used, for the run's report."""
        assert self.windows is not None
        return {
            "corpora": self.windows.sources,
            "weights": self.windows.weights,
            "windows_per_source": self.windows.counts(),
            "origins": self.windows.origins,
            "nsamples": self.nsamples,
            "seqlen": self.seqlen,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "split": self.split,
        }

    def _loader(self) -> DataLoader:
        assert self.windows is not None, "setup() first"
        batches = _Batches(self.windows, self.batch_size)
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        even = trainer is not None and is_fully_sharded(trainer.strategy)
        return DataLoader(
            batches,
            batch_size=None,
            sampler=BatchShardSampler(batches, world, rank, even),
            num_workers=self.num_workers,
        )

    def test_dataloader(self) -> DataLoader:
        return self._loader()

    def predict_dataloader(self) -> DataLoader:
        return self._loader()
