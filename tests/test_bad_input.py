"""Every bad input is one line on stderr (``prunelight: error: ...``, exit 2), found before the expensive work
(no weight loaded, so no loading bar either), and leaves no results folder (issue 20, items 3 and 4).

The bad files are written by the tests: a tiny model and its broken copies. ``CASES`` is also what
``scripts/bad_input_probe.py`` runs to write the table of docs/errors.md.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import SHARED_DATA, build_tiny

from prunelight.errors import ModelError
from prunelight.main import main
from prunelight.tools import TOOLS

WIKI_VALID = str(SHARED_DATA / "wikitext2" / "wiki.valid.raw")


@dataclass(frozen=True)
class Inputs:
    """The tiny model, its broken copies and other bad files, all under ``folder``."""

    folder: Path

    def __getattr__(self, name: str) -> str:
        return str(self.folder / name)


def write_inputs(folder: Path, tokenizer) -> Inputs:
    """A tiny llama (2 layers, 512-token context) and every broken file the cases below need."""
    tiny = build_tiny("llama", tokenizer, folder / "tiny")
    for name, drop in (("no_weights", "model.safetensors"), ("no_tokenizer", "tokenizer")):
        shutil.copytree(tiny, folder / name)
        for path in (folder / name).glob(f"{drop}*"):
            path.unlink()
    shutil.copytree(tiny, folder / "truncated")
    weights = folder / "truncated" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    shutil.copytree(tiny, folder / "other_shapes")
    config = json.loads((tiny / "config.json").read_text())
    (folder / "other_shapes" / "config.json").write_text(json.dumps({**config, "intermediate_size": 48}))
    shutil.copytree(tiny, folder / "other_vocab")
    (folder / "other_vocab" / "config.json").write_text(json.dumps({**config, "vocab_size": 520}))
    shutil.copytree(tiny, folder / "bad_config")
    (folder / "bad_config" / "config.json").write_text('{"model_type": "llama", ')
    (folder / "not.gguf").write_bytes(b"this is no GGUF file\n")
    (folder / "latin1.txt").write_bytes("Caf\xe9 cr\xe8me, na\xefve r\xe9sum\xe9.\n".encode("latin-1") * 50)
    (folder / "cut.jsonl.gz").write_bytes(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03")
    (folder / "data_number.yaml").write_text("data: 5\n")
    (folder / "ranking_number.yaml").write_text("ranking: 0.3\n")
    (folder / "a_file").write_text("not a folder\n")
    return Inputs(folder)


@dataclass(frozen=True)
class Case:
    id: str
    what: str
    """The bad input, in words (the first column of docs/errors.md)."""
    args: Callable[[Inputs], list[str]]
    expected: str
    """A part of the one line that must be printed."""


def _evaluate(i: Inputs, *extra: str) -> list[str]:
    return ["evaluate", "--model.path", i.tiny, "--data.corpora", f"[{WIKI_VALID}]", "--data.seqlen", "32",
            "--data.max_windows", "2", *extra]  # fmt: skip


def _prune(i: Inputs, *extra: str) -> list[str]:
    return ["prune", "--model.path", i.tiny, "--data.corpora", "[wikitext2]", "--data.split", "validation",
            "--data.nsamples", "4", "--data.seqlen", "32", "--evaluation.corpora", "[ptb]",
            "--evaluation.seqlen", "32", "--evaluation.max_windows", "2", *extra]  # fmt: skip


def _sparse(i: Inputs, section: str, *extra: str) -> list[str]:
    return _prune(i, "--importance.criterion", "wanda", "--sparsity", section, *extra)


def _kd(i: Inputs, *extra: str) -> list[str]:
    return ["finetune", "--model.path", i.tiny, "--finetune_data.block_size", "64",
            "--evaluation.seqlen", "64", *extra]  # fmt: skip


FSDP2_PREFETCH_NEGATIVE = (
    "{class_path: prunelight.models.sharding.FullyShardedStrategy, init_args: {prefetch: -1}}"
)

CASES = [
    # model files
    Case("no-weights", "a model folder with a config but no weights",
         lambda i: _evaluate(i, "--model.path", i.no_weights), "has a config.json but no weights"),
    Case("truncated-safetensors", "a truncated model.safetensors",
         lambda i: _evaluate(i, "--model.path", i.truncated), "model.safetensors is truncated"),
    Case("not-gguf", "a .gguf file that is not GGUF",
         lambda i: _evaluate(i, "--model.path", getattr(i, "not.gguf")), "is not a GGUF file"),
    Case("no-tokenizer", "a model folder without a tokenizer",
         lambda i: _evaluate(i, "--model.path", i.no_tokenizer), "has no tokenizer"),
    Case("data-tokenizer", "--data.tokenizer naming a folder without a tokenizer",
         lambda i: _evaluate(i, "--data.tokenizer", i.no_tokenizer), "no_tokenizer has no tokenizer"),
    Case("shape-mismatch", "weights whose shapes disagree with config.json",
         lambda i: _evaluate(i, "--model.path", i.other_shapes), "is [32, 64] in the weights but [32, 48]"),
    Case("bad-config-json", "a config.json that is not JSON",
         lambda i: _evaluate(i, "--model.path", i.bad_config), "could not read the config"),
    # corpora
    Case("not-utf8", "a local corpus file that is not UTF-8",
         lambda i: _evaluate(i, "--data.corpora", f"[{i.folder / 'latin1.txt'}]"), "is not UTF-8 text"),
    Case("cut-gzip", "a local .jsonl.gz corpus cut short",
         lambda i: _evaluate(i, "--data.corpora", f"[{i.folder / 'cut.jsonl.gz'}]"), "not a complete gzip"),
    Case("negative-weight", "a mixture with a negative weight",
         lambda i: _prune(i, "--data.corpora", "[{name: wikitext2, weight: 0.5}, {name: ptb, weight: -1}]"),
         "corpus 'ptb': weight must be > 0 and finite, got -1.0"),
    Case("zero-weights", "a mixture whose weights sum to zero",
         lambda i: _prune(i, "--data.corpora", "[{name: wikitext2, weight: 0}, {name: ptb, weight: 0}]"),
         "weight must be > 0 and finite, got 0.0"),
    Case("infinite-weight", "a mixture with an infinite weight",
         lambda i: _prune(i, "--data.corpora", "[{name: wikitext2, weight: .inf}]"), "finite, got inf"),
    Case("documents-order", "a part of a split whose start is not below its stop",
         lambda i: _prune(i, "--data.corpora", "[{name: wikitext2, documents: [0.5, 0.2]}]"),
         "documents must be [start, stop] with 0 <= start < stop <= 1 (fractions of the split), got [0.5"),
    # the parser
    Case("section-number", "a YAML section given a number instead of a mapping (data: 5)",
         lambda i: _evaluate(i, "--config", str(i.folder / "data_number.yaml")),
         "data: expected a mapping of settings (a YAML section), got 5"),
    Case("settings-number", "a settings section given a number (ranking: 0.3)",
         lambda i: _prune(i, "--config", str(i.folder / "ranking_number.yaml")),
         "ranking: expected a mapping of settings (a YAML section), got 0.3"),
    Case("flow-mapping", "a flow mapping without spaces ({pattern:nm})",
         lambda i: _prune(i, "--sparsity", "{pattern:nm}"), "YAML puts a space after each colon"),
    Case("dtype-enum", "an invalid enum value: --model.dtype float8",
         lambda i: _evaluate(i, "--model.dtype", "float8"),
         "model.dtype: 'float8' is not one of auto, float32, bfloat16, float16"),
    Case("pattern-enum", "an invalid enum value: --sparsity.pattern diagonal",
         lambda i: _prune(i, "--sparsity.pattern", "diagonal"),
         "sparsity.pattern: 'diagonal' is not one of unstructured, nm, block, hybrid"),
    Case("wrong-type", "a number that is not one: --ranking.ratio abc",
         lambda i: _prune(i, "--ranking.ratio", "abc"), "ranking.ratio: expected float, got 'abc'"),
    Case("unknown-key", "an unknown key: --ranking.tua 1",
         lambda i: _prune(i, "--ranking.tua", "1"), "unrecognized arguments: --ranking.tua 1"),
    Case("missing-config", "a --config file that does not exist",
         lambda i: _evaluate(i, "--config", str(i.folder / "missing.yaml")), "config: File does not exist"),
    # trainer settings
    Case("no-gpu", "--trainer.accelerator gpu on a machine without one",
         lambda i: _evaluate(i, "--trainer.accelerator", "gpu"), "trainer.accelerator: "),
    Case("devices", "--trainer.devices 0",
         lambda i: _evaluate(i, "--trainer.devices", "0"), "trainer.devices: "),
    Case("strategy", "--trainer.strategy with an unknown name",
         lambda i: _evaluate(i, "--trainer.strategy", "dpp"), "trainer.strategy: "),
    # settings against the model's config
    Case("protected-layers", "--ranking.protected_layers '[99]' on a 2-layer model",
         lambda i: _prune(i, "--ranking.protected_layers", "[99]"),
         "ranking.protected_layers: 99 is not a layer of"),
    Case("first-layers", "--ranking.first_layers 5 on a 2-layer model",
         lambda i: _prune(i, "--ranking.first_layers", "5", "--ranking.first_layers_max_rate", "0.1"),
         "ranking.first_layers: 5, but"),
    Case("remove-layers", "--ranking.remove_layers 2 on a 2-layer model",
         lambda i: _prune(i, "--importance.criterion", "block_influence", "--ranking.remove_layers", "2"),
         "ranking.remove_layers: 2, but only 1 of the 2 layers"),
    Case("calibration-seqlen", "--data.seqlen longer than the model's context (prune)",
         lambda i: _prune(i, "--data.seqlen", "1024"), "data.seqlen: 1024 tokens is longer than the context"),
    Case("evaluation-seqlen", "--evaluation.seqlen longer than the model's context",
         lambda i: _prune(i, "--evaluation.seqlen", "1024"), "evaluation.seqlen: 1024 tokens is longer"),
    Case("evaluate-seqlen", "--data.seqlen longer than the model's context (evaluate)",
         lambda i: _evaluate(i, "--data.seqlen", "1024"), "data.seqlen: 1024 tokens is longer"),
    Case("finetune-block-size", "--finetune_data.block_size longer than the model's context (finetune)",
         lambda i: ["finetune", "--model.path", i.tiny, "--finetune_data.block_size", "1024"],
         "data.block_size: 1024 tokens is longer"),
    Case("finetune-model-lora", "--model.lora.rank on finetune (fit's place of the LoRA settings)",
         lambda i: ["finetune", "--model.path", i.tiny, "--model.lora.rank", "4"],
         "finetune and pipeline take the LoRA settings as the top-level lora section (lora.rank)"),
    Case("kd-no-teacher", "distillation from a model whose run names no dense model",
         lambda i: _kd(i, "--recovery.objective", "kd"),
         "has no analysis/prune.json beside it to name it; set recovery.distillation.teacher"),
    Case("kd-teacher-vocab", "a distillation teacher with another vocabulary",
         lambda i: _kd(i, "--recovery.objective", "kd", "--recovery.distillation.teacher", i.other_vocab),
         "has a vocabulary of 520 tokens, the student 512"),
    Case("kd-top-k", "a distillation top_k larger than the vocabulary",
         lambda i: _kd(i, "--recovery.objective", "lm+kd", "--recovery.distillation.teacher", i.tiny,
                        "--recovery.distillation.top_k", "1000"),
         "recovery.distillation.top_k 1000 is larger than the vocabulary (512 tokens)"),
    Case("split-typo", "a misspelled --data.split",
         lambda i: _prune(i, "--data.split", "vaildation"), "data.split: unknown split 'vaildation'"),
    Case("evaluation-split-typo", "a misspelled --evaluation.split",
         lambda i: _prune(i, "--evaluation.split", "tset"), "evaluation.split: unknown split 'tset'"),
    Case("split-of-corpus", "a split the corpus does not have (wikitext_zh test)",
         lambda i: _prune(i, "--evaluation.corpora", "[wikitext_zh]"),
         "evaluation.split: corpus 'wikitext_zh' has no 'test' split (it has train)"),
    Case("missing-evaluation-file", "an evaluation corpus file that does not exist (before calibration)",
         lambda i: _prune(i, "--evaluation.corpora", f"[{i.folder / 'missing.txt'}]"),
         "evaluation.corpora[0]: corpus file"),
    Case("no-local-copy", "a named corpus with the hub unreachable and no copy under the data root",
         lambda i: _prune(i, "--data.data_root", str(i.folder / "empty_root")),
         "data.corpora[0]: corpus 'wikitext2' split 'validation' is not available: the hub is not reachable"),
    Case("nm-shape", "N:M with an M that does not divide the projections",
         lambda i: _sparse(i, "{pattern: nm, n: 2, m: 5}"), "sparsity.m: N:M groups run along the input"),
    Case("tile-shape", "tiles that do not divide the projections",
         lambda i: _sparse(i, "{pattern: block, sparsity: 0.5, block: [24, 24]}"),
         "sparsity.block: 24x24 tiles do not divide layer 0 q_proj (32x32)"),
    Case("owl-infeasible", "OWL at sparsity 0.95",
         lambda i: _sparse(i, "{pattern: unstructured, sparsity: 0.95, allocation: owl}"),
         "sparsity 0.95 with allocation owl and owl_lambda 0.08 gives layers up to 1.03"),
    Case("sparsity-unreachable", "a sparsity the per-layer limits cannot reach",
         lambda i: _sparse(i, "{pattern: unstructured, sparsity: 0.5}", "--ranking.max_rate", "0.2"),
         "sparsity 0.5 cannot be reached"),
    Case("fsdp2-prefetch", "an FSDP2 strategy asked to prefetch a negative number of layers",
         lambda i: _prune(i, "--trainer.strategy", FSDP2_PREFETCH_NEGATIVE),
         "FullyShardedStrategy prefetch must be a whole number >= 0, got -1"),
    Case("search-generations", "an allocation search with zero generations",
         lambda i: _prune(i, "--ranking.allocation", "search", "--search.generations", "0"),
         "search.generations must be at least 1, got 0"),
    Case("search-ladder", "an allocation search whose ladder cannot reach the target (before calibrating)",
         lambda i: _prune(i, "--ranking.allocation", "search", "--search.levels", "2",
                          "--ranking.kinds", "[mlp]", "--ranking.ratio", "0.6",
                          "--search.stage_windows", "[1, 2]",
                          "--search.holdout_windows", "1"),
         "search.levels 2 lets a layer lose at most 50% of its mlp groups"),
    Case("ratio-unreachable", "a structured target the per-layer limits cannot reach (before calibrating)",
         lambda i: _prune(i, "--ranking.ratio", "0.9", "--ranking.max_rate", "0.5"),
         "but the constraints let at most"),
    Case("sparse-ratio", "a ranking.ratio that a sparse run would ignore",
         lambda i: _sparse(i, "{pattern: unstructured, sparsity: 0.5}", "--ranking.ratio", "0.3"),
         "ranking.ratio=0.3 is not used by a sparse run"),
    # reconstruction
    Case("reconstruction-method", "an unknown reconstruction method",
         lambda i: _prune(i, "--reconstruction.method", "ols"),
         "reconstruction.method: 'ols' is not one of none, lsq"),
    Case("reconstruction-damping", "a negative reconstruction damping",
         lambda i: _prune(i, "--reconstruction.method", "lsq", "--reconstruction.damping", "-1"),
         "reconstruction.damping must be >= 0, got -1"),
    Case("obs-batch-fraction", "an obs batch fraction above 1",
         lambda i: _prune(i, "--importance.criterion", "obs", "--reconstruction.obs_batch_fraction", "64"),
         "reconstruction.obs_batch_fraction must be in [0, 1] (0: one group per greedy step), got 64"),
    Case("reconstruction-sparse", "reconstruction with a sparsity section",
         lambda i: _sparse(i, "{pattern: unstructured, sparsity: 0.5}", "--reconstruction.method", "lsq"),
         "reconstruction (method=lsq, layers=none) repairs structured pruning"),
    # folders
    Case("root-under-file", "a results root that sits under a file",
         lambda i: _evaluate(i, "--results_root", str(i.folder / "a_file" / "results")),
         "is a file, not a folder; choose another results_root"),
    Case("run-dir-under-file", "a run folder that sits under a file",
         lambda i: _evaluate(i, "--run_dir", str(i.folder / "a_file" / "run")), "is a file, not a folder"),
    Case("compare-output-file", "compare --output naming a file",
         lambda i: ["compare", i.tiny, i.no_weights, "--output", str(i.folder / "a_file")],
         "output: "),
]  # fmt: skip


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_tokenizer) -> Inputs:
    return write_inputs(tmp_path_factory.mktemp("bad-inputs"), tiny_tokenizer)


def with_results_root(args: list[str], root: Path) -> list[str]:
    """``args`` writing under ``root`` (first, so that a case's own results_root wins); not for the tools."""
    return args if args[0] in TOOLS else [args[0], "--results_root", str(root), *args[1:]]


def run_case(args: list[str], capsys) -> tuple[int, list[str]]:
    with pytest.raises(SystemExit) as exit_:
        main(args)
    return exit_.value.code, capsys.readouterr().err.splitlines()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_is_one_line_before_the_work_and_leaves_no_folder(case, inputs, tmp_path, capsys):
    if case.id == "no-gpu" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    results = tmp_path / "results"
    code, err = run_case(with_results_root(case.args(inputs), results), capsys)
    assert code == 2
    assert len(err) == 1, err  # one line: no traceback, no parser dump, no loading bar (nothing was loaded)
    assert err[0].startswith("prunelight: error: ") and case.expected in err[0], err[0]
    assert not results.exists()
    assert (inputs.folder / "a_file").is_file()


def test_a_read_only_results_root_is_one_line(inputs, tmp_path, capsys, monkeypatch):
    root = tmp_path / "read-only"
    root.mkdir()
    root.chmod(0o555)
    if os.access(root, os.W_OK):  # root ignores the mode bits; it cannot write a read-only mount either
        access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: Path(p) != root and access(p, mode, **kw))
    try:
        code, err = run_case(with_results_root(_evaluate(inputs), root / "results"), capsys)
    finally:
        root.chmod(0o755)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("prunelight: error: results_root (or run_dir): ") and "not writable" in err[0]
    assert list(root.iterdir()) == []


@pytest.mark.parametrize(
    ("broken", "message"),
    [("no_weights", "has a config.json but no weights"), ("truncated", "model.safetensors is truncated")],
)
def test_load_pruned_on_missing_or_truncated_weights_is_one_line(inputs, broken, message):
    from prunelight import load_pruned

    with pytest.raises(ModelError) as error:
        load_pruned(getattr(inputs, broken))
    assert message in str(error.value) and "\n" not in str(error.value)
