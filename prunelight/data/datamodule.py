"""LightningDataModules over token windows."""

from __future__ import annotations

from typing import Any

import lightning as L
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from prunelight.data.batches import LabelledBlocks, evaluation_loader
from prunelight.data.corpora import CorpusSpec, as_spec
from prunelight.data.windows import WindowSet, evaluation_windows
from prunelight.errors import ConfigError
from prunelight.models.loader import load_tokenizer
from prunelight.models.spec import ModelSpec


def datamodule_tokenizer(datamodule: L.LightningDataModule, path: str | None) -> PreTrainedTokenizerBase:
    """The tokenizer at ``path``, else one handed over with :func:`prepare_with`, else the one of the model
    the datamodule's trainer runs."""
    if path:
        return load_tokenizer(ModelSpec(path))
    given = getattr(datamodule, "_given_tokenizer", None)
    if given is not None:
        return given
    trainer = datamodule.trainer
    module = trainer.lightning_module if trainer is not None else None
    if module is None or getattr(module, "tokenizer", None) is None:
        raise ConfigError(
            "no tokenizer: set data.tokenizer, or attach the datamodule to a prunelight trainer"
        )
    return module.tokenizer


def prepare_with(datamodule: L.LightningDataModule, tokenizer: PreTrainedTokenizerBase) -> None:
    """Set ``datamodule`` up now with ``tokenizer``, before a trainer runs it: a stage that runs it late (the
    pipeline fine-tunes after pruning) finds a missing corpus before the expensive part, not after."""
    datamodule._given_tokenizer = tokenizer
    datamodule.setup("fit")


class PerplexityDataModule(L.LightningDataModule):
    """Non-overlapping evaluation windows over whole splits, one dataloader per corpus.

    Batches are ``{"input_ids", "labels"}``. Under several processes each window is scored on exactly one
    rank and every rank runs as many batches, padding ones with every label ignored
    (:func:`~prunelight.data.batches.evaluation_loader`): N ranks measure what one process measures.

    Args:
        corpora: corpora to evaluate on (``wikitext2``, ``ptb``, ``c4``, ``c4_zh``, a local file, or a
            mapping with CorpusSpec fields).
        split: ``test`` (the literature's default), ``validation`` or ``train``.
        seqlen: tokens per window; 2048 makes numbers comparable with the literature. Every reported number
            says which seqlen it used.
        batch_size: windows per forward pass.
        max_windows: evaluate only the first N windows of each corpus (None: the whole split).
        data_root: where named corpora live without the hub (default ``$PRUNELIGHT_DATA``).
        tokenizer: a tokenizer to load (path, hub id or zoo name); None uses the model's.
        num_workers: dataloader workers.
    """

    def __init__(
        self,
        corpora: list[str | CorpusSpec] | None = None,
        split: str = "test",
        seqlen: int = 2048,
        batch_size: int = 1,
        max_windows: int | None = None,
        data_root: str | None = None,
        tokenizer: str | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.specs = [as_spec(c) for c in (corpora or ["wikitext2"])]
        labels = [s.label for s in self.specs]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"corpora {labels} name the same corpus twice")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        self.split, self.seqlen, self.batch_size = split, seqlen, batch_size
        self.max_windows, self.data_root, self.num_workers = max_windows, data_root, num_workers
        self.tokenizer_path = tokenizer
        self.windows: dict[str, WindowSet] = {}

    @property
    def labels(self) -> list[str]:
        return [s.label for s in self.specs]

    def setup(self, stage: str | None = None) -> None:
        if self.windows:
            return
        tokenizer = datamodule_tokenizer(self, self.tokenizer_path)
        for spec in self.specs:
            self.windows[spec.label] = evaluation_windows(
                spec, tokenizer, self.seqlen, self.split, self.data_root, self.max_windows
            )

    def describe(self, label: str) -> dict[str, Any]:
        """What a number for ``label`` was measured on, to be reported next to it."""
        windows = self.windows[label]
        return {
            "seqlen": self.seqlen,
            "split": self.split,
            "origin": windows.origins[0],
            "tokens_in_split": windows.tokens_available[0],
            "max_windows": self.max_windows,
        }

    def _loaders(self) -> list[DataLoader]:
        return [
            evaluation_loader(
                LabelledBlocks(self.windows[label].input_ids),
                self.batch_size,
                self.trainer,
                num_workers=self.num_workers,
            )
            for label in self.labels
        ]

    def val_dataloader(self) -> list[DataLoader]:
        return self._loaders()

    def test_dataloader(self) -> list[DataLoader]:
        return self._loaders()
