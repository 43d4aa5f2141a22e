"""The ``pipeline`` stage: prune -> evaluate -> fine-tune -> evaluate, one YAML, one results folder.

The prune stage writes what it always writes (``pruned_model/``, ``analysis/``, plots); the fine-tuning runs
on the pruned model still in memory and adds ``adapter/``, ``finetuned_model/`` and its analysis files;
``analysis/recovery.json`` holds the three rows (dense / pruned / recovered) and ``summary.md`` is rewritten
last with their table on top.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import lightning as L

from prunelight.data.datamodule import prepare_with
from prunelight.errors import ConfigError
from prunelight.finetune.data import InstructionDataModule, LanguageModelingDataModule
from prunelight.finetune.lora import target_modules
from prunelight.finetune.module import FinetuneModule
from prunelight.io import write_json
from prunelight.models.sharding import refuse_sharding
from prunelight.reports import write_diagnostics
from prunelight.reports.recovery import RECOVERY_FILE
from prunelight.run_folder import rewritten
from prunelight.stages.check import check_stage
from prunelight.stages.evaluation import check_modules
from prunelight.stages.finetune import finetune_model, resolve_teacher
from prunelight.stages.prune import prune_model
from prunelight.stages.settings import PipelineSettings


def run_pipeline(
    trainer: L.Trainer, module: Any, datamodule: Any, settings: PipelineSettings
) -> dict[str, Any]:
    """The ``pipeline`` subcommand: check everything, then :func:`prune_model` and :func:`finetune_model`
    on the same in-memory model, into ``default_root_dir``; return ``analysis/recovery.json``'s content."""
    prune = settings.prune
    check_stage(
        trainer,
        module,
        datamodule,
        prune.ranking,
        prune.evaluation,
        prune.sparsity,
        settings.finetune_data,
        prune.search,
    )
    with rewritten(Path(trainer.default_root_dir)):
        return _pipeline(trainer, module, datamodule, settings)


def _pipeline(trainer: L.Trainer, module: Any, datamodule: Any, settings: PipelineSettings) -> dict[str, Any]:
    check_modules(module, datamodule)
    refuse_sharding(trainer.strategy, "the pipeline (its LoRA fine-tuning)")
    lora, training = settings.lora, settings.training
    finetune_data = settings.finetune_data or LanguageModelingDataModule()
    if not isinstance(finetune_data, (LanguageModelingDataModule, InstructionDataModule)):
        raise ConfigError(
            "finetune_data must be a LanguageModelingDataModule or an InstructionDataModule, got "
            f"{type(finetune_data).__name__}"
        )
    target_modules(_config_only_model(module), lora.targets)  # a bad LoRA target fails before pruning
    prepare_with(finetune_data, module.tokenizer)  # and so does missing fine-tuning data
    teacher = resolve_teacher(settings.recovery, module, default=module.spec.path)  # and a wrong teacher
    run_dir = Path(trainer.default_root_dir)

    pruned = prune_model(trainer, module, datamodule, dataclasses.replace(settings.prune, save_model=True))
    evaluation = settings.prune.evaluation
    tuner = FinetuneModule.from_model(module.model, module.tokenizer, module.spec.name, lora, training)
    before = (
        {"perplexity": pruned["perplexity"]["pruned"], "zero_shot": pruned["zero_shot"]["pruned"]}
        if evaluation is not None
        else None
    )
    tuned = finetune_model(
        trainer,
        tuner,
        finetune_data,
        settings.recovery,
        evaluation,
        before=before,
        labels=("pruned", "recovered"),
        teacher=teacher,
    )
    params = pruned["parameters"]
    rows = [
        {"name": "dense", "parameters": params["dense"], **_measured(pruned, "dense")},
        {"name": "pruned", "parameters": params["pruned"], **_measured(pruned, "pruned")},
        {
            "name": "recovered",
            "parameters": params["pruned"],
            "perplexity": tuned["perplexity"]["recovered"],
            "zero_shot": tuned["zero_shot"]["recovered"],
        },
    ]
    recovery_report = {"model": pruned["model"], "rows": rows, "finetune": tuned}
    if trainer.is_global_zero:
        write_json(run_dir / RECOVERY_FILE, recovery_report)
        write_diagnostics(run_dir)  # summary.md last, with the recovery table on top
    trainer.strategy.barrier()
    return recovery_report


def _measured(report: dict[str, Any], which: str) -> dict[str, Any]:
    return {
        "perplexity": (report.get("perplexity") or {}).get(which),
        "zero_shot": (report.get("zero_shot") or {}).get(which),
    }


def _config_only_model(module: Any) -> Any:
    """A weightless instance of the model's architecture (meta device) to check LoRA targets against."""
    import torch
    from transformers import AutoModelForCausalLM

    if module.model is not None:
        return module.model
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(module.config)
