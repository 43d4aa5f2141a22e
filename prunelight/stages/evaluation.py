"""One evaluation of a model in memory, as every stage does it: perplexity, then zero-shot if asked.

``prune`` evaluates the dense and the pruned model, ``finetune`` the model before and after training, and
``pipeline`` all of them; each measurement lands in ``analysis/perplexity_<which>.json`` and
``analysis/zeroshot_<which>.json`` of the run, and in TensorBoard.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from prunelight.callbacks.evaluation_report import EvaluationReport
from prunelight.data.datamodule import PerplexityDataModule
from prunelight.evaluate import PerplexityModule
from prunelight.stages.settings import EvaluationSettings

if TYPE_CHECKING:
    from prunelight.trainer import PrunelightTrainer


def evaluate_model(
    trainer: PrunelightTrainer,
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
    trainer: PrunelightTrainer, evaluator: PerplexityModule, settings: EvaluationSettings, which: str
) -> dict[str, Any]:
    """:func:`evaluate_model` for a module that may load its model itself (from a folder, shard by shard
    under FSDP2)."""
    data = PerplexityDataModule(
        settings.corpora, settings.split, settings.seqlen, settings.batch_size, settings.max_windows
    )
    trainer.measure_perplexity(evaluator, data, EvaluationReport(f"analysis/perplexity_{which}.json"))
    perplexity = {corpus: r["perplexity"] for corpus, r in evaluator.results["test"].items()}
    zero_shot = None
    if settings.zero_shot is not None and trainer.is_global_zero:
        from prunelight.evaluate.zeroshot import write_zero_shot
        from prunelight.evaluate.zeroshot import zero_shot as run_zero_shot

        zero_shot = run_zero_shot(evaluator.model, evaluator.tokenizer, settings.zero_shot)
        write_zero_shot(Path(trainer.default_root_dir), zero_shot, which)
    return {"perplexity": perplexity, "zero_shot": zero_shot}


def check_zero_shot(settings: EvaluationSettings | None) -> None:
    """Fail on a bad zero-shot setting (unknown task, missing local data) before any model work starts."""
    if settings is not None and settings.zero_shot is not None:
        from prunelight.evaluate.zeroshot import check_tasks

        check_tasks(settings.zero_shot)


def part_of(measured: dict[str, Any] | None, key: str) -> Any:
    """``measured[key]`` of an :func:`evaluate_model` result, None when that evaluation was skipped."""
    return measured[key] if measured else None
