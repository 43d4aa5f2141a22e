"""The fine-tuning validation loss (what the overfitting monitor and early stopping read) under two DDP
processes equals one process's, on validation sets that two ranks cannot split evenly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import launch_ddp
from val_worker import fit  # tests/finetune is on sys.path (pytest rootdir-less import)

WORKER = Path(__file__).resolve().parent / "val_worker.py"


@pytest.mark.parametrize("task", ["lm", "qa"])
def test_two_processes_validate_like_one(tiny_llama, tmp_path, task):
    """5 validation items in batches of 2: rank 0 runs batches 0 and 2, rank 1 batch 1 and a padding batch.
    A sampler that repeats an item to even out the ranks scores it twice and fails the token count."""
    out = tmp_path / "measured"
    launch_ddp(WORKER, str(tiny_llama), task, "2", str(tmp_path / "run"), str(out))
    ranks = [torch.load(f"{out}.{rank}", weights_only=False) for rank in range(2)]
    one = fit(str(tiny_llama), task, 1, str(tmp_path / "one"))
    (expected,) = one["summaries"]
    assert expected["windows"] == 5 and one["batches"] == 3
    for measured in ranks:
        assert measured["world"] == 2 and measured["batches"] == 2  # in step: one padding batch on rank 1
        (got,) = measured["summaries"]
        assert (got["windows"], got["tokens_scored"]) == (expected["windows"], expected["tokens_scored"])
        assert got["nll_mean"] == expected["nll_mean"]
        assert measured["val_loss"] == one["val_loss"]
        assert [h["val_loss"] for h in measured["history"]] == [h["val_loss"] for h in one["history"]]
