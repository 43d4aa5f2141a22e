"""Which modules LoRA adapts, named the way the family adapter names them.

A user asks for ``q, k, v, o, gate, up, down`` (the projections of the prunable groups, docs/design.md) and
this module turns them into the exact module names of one model, so a pruned model with per-layer sizes, a
Qwen2 with biased q/k/v or a Gemma with its own layout all get the same adapters from the same YAML. Names
that are not projections (``lm_head``, a family-specific module) are accepted as module-name suffixes, as peft
does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from prunelight.errors import ConfigError
from prunelight.models.adapters import adapter_for
from prunelight.models.projections import PROJECTIONS


@dataclass
class LoraSettings:
    """LoRA (peft) on the linear maps of every decoder layer.

    Attributes:
        rank: rank r of the update B @ A.
        alpha: scale numerator; the update is multiplied by alpha / rank.
        dropout: dropout on the adapter's input during training.
        targets: projections (q, k, v, o, gate, up, down) or other module-name suffixes (``lm_head``).
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    targets: list[str] = field(default_factory=lambda: list(PROJECTIONS))

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ConfigError(f"lora.rank must be at least 1, got {self.rank}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.targets:
            raise ConfigError(f"lora.targets is empty; use some of {', '.join(PROJECTIONS)}")


def target_modules(model: nn.Module, targets: list[str]) -> list[str]:
    """The full dotted names of the modules ``targets`` select in ``model``; ConfigError for a target that
    selects nothing (it names the family's projections, so the fix is in the message)."""
    adapter = adapter_for(model)
    names: list[str] = []
    by_module = {id(module): name for name, module in model.named_modules()}
    linear_names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    for target in targets:
        if target in PROJECTIONS:
            chosen = [
                by_module[id(getattr(adapter.modules(layer), target))]
                for layer in adapter.decoder_layers(model)
            ]
        else:
            chosen = [name for name in linear_names if name == target or name.endswith("." + target)]
        if not chosen:
            leaves = {name.rsplit(".", 1)[-1] for name in linear_names}
            raise ConfigError(
                f"LoRA target module {target!r} is not in the model ({type(model).__name__}); use the "
                f"projections {', '.join(PROJECTIONS)} or one of its linear modules: "
                f"{', '.join(sorted(leaves))}"
            )
        names.extend(n for n in chosen if n not in names)
    return names


def add_lora(model: nn.Module, settings: LoraSettings) -> PeftModel:
    """``model`` with LoRA adapters on the selected modules; only the adapters require gradients."""
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=target_modules(model, settings.targets),
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)
