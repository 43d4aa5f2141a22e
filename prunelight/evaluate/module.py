"""Perplexity evaluation as a LightningModule: ``trainer.validate`` / ``trainer.test`` on the windows of a
:class:`~prunelight.data.datamodule.PerplexityDataModule`, one metric per corpus."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from prunelight.errors import ConfigError
from prunelight.evaluate.perplexity import Perplexity
from prunelight.models.module import CausalLMModule


class PerplexityModule(CausalLMModule):
    """Scores every evaluation window and reports perplexity per corpus.

    After a run, ``results[stage]`` (``"test"`` or ``"validate"``) maps each corpus to its perplexity, mean
    NLL, seqlen, windows and scored tokens; the same numbers are logged as ``<stage>/ppl/<corpus>``.
    """

    results: dict[str, dict[str, dict[str, Any]]]
    metrics: nn.ModuleDict

    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "labels"):
            raise ConfigError("PerplexityModule needs a PerplexityDataModule (data: in the config)")
        if self.max_context is not None and datamodule.seqlen > self.max_context:
            raise ConfigError(
                f"seqlen {datamodule.seqlen} is longer than the model's context ({self.max_context} tokens, "
                "max_position_embeddings); lower data.seqlen"
            )
        self.labels: list[str] = list(datamodule.labels)
        self.metrics = nn.ModuleDict({_key(label): Perplexity() for label in self.labels})
        if not hasattr(self, "results"):
            self.results = {}

    def _step(self, batch: Any, dataloader_idx: int) -> None:
        # a padding batch (several ranks) runs like any other; its labels are all ignored, so it adds nothing
        logits = self.model(input_ids=batch["input_ids"], use_cache=False).logits
        self.metrics[_key(self.labels[dataloader_idx])].update(logits, batch["labels"])

    @torch.no_grad()
    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._step(batch, dataloader_idx)

    @torch.no_grad()
    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._step(batch, dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self._collect("validate")

    def on_test_epoch_end(self) -> None:
        self._collect("test")

    def _collect(self, stage: str) -> None:
        datamodule = self.trainer.datamodule
        out: dict[str, dict[str, Any]] = {}
        for label in self.labels:
            metric = self.metrics[_key(label)]
            summary = metric.summary()
            metric.reset()
            out[label] = {**summary, **datamodule.describe(label)}
            self.log(f"{stage}/ppl/{label}", summary["perplexity"], add_dataloader_idx=False, sync_dist=False)
        self.results[stage] = out


def _key(label: str) -> str:
    return label.replace(".", "_")
