"""Knowledge distillation for recovery: the dense model (the teacher) teaches the pruned one (the student).

The student matches the teacher's next-token distribution, which carries far more signal per token than the
one-hot next token of the language-modelling loss; Minitron, Sheared-LLaMA and DarwinLM recover pruned models
this way. The loss is the KL divergence ``KL(teacher || student)`` of the two distributions softened by a
temperature ``T`` and scaled by ``T^2`` (so its gradients keep their size as ``T`` changes, as in Hinton et
al.), averaged over the positions the language-modelling loss is taken on. With ``top_k`` only the
teacher's ``k`` most likely tokens of each position take part: both distributions are renormalised over
them. The loss's softmaxes and their gradients are then ``[positions, k]`` instead of ``[positions, vocab]``
(the teacher's full logits are still computed once per batch), and the loss stays exactly zero for a
student equal to its teacher.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from prunelight.errors import ConfigError

Objective = Literal["lm", "kd", "lm+kd"]
TeacherDType = Literal["auto", "float32", "bfloat16", "float16"]


@dataclass
class DistillationSettings:
    """How the teacher teaches (``recovery.objective: kd`` or ``lm+kd``).

    Attributes:
        teacher: the dense model (any model path); None takes the model the pruned folder was pruned from
            (``<run>/analysis/prune.json``) in ``finetune``, and the pipeline's own model in ``pipeline``.
        temperature: softens both distributions; the loss is scaled by its square.
        kd_weight: the share of the distillation loss in ``lm+kd``: ``(1 - w) * lm + w * kd``.
        top_k: only the teacher's ``k`` most likely tokens per position (None: the whole vocabulary).
        teacher_dtype: the teacher's weights; ``auto`` is the student's dtype (bfloat16 halves its memory).
    """

    teacher: str | None = None
    temperature: float = 1.0
    kd_weight: float = 0.5
    top_k: int | None = None
    teacher_dtype: TeacherDType = "auto"

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ConfigError(f"recovery.distillation.temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.kd_weight <= 1.0:
            raise ConfigError(f"recovery.distillation.kd_weight must be in [0, 1], got {self.kd_weight}")
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"recovery.distillation.top_k must be >= 1 (or null), got {self.top_k}")


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
) -> torch.Tensor:
    """``T^2 * KL(softmax(t / T) || softmax(s / T))``, the mean over rows of ``[positions, vocab]`` logits.

    Computed in float32 at least (bfloat16 and float16 logits are widened). With ``top_k`` both sides are
    restricted to the teacher's ``k`` largest logits of each row and renormalised there.
    """
    student = _wide(student_logits) / temperature
    teacher = _wide(teacher_logits) / temperature
    if top_k is not None:
        teacher, index = teacher.topk(top_k, dim=-1)
        student = student.gather(-1, index)
    log_p = F.log_softmax(teacher, dim=-1)
    log_q = F.log_softmax(student, dim=-1)
    per_row = (log_p.exp() * (log_p - log_q)).sum(-1)
    return per_row.mean() * temperature**2


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The causal language-modelling loss transformers computes from ``labels``: the mean next-token
    cross-entropy over the labelled positions (``-100`` is ignored)."""
    return F.cross_entropy(_wide(logits[:, :-1].flatten(0, 1)), labels[:, 1:].flatten(), ignore_index=-100)


def _wide(logits: torch.Tensor) -> torch.Tensor:
    return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()


def predicted_rows(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The ``[positions, vocab]`` logits of the positions the LM loss is taken on (no padding, no prompt)."""
    taken = labels[:, 1:] != -100
    return logits[:, :-1][taken]


def teacher_of(student_path: str) -> str | None:
    """The model a pruned folder was pruned from, as its run recorded it (``<run>/analysis/prune.json``)."""
    record = Path(student_path).expanduser().parent / "analysis" / "prune.json"
    if not record.is_file():
        return None
    try:
        model = json.loads(record.read_text()).get("model")
    except (OSError, ValueError):
        return None
    return model if isinstance(model, str) else None


def check_teacher(teacher_config, teacher_tokenizer, student_config, student_tokenizer, top_k: int | None,
                  teacher: str) -> None:  # fmt: skip
    """One clear line when the teacher cannot teach this student: another vocabulary or tokenizer (the two
    distributions would be over different tokens), or ``top_k`` beyond the vocabulary."""
    vocab = getattr(student_config, "vocab_size", None)
    teacher_vocab = getattr(teacher_config, "vocab_size", None)
    if teacher_vocab != vocab:
        raise ConfigError(
            f"the teacher {teacher} has a vocabulary of {teacher_vocab} tokens, "
            f"the student {vocab}: distillation compares distributions over the same tokens; give the "
            "dense model this one was pruned from as recovery.distillation.teacher"
        )
    if teacher_tokenizer.get_vocab() != student_tokenizer.get_vocab():
        raise ConfigError(
            f"the teacher {teacher} has another tokenizer than the student (the same vocabulary size, other "
            "tokens); give the dense model this one was pruned from as recovery.distillation.teacher"
        )
    if top_k is not None and vocab is not None and top_k > vocab:
        raise ConfigError(
            f"recovery.distillation.top_k {top_k} is larger than the vocabulary ({vocab} tokens); use at "
            f"most {vocab}, or null for the whole vocabulary"
        )
