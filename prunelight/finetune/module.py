"""Recovery fine-tuning as a LightningModule: LoRA adapters (or every weight) of a (pruned) causal LM,
trained on the next-token loss, on distillation from the dense teacher, or on both.

With LoRA the base weights stay frozen; only the adapters train, so a checkpoint holds the adapters and the
optimiser state, not a second copy of the model. The teacher is not a submodule: no checkpoint holds it
(it is frozen and loaded again from its path), DDP does not broadcast it, and Lightning neither counts nor
switches it to train mode. Lightning does the rest: precision (``bf16-mixed``), gradient accumulation,
checkpointing and resume (``ckpt_path``), DDP (each rank loads its own teacher).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import torch
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase, get_scheduler

from prunelight.errors import ConfigError
from prunelight.evaluate.perplexity import Perplexity
from prunelight.finetune.distillation import DistillationSettings, Objective, kd_loss, lm_loss, predicted_rows
from prunelight.finetune.lora import LoraSettings, add_lora
from prunelight.models.module import CausalLMModule
from prunelight.models.spec import DType


@dataclass
class TrainingSettings:
    """The optimiser and what the forward pass keeps.

    Attributes:
        learning_rate: AdamW's peak learning rate for the adapters.
        weight_decay: AdamW's decoupled weight decay.
        warmup_steps: optimiser steps of linear warm-up from 0.
        scheduler: after warm-up, ``cosine`` decays to 0 at the trainer's last step, ``constant`` keeps it.
        gradient_checkpointing: recompute activations in the backward pass (less memory, ~30% more time).
    """

    learning_rate: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    scheduler: Literal["cosine", "constant"] = "cosine"
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        if not self.learning_rate > 0:
            raise ConfigError(f"training.learning_rate must be > 0, got {self.learning_rate}")
        if self.warmup_steps < 0:
            raise ConfigError(f"training.warmup_steps must be >= 0, got {self.warmup_steps}")


TrainMode = Literal["lora", "full"]
"""What recovery trains: LoRA adapters on the frozen model, or every weight of it."""


class FinetuneModule(CausalLMModule):
    """LoRA fine-tuning of the model at ``path`` (a pruned model folder loads like any other).

    Batches are dicts with ``input_ids`` and ``labels`` (``-100`` where no loss is taken) and optionally
    ``attention_mask``, as :mod:`prunelight.finetune.data` makes them. Logged: ``train/loss`` every step,
    ``val/loss`` and ``val/ppl`` (a torchmetrics :class:`~prunelight.evaluate.perplexity.Perplexity` over
    the labelled tokens) every validation.

    Args:
        path: a zoo name, a model folder (a pruned one too), a ``.gguf`` file or a hub id.
        gguf_file: a GGUF file inside ``path``.
        dtype: weights' dtype; keep ``float32`` on a CPU, ``bfloat16`` with ``precision: bf16-true`` on a GPU.
        trust_remote_code: run code shipped with a hub checkpoint.
        revision: hub branch, tag or commit.
        lora: rank, alpha, dropout and target modules of the adapters.
        training: optimiser, schedule and gradient checkpointing.

    ``lora`` and ``training`` are Python arguments (and ``fit``'s ``model.lora``/``model.training``); the
    ``finetune`` and ``pipeline`` subcommands take them as top-level ``lora:``/``training:`` sections and
    give them to :meth:`use_settings`.
    """

    def __init__(
        self,
        path: str = "smollm2-135m",
        gguf_file: str | None = None,
        dtype: DType = "auto",
        trust_remote_code: bool = False,
        revision: str | None = None,
        lora: LoraSettings = LoraSettings(),  # noqa: B008 (settings are never mutated)
        training: TrainingSettings = TrainingSettings(),  # noqa: B008
    ) -> None:
        super().__init__(path, gguf_file, dtype, None, trust_remote_code, revision)
        self._init_training(lora, training)

    @classmethod
    def from_model(  # type: ignore[override]
        cls,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        name: str = "model",
        lora: LoraSettings = LoraSettings(),  # noqa: B008
        training: TrainingSettings = TrainingSettings(),  # noqa: B008
    ) -> FinetuneModule:
        """Fine-tune a model already in memory (the pipeline's pruned model) without saving it first."""
        module = super().from_model(model, tokenizer, name)
        module._init_training(lora, training)
        return module

    def _init_training(self, lora: LoraSettings, training: TrainingSettings) -> None:
        self.val_perplexity = Perplexity()
        self.last_train_loss: float | None = None
        self.objective: Objective = "lm"
        self.train_mode: TrainMode = "lora"
        self._configured = False  # configure_model has set the model up for training
        self.distillation = DistillationSettings()
        self._teacher: list[PreTrainedModel] = []  # a list, so that nn.Module does not register it
        # Checkpoints hold only the adapters (on_save_checkpoint); the frozen base comes from ``path``.
        self.strict_loading = False
        self.use_settings(lora, training)

    def use_settings(
        self, lora: LoraSettings | None = None, training: TrainingSettings | None = None
    ) -> None:
        """Fine-tune with these LoRA and training settings (None keeps the current one); set before ``fit``.

        The ``finetune`` subcommand gives its top-level ``lora`` and ``training`` sections here. Both are
        recorded in ``hparams``, so a checkpoint holds the settings it was trained with (a resume with other
        LoRA settings is refused in :meth:`on_load_checkpoint`).
        """
        if isinstance(getattr(self, "model", None), PeftModel):
            raise RuntimeError("the adapters are already added; set the settings before fit")
        if lora is not None:
            self.lora = _settings(LoraSettings, lora)
        if training is not None:
            self.training_settings = _settings(TrainingSettings, training)
        self.hparams["lora"], self.hparams["training"] = self.lora, self.training_settings

    def use_recovery(
        self,
        objective: Objective = "lm",
        train: TrainMode = "lora",
        distillation: DistillationSettings | None = None,
        teacher: PreTrainedModel | None = None,
    ) -> None:
        """Train ``lora`` adapters or ``full`` weights on ``objective``; set before ``fit``.

        ``teacher`` (needed by ``kd`` and ``lm+kd``) is frozen here and put in eval mode; it moves to the
        student's device when the fit starts. It is held outside the module's submodules (see the module
        docstring), so its weights are never trained, broadcast or checkpointed.
        """
        if self._configured:
            raise RuntimeError("the model is already set up for training; set the recovery before fit")
        if objective != "lm" and teacher is None:
            raise ConfigError(f"recovery.objective {objective} needs a teacher model")
        self.objective, self.train_mode = objective, train
        self.distillation = distillation or DistillationSettings()
        self._teacher = [] if objective == "lm" else [teacher]
        for frozen in self._teacher:
            frozen.requires_grad_(False)
            frozen.eval()

    @property
    def teacher(self) -> PreTrainedModel | None:
        """The frozen dense model the ``kd`` objectives learn from, or None."""
        return self._teacher[0] if self._teacher else None

    def drop_teacher(self) -> None:
        """Let the teacher's memory go (after the fit)."""
        self._teacher = []

    def on_fit_start(self) -> None:
        if self.teacher is not None:
            self.teacher.to(self.device)

    @property
    def peft_model(self) -> PeftModel:
        if not isinstance(self.model, PeftModel):
            raise RuntimeError("the adapters are added in configure_model; call it (or fit) first")
        return self.model

    def load_base(self) -> PreTrainedModel:
        """The base model, loaded if it is not yet (evaluation before training needs it without adapters)."""
        if self.model is None:
            super().configure_model()
        assert self.model is not None
        return self.model.get_base_model() if isinstance(self.model, PeftModel) else self.model

    def configure_model(self) -> None:
        if isinstance(self.model, PeftModel) or self._configured:
            return
        base = self.load_base()
        base.requires_grad_(self.train_mode == "full")
        if self.training_settings.gradient_checkpointing:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            base.config.use_cache = False
        self.model = add_lora(base, self.lora) if self.train_mode == "lora" else base
        self.model.train()  # loading leaves the model in eval mode; LoRA dropout needs train mode
        self._configured = True

    def forward(self, batch: dict[str, torch.Tensor]) -> Any:
        return self.model(
            input_ids=batch["input_ids"],
            attention_mask=batch.get("attention_mask"),
            labels=batch["labels"],
            use_cache=False,
        )

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        size = len(batch["labels"])
        if self.objective == "lm":
            loss = self(batch).loss
            self.last_train_loss = float(loss.detach())
            self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=size)
            return loss
        assert self.teacher is not None
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch.get("attention_mask")}
        logits = self.model(**inputs, use_cache=False).logits
        with torch.no_grad():
            teacher_logits = self.teacher(**inputs, use_cache=False).logits
        settings = self.distillation
        labels = batch["labels"]
        lm = lm_loss(logits, labels)
        kd = kd_loss(
            predicted_rows(logits, labels),
            predicted_rows(teacher_logits, labels),
            settings.temperature,
            settings.top_k,
        )
        loss = kd if self.objective == "kd" else (1 - settings.kd_weight) * lm + settings.kd_weight * kd
        # the monitor compares the training loss with val/loss, an LM loss: give it the LM loss here too
        self.last_train_loss = float(lm.detach())
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=size)
        self.log("train/lm_loss", lm.detach(), on_step=True, on_epoch=False, batch_size=size)
        self.log("train/kd_loss", kd.detach(), on_step=True, on_epoch=False, batch_size=size)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        out = self.model(
            input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"), use_cache=False
        )
        self.val_perplexity.update(out.logits, batch["labels"])

    def on_validation_epoch_end(self) -> None:
        summary = self.val_perplexity.summary()
        self.val_perplexity.reset()
        self.log("val/loss", summary["nll_mean"], prog_bar=True, sync_dist=False)
        self.log("val/ppl", summary["perplexity"], prog_bar=True, sync_dist=False)

    def configure_optimizers(self) -> Any:
        settings = self.training_settings
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else 1
        name = "cosine" if settings.scheduler == "cosine" else "constant_with_warmup"
        scheduler = get_scheduler(
            name, optimizer, num_warmup_steps=settings.warmup_steps, num_training_steps=int(total)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Plain values only: torch.load(weights_only=True), which resuming uses, refuses other classes.
        hparams = checkpoint.get("hyper_parameters") or {}
        for key, value in hparams.items():
            if dataclasses.is_dataclass(value):
                hparams[key] = dataclasses.asdict(value)
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = (checkpoint.get("hyper_parameters") or {}).get("lora")
        if isinstance(saved, dict) and saved != dataclasses.asdict(self.lora):
            raise ConfigError(
                f"the checkpoint was trained with lora {saved}, this run has lora "
                f"{dataclasses.asdict(self.lora)}; resume with the lora settings it was written with"
            )
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        missing = trainable - set(checkpoint["state_dict"])
        if missing:
            raise ConfigError(
                f"the checkpoint has no weights for {len(missing)} adapter parameters (e.g. "
                f"{sorted(missing)[0]!r}); resume with the same model and lora settings it was written with"
            )


def _settings(kind: type, value: Any) -> Any:
    """A settings dataclass from itself or from the plain dict a checkpoint's hyperparameters hold."""
    return kind(**value) if isinstance(value, dict) else value
