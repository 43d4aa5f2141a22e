"""Perplexity equals exp(mean token NLL) by hand and transformers' own loss; evaluate writes JSON and TB."""

import json
import math
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from prunelight.data import evaluation_windows
from prunelight.data.datamodule import PerplexityDataModule
from prunelight.errors import ConfigError
from prunelight.evaluate import Perplexity, PerplexityModule
from prunelight.models import load
from prunelight.trainer import PrunelightTrainer


def _hand_nll(logits: torch.Tensor, ids: torch.Tensor) -> tuple[float, int]:
    total, count = 0.0, 0
    for b in range(ids.shape[0]):
        for t in range(ids.shape[1] - 1):
            row = logits[b, t].double()
            total += (torch.logsumexp(row, 0) - row[ids[b, t + 1]]).item()
            count += 1
    return total, count


@pytest.mark.parametrize("slice_elements", [1, 3 * 2 * 17, 2**26])  # a position a slice, 3 (uneven), all
def test_metric_is_exp_mean_nll_by_hand(monkeypatch, slice_elements):
    monkeypatch.setattr("prunelight.models.logits.SLICE_ELEMENTS", slice_elements)
    torch.manual_seed(0)
    metric = Perplexity()
    total, count = 0.0, 0
    for _ in range(3):
        logits, ids = torch.randn(2, 9, 17) * 3, torch.randint(0, 17, (2, 9))
        metric.update(logits, ids)
        t, c = _hand_nll(logits, ids)
        total, count = total + t, count + c
    assert metric.summary()["tokens_scored"] == count == 3 * 2 * 8
    assert metric.summary()["windows"] == 6
    assert metric.compute().item() == pytest.approx(math.exp(total / count), rel=1e-6)


@pytest.mark.parametrize("slice_elements", [1, 2**26])
def test_metric_skips_ignored_labels(monkeypatch, slice_elements):
    monkeypatch.setattr("prunelight.models.logits.SLICE_ELEMENTS", slice_elements)
    logits, ids = torch.randn(1, 5, 7), torch.tensor([[1, 2, -100, 3, 4]])
    metric = Perplexity()
    metric.update(logits, ids)
    assert metric.summary()["tokens_scored"] == 3
    kept = [(t, ids[0, t + 1]) for t in range(4) if ids[0, t + 1] != -100]
    nll = sum(float(torch.logsumexp(logits[0, t].double(), 0) - logits[0, t, i].double()) for t, i in kept)
    assert metric.summary()["nll_mean"] == pytest.approx(nll / 3, rel=1e-6)


def test_padding_batches_add_nothing_and_every_batch_runs_once():
    """5 windows in batches of 2 over 2 ranks: rank 0 runs batches 0 and 2, rank 1 batch 1 and a padding
    batch (the first window, every label ignored), so the sums equal one process's and no window repeats."""
    from prunelight.data.batches import LabelledBlocks, evaluation_loader

    torch.manual_seed(0)
    ids = torch.randint(0, 17, (5, 9))
    logits = torch.randn(5, 9, 17)
    one, two = Perplexity(), Perplexity()
    for batch in evaluation_loader(LabelledBlocks(ids), 2, None):
        one.update(_logits_of(batch, ids, logits), batch["labels"])
    ranks = [SimpleNamespace(world_size=2, global_rank=rank) for rank in range(2)]  # what the loader reads
    shards = [list(evaluation_loader(LabelledBlocks(ids), 2, trainer)) for trainer in ranks]
    assert [len(shard) for shard in shards] == [2, 2]
    padding = shards[1][-1]
    assert (padding["labels"] == -100).all() and torch.equal(padding["input_ids"], ids[:1])
    for shard in shards:
        for batch in shard:
            two.update(_logits_of(batch, ids, logits), batch["labels"])
    assert one.summary() == two.summary()
    assert (two.summary()["windows"], two.summary()["tokens_scored"]) == (5, 5 * 8)


