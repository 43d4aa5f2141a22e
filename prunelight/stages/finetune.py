"""The ``finetune`` stage: evaluate -> LoRA fit -> merge -> evaluate -> save, into one results folder.

Writes ``adapter/`` (peft's adapter files), ``finetuned_model/`` (the merged model; it loads with
``prunelight.load_pruned``), ``checkpoints/`` (Lightning's, for ``ckpt_path`` resume),
``analysis/finetune.json``, ``analysis/overfitting.json``, the evaluations of
:mod:`prunelight.stages.evaluation`, TensorBoard curves under ``tb/`` and, last, ``summary.md``
(:func:`run_finetune`, through :mod:`prunelight.reports.recovery`). The pipeline calls :func:`finetune_model`
alone and writes its own summary.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping

from prunelight.callbacks.mask import MaskCallback
from prunelight.callbacks.overfitting import OverfittingMonitor
from prunelight.errors import ConfigError
from prunelight.finetune.distillation import check_teacher, teacher_of
from prunelight.finetune.module import FinetuneModule
from prunelight.io import write_json
from prunelight.loops import attached, kept_on_device
from prunelight.measure import peak_memory, reset_peak_memory
from prunelight.models.loader import load_config, load_tokenizer, load_weights, resolve
from prunelight.models.sharding import refuse_sharding
from prunelight.models.spec import ModelSpec
from prunelight.reports.recovery import write_finetune_summary
from prunelight.run_folder import rewritten
from prunelight.save import save_pruned
from prunelight.stages.check import check_stage
from prunelight.stages.evaluation import check_zero_shot, evaluate_model, part_of
from prunelight.stages.settings import EvaluationSettings, FinetuneSettings, RecoverySettings

SPARSE_ZERO_SHARE = 0.05
"""``keep_sparsity: null`` keeps the zeros of a model whose projections are at least this share exact zeros
(a dense checkpoint has essentially none; a sparse-pruned one has its target sparsity)."""


def run_finetune(
    trainer: L.Trainer,
    module: FinetuneModule,
    datamodule: L.LightningDataModule | None,
    settings: FinetuneSettings,
) -> dict[str, Any]:
    """The ``finetune`` subcommand: check everything, fine-tune into ``default_root_dir``, then summary.md.

    ``datamodule`` is the fine-tuning data (the ``finetune_data`` section); ``settings.lora`` and
    ``settings.training`` go to the module before anything runs (None keeps the module's own)."""
    if isinstance(module, FinetuneModule):
        module.use_settings(settings.lora, settings.training)
    teacher = resolve_teacher(settings.recovery, module)  # config and tokenizer only: no weights yet
    check_stage(trainer, module, evaluation=settings.evaluation, finetune_data=datamodule)
    with rewritten(Path(trainer.default_root_dir)):
        report = finetune_model(
            trainer,
            module,
            datamodule,
            settings.recovery,
            settings.evaluation,
            settings.ckpt_path,
            teacher=teacher,
        )
        if trainer.is_global_zero:
            write_finetune_summary(Path(trainer.default_root_dir), report)
        return report


def finetune_model(
    trainer: L.Trainer,
    module: FinetuneModule,
    datamodule: L.LightningDataModule | None,
    recovery: RecoverySettings,
    evaluation: EvaluationSettings | None,
    ckpt_path: str | None = None,
    before: dict[str, Any] | None = None,
    labels: tuple[str, str] = ("before", "after"),
    teacher: str | None = None,
) -> dict[str, Any]:
    """Run the whole stage; return what ``analysis/finetune.json`` holds.

    ``before`` is an evaluation already made of the same model (the pipeline's pruned model), so it is not
    repeated; ``labels`` name the two evaluations in file names and tables. ``teacher`` is the checked path
    of :func:`resolve_teacher` (None for the ``lm`` objective); it is loaded here, once, and dropped after
    the fit.
    """
    if not isinstance(module, FinetuneModule):
        raise ConfigError("finetune needs a FinetuneModule as model (the default of the finetune subcommand)")
    if datamodule is None:
        raise ConfigError(
            "finetune needs training data: a finetune_data section (LanguageModelingDataModule by default)"
        )
    refuse_sharding(trainer.strategy, "LoRA fine-tuning")
    check_zero_shot(evaluation)
    run_dir = Path(trainer.default_root_dir)
    analysis = run_dir / "analysis"

    base = module.load_base()
    parameters = sum(p.numel() for p in base.parameters())
    masks = _mask_callback(base, recovery.keep_sparsity)
    module.use_recovery(
        recovery.objective, recovery.train, recovery.distillation, _load_teacher(teacher, base, recovery)
    )
    if before is None and evaluation is not None and evaluation.dense:
        before = evaluate_model(trainer, base, module.tokenizer, module.run_name, evaluation, labels[0])

    monitor = OverfittingMonitor(recovery.monitor, analysis / "overfitting.json")
    callbacks: list[L.Callback] = [monitor] + ([masks] if masks else [])
    if recovery.early_stopping_patience:
        callbacks.append(EarlyStopping("val/loss", patience=recovery.early_stopping_patience, mode="min"))
    device = trainer.strategy.root_device
    reset_peak_memory(device)
    start = time.perf_counter()
    with ExitStack() as stack:
        for callback in callbacks:
            stack.enter_context(attached(trainer, callback))
        stack.enter_context(kept_on_device(module))
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    fit_seconds = time.perf_counter() - start
    memory = peak_memory(device)
    module.drop_teacher()  # its memory is free for the evaluation

    trained = module.model
    trainable = sum(p.numel() for p in trained.parameters() if p.requires_grad)
    if recovery.train == "lora":
        peft_model = module.peft_model
        if recovery.save_adapter and trainer.is_global_zero:
            peft_model.save_pretrained(run_dir / "adapter")
        merged = masks.merge_and_mask(peft_model) if masks else peft_model.merge_and_unload()
    else:
        merged = masks.merge_and_mask(trained) if masks else trained
        merged.requires_grad_(False)
    merged.eval()
    module.model = merged
    after = (
        evaluate_model(trainer, merged, module.tokenizer, module.run_name, evaluation, labels[1])
        if evaluation is not None
        else None
    )
    report: dict[str, Any] = {
        "model": module.spec.path,
        "labels": list(labels),
        "parameters": parameters,
        "trainable_parameters": trainable,
        "lora": vars(module.lora) if recovery.train == "lora" else None,
        "training": vars(module.training_settings),
        "recovery": {
            **vars(recovery),
            "monitor": vars(recovery.monitor),
            "distillation": {**vars(recovery.distillation), "teacher": teacher} if teacher else None,
        },
        "data": datamodule.describe() if hasattr(datamodule, "describe") else type(datamodule).__name__,
        "trainer": {
            "global_step": trainer.global_step,
            "epochs": trainer.current_epoch,
            "accumulate_grad_batches": trainer.accumulate_grad_batches,
            "precision": str(trainer.precision),
            "resumed_from": ckpt_path,
            "stopped_early": bool(recovery.early_stopping_patience) and trainer.should_stop,
        },
        "seconds": fit_seconds,
        **memory,
        "perplexity": {labels[0]: part_of(before, "perplexity"), labels[1]: part_of(after, "perplexity")},
        "zero_shot": {labels[0]: part_of(before, "zero_shot"), labels[1]: part_of(after, "zero_shot")},
        "overfitting": monitor.report(),
        "sparsity_kept": MaskCallback.from_zeros(merged).sparsity() if masks else None,
    }
    if trainer.is_global_zero:
        if recovery.save_merged:
            save_pruned(merged, module.tokenizer, run_dir / "finetuned_model", overwrite=True)
        monitor.write(trainer)  # also when no validation ran
        write_json(analysis / "finetune.json", report)
    trainer.strategy.barrier()
    return report


def resolve_teacher(
    recovery: RecoverySettings, module: FinetuneModule | Any, default: str | None = None
) -> str | None:
    """The teacher of a distillation objective, checked against the student before any weight is read.

    ``recovery.distillation.teacher`` if set, else ``default`` (the pipeline's own model), else the model the
    pruned folder was pruned from (its run's ``analysis/prune.json``). None for the ``lm`` objective.
    """
    if recovery.objective == "lm":
        return None
    path = recovery.distillation.teacher or default or teacher_of(module.spec.path)
    if path is None:
        raise ConfigError(
            f"recovery.objective {recovery.objective} needs the dense model as teacher, and "
            f"{module.spec.path} has no analysis/prune.json beside it to name it; set "
            "recovery.distillation.teacher"
        )
    spec = ModelSpec(path=path)
    source = resolve(spec)
    check_teacher(
        load_config(spec, source), load_tokenizer(spec, source), module.config, module.tokenizer,
        recovery.distillation.top_k, path,
    )  # fmt: skip
    return path


def _load_teacher(
    path: str | None, student: torch.nn.Module, recovery: RecoverySettings
) -> torch.nn.Module | None:
    """The teacher's weights in ``teacher_dtype`` (``auto``: the student's dtype), or None."""
    if path is None:
        return None
    dtype = recovery.distillation.teacher_dtype
    if dtype == "auto":
        dtype = str(next(student.parameters()).dtype).removeprefix("torch.")
    return load_weights(ModelSpec(path=path, dtype=dtype))


def _mask_callback(model: torch.nn.Module, keep: bool | None) -> MaskCallback | None:
    if keep is False:
        return None
    masks = MaskCallback.from_zeros(model)
    return None if keep is None and masks.sparsity() < SPARSE_ZERO_SHARE else masks
