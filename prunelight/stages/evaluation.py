"""One evaluation of a model in memory, as every stage does it: perplexity, then zero-shot if asked.

``prune`` evaluates the dense and the pruned model, ``finetune`` the model before and after training, and
``pipeline`` all of them; each measurement lands in ``analysis/perplexity_<which>.json`` and
``analysis/zeroshot_<which>.json`` of the run, and in TensorBoard.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from prunelight.calibration import CalibrationDataModule, CalibrationModule
from prunelight.callbacks.evaluation_report import EvaluationReport
from prunelight.data.datamodule import PerplexityDataModule
from prunelight.errors import ConfigError
from prunelight.evaluate import PerplexityModule
from prunelight.evaluate.zeroshot import ZeroShotSettings, check_tasks, write_zero_shot, zero_shot
from prunelight.loops import measure_perplexity
from prunelight.models.sharding import refuse_sharding
from prunelight.run_folder import removed_on_failure
from prunelight.stages.check import check_stage
from prunelight.stages.settings import EvaluationSettings


def run_evaluate(
    trainer: L.Trainer,
    module: L.LightningModule,
    datamodule: L.LightningDataModule | None,
    settings: ZeroShotSettings | None = None,
) -> dict[str, Any]:
    """The ``evaluate`` subcommand: perplexity on every corpus of the datamodule (analysis/perplexity.json
    and TensorBoard); with zero-shot ``settings``, lm-eval's tasks on the same in-memory model
    (``analysis/zeroshot_model.json``).

    If the evaluation fails, a run folder it created is removed again, so a failed run leaves no
    half-written results behind.
    """
    if settings is not None:
        refuse_sharding(trainer.strategy, "zero-shot evaluation (lm-eval runs the model on rank 0 alone)")
        check_tasks(settings)  # an unknown task or missing data fails before the model loads
    check_stage(trainer, module, datamodule)
    report = next((c for c in trainer.callbacks if isinstance(c, EvaluationReport)), None)
    with removed_on_failure(Path(trainer.default_root_dir)):
        result = measure_perplexity(trainer, module, datamodule, report or EvaluationReport())
        if settings is not None and trainer.is_global_zero:
            result["zero_shot"] = zero_shot(module.model, module.tokenizer, settings)
            write_zero_shot(Path(trainer.default_root_dir), result["zero_shot"], "model")
        return result


def evaluate_calibrated(
    trainer: L.Trainer, module: CalibrationModule, settings: EvaluationSettings, which: str
) -> dict[str, Any]:
    """Perplexity (and zero-shot, if set) of ``module``'s model as it is now (``analysis/*_<which>.json``)."""
    return evaluate_model(trainer, module.model, module.tokenizer, module.spec.name, settings, which)


def evaluate_model(
    trainer: L.Trainer,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    name: str,
    settings: EvaluationSettings,
    which: str,
) -> dict[str, Any]:
    """Perplexity per corpus (and zero-shot accuracies when ``settings.zero_shot`` is set) of ``model``.

    Returns ``{"perplexity": {corpus: ppl}, "zero_shot": <zero_shot() result> or None}``. The zero-shot
    tasks run on rank 0 only (lm-eval has its own notion of ranks; a DDP run would repeat them).
    """
    return evaluate_module(trainer, PerplexityModule.from_model(model, tokenizer, name), settings, which)


def evaluate_module(
    trainer: L.Trainer, evaluator: PerplexityModule, settings: EvaluationSettings, which: str
) -> dict[str, Any]:
    """:func:`evaluate_model` for a module that may load its model itself (from a folder, shard by shard
    under FSDP2)."""
    data = PerplexityDataModule(
        settings.corpora, settings.split, settings.seqlen, settings.batch_size, settings.max_windows
    )
    measure_perplexity(trainer, evaluator, data, EvaluationReport(f"analysis/perplexity_{which}.json"))
    perplexity = {corpus: r["perplexity"] for corpus, r in evaluator.results["test"].items()}
    accuracies = None
    if settings.zero_shot is not None and trainer.is_global_zero:
        accuracies = zero_shot(evaluator.model, evaluator.tokenizer, settings.zero_shot)
        write_zero_shot(Path(trainer.default_root_dir), accuracies, which)
    return {"perplexity": perplexity, "zero_shot": accuracies}


def check_zero_shot(settings: EvaluationSettings | None) -> None:
    """Fail on a bad zero-shot setting (unknown task, missing local data) before any model work starts."""
    if settings is not None and settings.zero_shot is not None:
        check_tasks(settings.zero_shot)


def part_of(measured: dict[str, Any] | None, key: str) -> Any:
    """``measured[key]`` of an :func:`evaluate_model` result, None when that evaluation was skipped."""
    return measured[key] if measured else None


def check_modules(module: object, datamodule: object) -> None:
    """The prune and pipeline stages calibrate: they need the calibration module and data."""
    if not isinstance(module, CalibrationModule):
        raise ConfigError("prune needs a CalibrationModule as model (the default of the prune subcommand)")
    if not isinstance(datamodule, CalibrationDataModule):
        raise ConfigError("prune needs a CalibrationDataModule as data (the default of the prune subcommand)")
