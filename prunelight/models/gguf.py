"""GGUF checkpoints, dequantised through transformers' own GGUF reader."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from prunelight.errors import ModelError


def require_gguf(what: str) -> None:
    """Fail early, with the install line, when the optional ``gguf`` package is missing."""
    if importlib.util.find_spec("gguf") is None:
        raise ModelError(
            f"{what} is a GGUF checkpoint and reading it needs the 'gguf' package, which is not installed: "
            "pip install 'prunelight[gguf]' (or pip install gguf)"
        )


def drop_quantization_config(model: PreTrainedModel) -> PreTrainedModel:
    """transformers records the GGUF quantisation on the config but cannot save it back; the weights are
    already dequantised, so the record only stands in the way of ``save_pretrained``."""
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.__dict__.pop("hf_quantizer", None)
    model.is_quantized = False
    return model


def convert_gguf(gguf: Path, out: Path, dtype: torch.dtype = torch.bfloat16) -> None:
    """Write a plain Hugging Face folder (config, safetensors, tokenizer) from a GGUF file.

    The weights are copied into a model built fresh from the same config, so nothing of the GGUF
    loading path (quantizer hooks, config entries) survives into the saved folder.
    """
    require_gguf(str(gguf))
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.to(dtype).save_pretrained(out)
    tokenizer.save_pretrained(out)
