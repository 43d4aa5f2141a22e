"""Calibration as a LightningModule: the trainer's test loop runs the windows through the model.

Forward-only criteria need no logits, so only the last position's are computed; gradient criteria run
forward and backward without an optimiser step, and the gradients are consumed by the importance hooks as
they arrive. Their memory is the activations kept for the backward: the loss keeps one logits-sized buffer
(:mod:`prunelight.calibration.losses`) and float32 attention a kernel without a seq x seq matrix
(:mod:`prunelight.models.attention`).
"""

from __future__ import annotations

from typing import Any

import torch

from prunelight.calibration.losses import window_losses
from prunelight.errors import ConfigError
from prunelight.models.attention import efficient_float32_attention
from prunelight.models.module import CausalLMModule


class CalibrationModule(CausalLMModule):
    """Runs calibration windows; what it runs is set by the importance callback.

    ``backward`` (gradient criteria) adds a backward pass of the window-weighted loss (the weights make a
    mixture's accumulated gradient the weighted mean of its sources' gradients); ``per_sample`` runs one
    backward per window instead of one per batch.
    """

    backward: bool = False
    per_sample: bool = False
    criterion: str = "forward"

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, Any]:
        input_ids, weights = batch["input_ids"], batch["weights"]
        if not self.backward:
            # through the root (under FSDP2 its hooks gather the embeddings); one position's logits only
            self.model(input_ids=input_ids, use_cache=False, logits_to_keep=1)
            return {"tokens": input_ids.numel(), "loss": None}
        if torch.is_inference_mode_enabled():
            raise ConfigError(
                f"criterion {self.criterion!r} needs gradients, but calibration runs in inference mode; "
                "run it through PrunelightTrainer.prune or prunelight.loops.calibrate (they switch inference "
                "mode off), or build the Trainer with inference_mode=False, or pick a forward criterion "
                "(wanda, magnitude, fluctuation)"
            )
        chunks = [slice(i, i + 1) for i in range(len(input_ids))] if self.per_sample else [slice(None)]
        total = 0.0
        # float32 attention keeps no seq x seq matrix per layer for the backward (models/attention.py)
        with torch.enable_grad(), efficient_float32_attention():
            for part in chunks:
                ids = input_ids[part]
                logits = self.model(input_ids=ids, use_cache=False).logits
                loss = (window_losses(logits, ids) * weights[part].to(logits.device)).mean()
                if not loss.requires_grad:
                    raise ConfigError(
                        f"criterion {self.criterion!r} needs gradients, but the model gave a loss without "
                        "them (no-grad mode, or every weight frozen); do not wrap calibration in "
                        "torch.no_grad()/inference_mode, or pick a forward criterion"
                    )
                loss.backward()
                total += float(loss.detach()) * len(ids)
        return {"tokens": input_ids.numel(), "loss": total / len(input_ids)}
