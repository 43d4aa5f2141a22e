"""Write a pruned model folder atomically, and load one (stock or per-layer) with one call.

The folder is an ordinary Hugging Face folder: safetensors weights, config.json, generation config and
the tokenizer. A uniformly pruned model keeps its stock ``model_type`` and loads with plain transformers;
a model whose layers differ has ``model_type = "prunelight_<stock>"`` and loads after ``import
prunelight`` (which registers those classes), through :func:`load_pruned` or ``AutoModelForCausalLM``.
Either way config.json records every layer's sizes under ``prunelight_layers``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from prunelight.errors import ConfigError, ModelError
from prunelight.models.adapters import adapter_for
from prunelight.models.checkpoint import check_folder
from prunelight.save.classes import register, sync_config


def save_pruned(
    model: PreTrainedModel, tokenizer: Any | None, folder: str | os.PathLike, *, overwrite: bool = False
) -> Path:
    """Save ``model`` (and ``tokenizer``, if given) into ``folder``; return the folder.

    Everything is written into a hidden sibling folder first and renamed into place at the end, so a
    crash or a full disk never leaves a half-written model where a loader would pick it up. An existing
    ``folder`` is an error unless ``overwrite`` is set; then it is replaced only once the new one is complete.
    """
    adapter_for(model)  # an unsupported model fails here, before anything is written
    sync_config(model)  # the config must describe the modules as they are, whoever changed them last
    target = Path(folder).expanduser()
    if target.exists() and not overwrite:
        raise ConfigError(f"{target} already exists; choose a new folder or pass overwrite=True")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    old: Path | None = None
    try:
        model.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / target.name)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if old is not None and not target.exists():
            os.replace(old / target.name, target)  # put the previous model back
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


def load_pruned(
    path: str | os.PathLike,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> PreTrainedModel:
    """Load a model folder written by :func:`save_pruned` (stock or per-layer config), in eval mode.

    ``dtype`` is passed to ``from_pretrained`` (``"float32"``, ``torch.bfloat16``, ``"auto"``; ``None`` keeps
    transformers' default); ``device`` moves the loaded model. For the tokenizer and family adapter as well,
    ``prunelight.load(path)`` reads the same folders.
    """
    register()
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise ModelError(
            f"{folder} is not a saved model folder (no config.json); give a folder written by save_pruned"
        )
    kwargs: dict[str, Any] = {}
    if isinstance(dtype, str) and dtype != "auto":
        resolved = getattr(torch, dtype, None)
        if not isinstance(resolved, torch.dtype):
            raise ConfigError(
                f"dtype {dtype!r} is not a torch dtype; use e.g. 'float32', 'bfloat16' or 'auto'"
            )
        dtype = resolved
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        config = AutoConfig.from_pretrained(str(folder))
    except (OSError, ValueError) as err:
        raise ModelError(f"{folder}/config.json cannot be read: {str(err).splitlines()[0]}") from None
    check_folder(folder, config)  # the weights are there, whole, and of the config's shapes
    model = AutoModelForCausalLM.from_pretrained(str(folder), **kwargs)
    if device is not None:
        model.to(device)
    model.eval()
    return model
