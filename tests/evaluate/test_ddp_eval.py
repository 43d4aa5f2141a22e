"""Perplexity under several processes (DDP, FSDP2) scores every window exactly once: the numbers of one.

The window counts are chosen so that the world size does not divide them; a sampler that evens out the
ranks by repeating windows (Lightning's ``DistributedSampler``) scores one window twice and fails here.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import launch_ddp
from eval_worker import evaluate  # tests/evaluate is on sys.path (pytest rootdir-less import)

WORKER = Path(__file__).resolve().parent / "eval_worker.py"


@pytest.mark.parametrize(("strategy", "world", "windows"), [("ddp", 2, 3), ("fsdp2", 3, 2)])
def test_several_processes_give_the_perplexity_of_one(tiny_llama, tmp_path, strategy, world, windows):
    """Each batch is the one a single process runs, on one rank only; a rank short of batches runs a
    padding batch whose labels are all ignored. Per-batch NLL sums are then the same float32 numbers as
    on one process, and their float64 sum is exact in any order: the perplexity is bitwise that of one."""
    out = tmp_path / "measured"
    launch_ddp(WORKER, str(tiny_llama), strategy, str(world), str(windows), str(tmp_path / "run"), str(out),
               world=world)  # fmt: skip
    ranks = [torch.load(f"{out}.{rank}", weights_only=False) for rank in range(world)]
    one = evaluate(str(tiny_llama), "auto", 1, windows, str(tmp_path / "one"))["corpus"]
    assert (one["windows"], one["tokens_scored"]) == (windows, windows * 31)
    for measured in ranks:
        got = measured["corpus"]
        assert measured["world"] == world
        assert (got["windows"], got["tokens_scored"]) == (one["windows"], one["tokens_scored"])
        assert got["nll_mean"] == one["nll_mean"] and got["perplexity"] == one["perplexity"]
    # ranks stay in step: every rank ran ceil(windows / world) batches, padding included
    assert [m["batches"] for m in ranks] == [math.ceil(windows / world)] * world


def test_zero_shot_under_ddp_scores_each_example_once(tiny_llama, tmp_path):
    """lm-eval runs on rank 0 alone (given a model object, it takes itself for one process: no split, no
    gather), so each example is scored once, as by one process; the other ranks measure no zero-shot."""
    out, cache = tmp_path / "measured", str(tmp_path / "lm_eval_cache")
    launch_ddp(WORKER, str(tiny_llama), "ddp", "2", "3", str(tmp_path / "run"), str(out), cache)
    ranks = [torch.load(f"{out}.{rank}", weights_only=False) for rank in range(2)]
    one = evaluate(str(tiny_llama), "auto", 1, 3, str(tmp_path / "one"), cache)["zero_shot"]
    got = ranks[0]["zero_shot"]
    assert ranks[1]["zero_shot"] is None
    assert got["tasks"]["piqa"]["examples"] == one["tasks"]["piqa"]["examples"] == 6
    assert sorted(s["doc_id"] for s in got["samples"]["piqa"]) == list(range(6))
    assert got["samples"]["piqa"] == one["samples"]["piqa"]
    assert got["tasks"]["piqa"]["acc"] == one["tasks"]["piqa"]["acc"]