def _logits_of(batch: dict, ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """The logits a model would give each window of ``batch`` (looked up by the window's ids)."""
    rows = [next(i for i in range(len(ids)) if torch.equal(ids[i], row)) for row in batch["input_ids"]]
    return logits[rows]


def _tiny_module(tiny_llama):
    return PerplexityModule(path=str(tiny_llama), dtype="float32")


def test_module_matches_transformers_loss(tiny_llama, tmp_path):
    module = _tiny_module(tiny_llama)
    data = PerplexityDataModule(corpora=["wikitext2", "ptb"], seqlen=64, max_windows=5, batch_size=2)
    trainer = PrunelightTrainer(default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    report = trainer.evaluate(module, data)
    model = load(str(tiny_llama), dtype="float32")
    for corpus in ("wikitext2", "ptb"):
        windows = evaluation_windows(corpus, model.tokenizer, seqlen=64, max_windows=5)
        with torch.no_grad():
            losses = [model.model(w[None], labels=w[None]).loss.item() for w in windows.input_ids]
        got = report["corpora"][corpus]
        assert got["perplexity"] == pytest.approx(math.exp(sum(losses) / len(losses)), rel=1e-5)
        assert (got["windows"], got["seqlen"], got["tokens_scored"]) == (5, 64, 5 * 63)


def test_evaluate_writes_json_and_tensorboard(tiny_llama, tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger

    module = _tiny_module(tiny_llama)
    data = PerplexityDataModule(corpora=["ptb"], seqlen=32, max_windows=3)
    logger = TensorBoardLogger(save_dir=tmp_path, name="tb", version="")
    trainer = PrunelightTrainer(default_root_dir=tmp_path, logger=logger, enable_progress_bar=False)
    trainer.evaluate(module, data)
    saved = json.loads((tmp_path / "analysis" / "perplexity.json").read_text())
    assert saved["corpora"]["ptb"]["windows"] == 3 and saved["corpora"]["ptb"]["seqlen"] == 32
    assert saved["seconds"] > 0 and saved["tokens_per_second"] > 0 and saved["peak_rss_mb"] > 0
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert "test/ppl/ptb" in events.Tags()["scalars"]
    logged = events.Scalars("test/ppl/ptb")[-1].value
    assert logged == pytest.approx(saved["corpora"]["ptb"]["perplexity"], rel=1e-6)


def test_validate_reports_the_same_as_test(tiny_llama, tmp_path):
    module = _tiny_module(tiny_llama)
    data = PerplexityDataModule(corpora=["ptb"], seqlen=32, max_windows=2)
    trainer = L.Trainer(default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    trainer.validate(module, data, verbose=False)
    trainer.test(module, data, verbose=False)
    assert module.results["validate"]["ptb"]["perplexity"] == module.results["test"]["ptb"]["perplexity"]


def test_seqlen_longer_than_context_fails_before_writing(tiny_llama, tmp_path):
    module = _tiny_module(tiny_llama)  # max_position_embeddings = 512
    data = PerplexityDataModule(corpora=["ptb"], seqlen=1024, max_windows=1)
    run_dir = tmp_path / "run"
    trainer = PrunelightTrainer(default_root_dir=run_dir, enable_progress_bar=False)
    with pytest.raises(ConfigError, match="data.seqlen: 1024 tokens is longer than the context"):
        trainer.evaluate(module, data)
    assert not run_dir.exists()


def test_from_model_evaluates_an_in_memory_model(tiny_llama, tmp_path):
    loaded = load(str(tiny_llama), dtype="float32")
    module = PerplexityModule.from_model(loaded.model, loaded.tokenizer, name="in-memory")
    data = PerplexityDataModule(corpora=["ptb"], seqlen=32, max_windows=2)
    trainer = PrunelightTrainer(default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    assert trainer.evaluate(module, data)["corpora"]["ptb"]["windows"] == 2


@pytest.mark.slow
def test_real_smollm2_perplexity_equals_transformers_loss(smollm2, tmp_path):
    module = PerplexityModule(path=str(smollm2), dtype="float32")
    data = PerplexityDataModule(corpora=["wikitext2"], seqlen=512, max_windows=4)
    trainer = PrunelightTrainer(default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    got = trainer.evaluate(module, data)["corpora"]["wikitext2"]
    model = load(str(smollm2), dtype="float32")
    windows = evaluation_windows("wikitext2", model.tokenizer, seqlen=512, max_windows=4)
    with torch.no_grad():
        losses = [model.model(w[None], labels=w[None]).loss.item() for w in windows.input_ids]
    expected = math.exp(sum(losses) / len(losses))
    assert got["perplexity"] == pytest.approx(expected, rel=1e-3)
    assert 5 < got["perplexity"] < 60  # a real language model on real English, not noise
