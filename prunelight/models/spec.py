"""What to load: the user-facing description of a model, independent of where its files live."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from prunelight.errors import ConfigError

DType = Literal["auto", "float32", "bfloat16", "float16"]
RUN_MODEL_FOLDERS = ("pruned_model", "finetuned_model")
"""The model folders a run writes; a model loaded from one keeps the run's model name for its results."""


@dataclass(frozen=True)
class ModelSpec:
    """A causal LM to load.

    Args:
        path: a zoo name (``smollm2-135m``), a local Hugging Face folder, a local ``.gguf`` file, or a hub id
            (``HuggingFaceTB/SmolLM2-135M``).
        gguf_file: name of a GGUF file inside ``path`` (a folder or a hub repo); dequantised on load.
        dtype: weights' dtype; ``auto`` keeps the checkpoint's dtype (GGUF dequantises to float32).
        device_map: passed to ``from_pretrained`` (``auto``, ``cpu``, ``cuda:0``); None leaves placement to
            Lightning.
        trust_remote_code: run model code shipped with a hub checkpoint. Off by default on purpose.
        revision: a hub branch, tag or commit.
    """

    path: str = "smollm2-135m"
    gguf_file: str | None = None
    dtype: DType = "auto"
    device_map: str | None = None
    trust_remote_code: bool = False
    revision: str | None = None

    def __post_init__(self) -> None:
        if not self.path:
            raise ConfigError("model path is empty: give a zoo name, a folder, a .gguf file or a hub id")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ConfigError(f"dtype {self.dtype!r} is not one of auto, float32, bfloat16, float16")

    def torch_dtype(self) -> torch.dtype | str:
        return "auto" if self.dtype == "auto" else getattr(torch, self.dtype)

    @property
    def name(self) -> str:
        """A short, filesystem-safe name for result folders (``results/<name>/...``)."""
        path = Path(self.gguf_file or self.path.rstrip("/"))
        if path.name in RUN_MODEL_FOLDERS and len(path.parts) >= 3:
            path = path.parents[1]  # results/<model>/<experiment>/pruned_model: the model is still <model>
        base = path.name.removesuffix(".gguf") or "model"
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in base)
