"""Language-modelling blocks for recovery fine-tuning (see :class:`LanguageModelingDataModule`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from prunelight.data.batches import LabelledBlocks, evaluation_loader
from prunelight.data.corpora import Corpus, CorpusSpec, as_spec, canonical_split, load_corpus
from prunelight.data.datamodule import datamodule_tokenizer
from prunelight.data.windows import texts_for, tokenize
from prunelight.errors import ConfigError, DataError
from prunelight.finetune.data_common import check_common, held_out_count, seeded_generator


@dataclass(frozen=True)
class _SplitBlocks:
    ids: torch.Tensor
    origin: str
    tokens: int
    """Tokens of the running text that was read (all of it, or enough for ``limit`` blocks)."""


def _corpus_blocks(
    corpus: Corpus, tokenizer: PreTrainedTokenizerBase, block_size: int, limit: int | None
) -> _SplitBlocks:
    """The blocks :func:`~prunelight.data.windows.evaluation_windows` would give, from a loaded corpus.

    Same text treatment (running text, special tokens once at the start, tail dropped, unordered corpora
    read only as far as ``limit`` blocks need), but without re-reading the corpus, whose origin was already
    needed to decide on the hold-out.
    """
    texts = corpus.texts
    if limit is not None and not corpus.ordered:
        texts = texts_for(texts, limit * block_size, corpus.join)
    stream = tokenize(corpus.running_text(texts), tokenizer)
    count = stream.numel() // block_size
    if limit is not None:
        count = min(count, limit)
    return _SplitBlocks(stream[: count * block_size].view(count, block_size), corpus.origin, stream.numel())


class LanguageModelingDataModule(L.LightningDataModule):
    """Consecutive, non-overlapping ``block_size``-token blocks of a corpus split, for causal-LM recovery.

    The blocks are cut exactly as perplexity evaluation cuts its windows, so a recovery run and its
    evaluation see the same text treatment. Labels equal ``input_ids`` (the model shifts them). Under
    several processes each validation block is scored on exactly one rank, and every rank runs as many
    validation batches (padding ones with every label ignored), so ``val/loss`` is that of one process.

    Args:
        corpus: a registered corpus (``wikitext2``, ``ptb``, ``c4``, ...), a local file, ``hf:<id>``, or a
            mapping with CorpusSpec fields.
        train_split: split to train on.
        val_split: split to validate on. When it resolves to the same data as ``train_split`` (same split,
            a ``spec.split`` override, or a local file, which has no splits), the last
            ``ceil(val_fraction * n)`` blocks are held out for validation and never trained on.
        block_size: tokens per block.
        max_train_samples: train on the first N training blocks only (after the hold-out).
        max_val_samples: validate on the first N validation blocks only (after the hold-out).
        val_fraction: share of the blocks held out when train and validation share their data.
        batch_size: blocks per batch.
        shuffle: shuffle the training blocks (validation is never shuffled, nor repeated across ranks).
        data_root: where named corpora live without the hub (default ``$PRUNELIGHT_DATA``).
        tokenizer: a tokenizer to load (path, hub id or zoo name); None uses the trainer's model's.
        num_workers: dataloader workers.
        seed: seeds the training order, independently of the global seed.
    """

    def __init__(
        self,
        corpus: str | CorpusSpec | dict = "wikitext2",
        train_split: str = "train",
        val_split: str = "validation",
        block_size: int = 1024,
        max_train_samples: int | None = None,
        max_val_samples: int | None = None,
        val_fraction: float = 0.1,
        batch_size: int = 1,
        shuffle: bool = True,
        data_root: str | None = None,
        tokenizer: str | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if block_size < 2:
            raise ConfigError(f"block_size must be at least 2 tokens, got {block_size}")
        check_common(batch_size, val_fraction, max_train_samples, max_val_samples)
        self.spec = as_spec(corpus)
        self.train_split, self.val_split = canonical_split(train_split), canonical_split(val_split)
        self.block_size, self.batch_size, self.shuffle, self.seed = block_size, batch_size, shuffle, seed
        self.max_train_samples, self.max_val_samples = max_train_samples, max_val_samples
        self.val_fraction, self.data_root, self.num_workers = val_fraction, data_root, num_workers
        self.tokenizer_path = tokenizer
        self.train_ids: torch.Tensor | None = None
        self.val_ids: torch.Tensor | None = None
        self.held_out = False
        self._read: dict[str, _SplitBlocks] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.train_ids is not None:
            return
        tokenizer = datamodule_tokenizer(self, self.tokenizer_path)
        train = load_corpus(self.spec, self.train_split, self.data_root)
        val = train
        if self.val_split != self.train_split:
            val = load_corpus(self.spec, self.val_split, self.data_root)
        self.held_out = train.origin == val.origin
        if self.held_out:
            blocks = _corpus_blocks(train, tokenizer, self.block_size, None)
            self._require_block(blocks, "training", self.train_split)
            total = blocks.ids.shape[0]
            n_val = held_out_count(self.val_fraction, total)
            if total - n_val < 1:
                raise DataError(
                    f"corpus {self.spec.label!r} split {self.train_split!r} ({blocks.origin}) has "
                    f"{blocks.tokens} tokens, {total} block(s) of block_size {self.block_size}: holding out "
                    f"{n_val} for validation leaves none to train on; lower block_size or set another "
                    "val_split"
                )
            train_ids, val_ids = blocks.ids[: total - n_val], blocks.ids[total - n_val :]
            self._read = {"train": blocks, "val": blocks}
        else:
            train_blocks = _corpus_blocks(train, tokenizer, self.block_size, self.max_train_samples)
            self._require_block(train_blocks, "training", self.train_split)
            val_blocks = _corpus_blocks(val, tokenizer, self.block_size, self.max_val_samples)
            self._require_block(val_blocks, "validation", self.val_split)
            train_ids, val_ids = train_blocks.ids, val_blocks.ids
            self._read = {"train": train_blocks, "val": val_blocks}
        self.train_ids = train_ids[: self.max_train_samples]
        self.val_ids = val_ids[: self.max_val_samples]

    def _require_block(self, blocks: _SplitBlocks, role: str, split: str) -> None:
        if blocks.ids.shape[0] == 0:
            raise DataError(
                f"corpus {self.spec.label!r} split {split!r} ({blocks.origin}) has {blocks.tokens} tokens, "
                f"fewer than one {role} block of block_size {self.block_size}; lower block_size or use a "
                "larger split"
            )

    def describe(self) -> dict[str, Any]:
        """What the recovery trained and validated on, for the run's report."""
        if self.train_ids is None or self.val_ids is None:
            raise RuntimeError("describe() needs setup() first")
        return {
            "task": "language_modeling",
            "corpus": self.spec.label,
            "train_origin": self._read["train"].origin,
            "val_origin": self._read["val"].origin,
            "train_split": self.train_split,
            "val_split": self.val_split,
            "held_out": self.held_out,
            "val_fraction": self.val_fraction if self.held_out else None,
            "block_size": self.block_size,
            "train_blocks": self.train_ids.shape[0],
            "train_tokens": self.train_ids.numel(),
            "val_blocks": self.val_ids.shape[0],
            "val_tokens": self.val_ids.numel(),
            "tokens_read": {"train": self._read["train"].tokens, "val": self._read["val"].tokens},
            "max_train_samples": self.max_train_samples,
            "max_val_samples": self.max_val_samples,
            "batch_size": self.batch_size,
            "shuffle": self.shuffle,
            "seed": self.seed,
        }

    def train_dataloader(self) -> DataLoader:
        if self.train_ids is None:
            raise RuntimeError("train_dataloader() needs setup() first")
        return DataLoader(
            LabelledBlocks(self.train_ids),
            batch_size=self.batch_size,
            shuffle=self.shuffle,
            generator=seeded_generator(self.seed) if self.shuffle else None,
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader:
        if self.val_ids is None:
            raise RuntimeError("val_dataloader() needs setup() first")
        return evaluation_loader(
            LabelledBlocks(self.val_ids), self.batch_size, self.trainer, None, self.num_workers
        )


# ----------------------------------------------------------------------------------------------------------
# Instruction QA (SQuAD layout)
