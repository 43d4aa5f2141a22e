"""Checks of a local checkpoint's files that need no weight read: run before a model loads.

A folder with a config but no weights, a truncated safetensors file, weights whose shapes disagree with
config.json, a ``.gguf`` file that is not GGUF: each would otherwise fail deep inside transformers or
safetensors (after the calibration data is read, in a stage); here each is a :class:`ModelError` that names
the file and the fix, raised in a fraction of a second from the file headers alone.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from prunelight.errors import ModelError

SAFETENSORS_INDEX = "model.safetensors.index.json"
WEIGHT_FILES = ("model.safetensors", SAFETENSORS_INDEX, "pytorch_model.bin", "pytorch_model.bin.index.json")
GGUF_MAGIC = b"GGUF"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def check_gguf_file(path: Path) -> None:
    """``path`` starts with the GGUF magic bytes."""
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic != GGUF_MAGIC:
        raise ModelError(
            f"{path} is not a GGUF file (it does not start with the GGUF magic bytes); give a .gguf "
            "checkpoint written by llama.cpp's converters, or a Hugging Face folder"
        )


def safetensors_files(folder: Path) -> list[Path] | None:
    """The safetensors files of ``folder`` (the index's, else ``model.safetensors``); None without either."""
    index = folder / SAFETENSORS_INDEX
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise ModelError(
                f"{index} is not a safetensors index ({type(err).__name__}: {err}); write the model again "
                "with save_pretrained"
            ) from None
        return [folder / name for name in names]
    single = folder / "model.safetensors"
    return [single] if single.exists() else None


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """The tensor shapes in the header of one safetensors file; a :class:`ModelError` if the file is cut
    short or is no safetensors file."""
    if not path.is_file():
        raise ModelError(
            f"{path} is missing (the shard index lists it); copy every file of the checkpoint into "
            f"{path.parent}"
        )
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else None
        raw = handle.read(length) if length is not None and 8 + length <= size else None
    try:
        header = json.loads(raw) if raw is not None else None
    except ValueError:
        header = None
    if not isinstance(header, dict):
        raise ModelError(
            f"{path} is not a readable safetensors file (its header is cut short or damaged, {size} bytes); "
            "the file is truncated or corrupt: copy or download it again"
        )
    tensors = {k: v for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}
    end = max((int(v.get("data_offsets", [0, 0])[1]) for v in tensors.values()), default=0)
    if size < 8 + length + end:
        raise ModelError(
            f"{path} is truncated ({size:,} of {8 + length + end:,} bytes); copy or download it again"
        )
    return {name: list(v.get("shape", [])) for name, v in tensors.items()}


def check_folder(folder: Path, config: Any | None = None) -> None:
    """Weights present, safetensors complete, and (given the config) their shapes those the config builds."""
    if not any((folder / name).exists() for name in WEIGHT_FILES):
        raise ModelError(
            f"{folder} has a config.json but no weights ({', '.join(WEIGHT_FILES)}); copy the weight files "
            "into it, or give the folder the model was saved to"
        )
    files = safetensors_files(folder)
    if files is None:
        return  # pytorch_model.bin: no header to read without unpickling
    shapes = {name: (path, shape) for path in files for name, shape in safetensors_shapes(path).items()}
    expected = _config_shapes(config) if config is not None else {}
    for name, (path, shape) in shapes.items():
        want = expected.get(name)
        if want is not None and list(want) != shape:
            raise ModelError(
                f"{path.name} in {folder}: {name} is {shape} in the weights but {list(want)} by config.json; "
                "the weights and the config are of different models: use the config.json saved with them"
            )


def _config_shapes(config: Any) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of the architecture ``config`` builds, on the meta device (no memory, no init)."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except Exception:  # an architecture transformers builds only from a checkpoint: no shape check
        return {}
    return {name: tuple(p.shape) for name, p in model.state_dict().items()}


def check_tokenizer_files(folder: Path) -> None:
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ModelError(
            f"{folder} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); copy the tokenizer files of "
            "the model it came from into it (tokenizer.save_pretrained(folder))"
        )
