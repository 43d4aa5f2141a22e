"""Write what an evaluation measured, with how long it took and how much memory it needed."""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from prunelight.io import write_json
from prunelight.measure import peak_memory, reset_peak_memory


class EvaluationReport(L.Callback):
    """After ``validate``/``test``, writes ``<default_root_dir>/analysis/perplexity.json`` and logs the
    perplexities as TensorBoard hparams metrics.

    The module must expose ``results[stage]`` (as :class:`~prunelight.evaluate.PerplexityModule` does).
    Time covers the whole evaluation loop (forward passes and metric updates, not model loading); memory is
    the CUDA peak on GPU, or the process's peak resident set on CPU.
    """

    def __init__(self, filename: str = "analysis/perplexity.json") -> None:
        self.filename = filename
        self.report: dict[str, Any] | None = None
        self._start = 0.0

    def _begin(self, trainer: L.Trainer) -> None:
        reset_peak_memory(trainer.strategy.root_device)
        self._start = time.perf_counter()

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._begin(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._begin(trainer)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finish(trainer, pl_module, "test")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "validate":
            self._finish(trainer, pl_module, "validate")

    def _finish(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        seconds = time.perf_counter() - self._start
        results = getattr(pl_module, "results", {}).get(stage)
        if not results:
            return
        device = trainer.strategy.root_device
        peak = peak_memory(device)
        tokens = sum(r["windows"] * r["seqlen"] for r in results.values())
        spec = getattr(pl_module, "spec", None)
        self.report = {
            "model": getattr(spec, "path", None),
            "dtype": str(next(pl_module.parameters()).dtype).removeprefix("torch."),
            "stage": stage,
            "corpora": results,
            "seconds": seconds,
            "tokens_per_second": tokens / seconds if seconds > 0 else None,
            **peak,
            "device": torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else platform.processor() or "cpu",
            "world_size": trainer.world_size,
            "versions": {
                "python": sys.version.split()[0],
                "torch": torch.__version__,
                "lightning": L.__version__,
            },
        }
        self._write(trainer)

    @rank_zero_only
    def _write(self, trainer: L.Trainer) -> None:
        write_json(Path(trainer.default_root_dir) / self.filename, self.report)
        if trainer.logger is not None:
            metrics = {f"hparams/ppl_{name}": r["perplexity"] for name, r in self.report["corpora"].items()}
            first = next(iter(self.report["corpora"].values()))
            trainer.logger.log_hyperparams(
                {
                    "model": self.report["model"],
                    "dtype": self.report["dtype"],
                    "seqlen": first["seqlen"],
                    "split": first["split"],
                },
                metrics,
            )
        for name, r in self.report["corpora"].items():
            print(
                f"{name:>14} {r['split']:<10} ppl {r['perplexity']:10.4f}  seqlen {r['seqlen']}  "
                f"windows {r['windows']}  tokens {r['tokens_scored']}"
            )
