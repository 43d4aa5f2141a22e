"""DDP and FSDP2 with two CPU processes (gloo) give the scores of one process on the same windows."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import build_tiny, launch_ddp
from ddp_worker import calibrate  # tests/importance is on sys.path (pytest rootdir-less import)

from prunelight.ranking import RankingConfig, rank

ROOT = Path(__file__).resolve().parents[2]


def _ddp(folder: Path, criterion: str, out: Path, strategy: str = "ddp") -> dict:
    launch_ddp(ROOT / "tests/importance/ddp_worker.py", str(folder), criterion, str(out), strategy)
    return torch.load(out, weights_only=False)


def test_two_processes_give_the_scores_of_one(tiny_llama, tmp_path):
    """Taylor covers both paths: gradient hooks (scores) and forward sums (block influence, input means)."""
    criterion = "taylor"
    two = _ddp(tiny_llama, criterion, tmp_path / "ddp.pt")
    one = calibrate(str(tiny_llama), criterion, 1, "auto")
    assert two["world"] == 2 and one["world"] == 1
    assert two["tokens"] == one["tokens"] == 6 * 32
    for kind in ("attention", "mlp"):
        for a, b in zip(two[kind], one[kind], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
    assert torch.equal(two["block"], one["block"])  # bit for bit: each pass's sum is exactly addable
    assert len(one["means"]) == len(one["attention"])  # the worker asks for the compensation means
    for layer, means in one["means"].items():
        for name in ("o", "down"):
            torch.testing.assert_close(two["means"][layer][name], means[name], rtol=1e-12, atol=1e-15)
    # gradient statistics: sums add up, minima and maxima are the extremes over both ranks
    for two_layer, one_layer in zip(two["gradients"], one["gradients"], strict=True):
        for kind in ("attention", "mlp"):
            a, b = two_layer[kind], one_layer[kind]
            assert a["elements"] == b["elements"] and a["passes"] == b["passes"]
            assert (a["min"], a["max"]) == (b["min"], b["max"])
            assert a["norm"] == b["norm"]  # the sums of squares add exactly, in any order
            for stat in ("mean", "std"):
                torch.testing.assert_close(a[stat], b[stat], rtol=1e-9, atol=1e-18)
    config = RankingConfig(ratio=0.4, temperature=1.0, tau=None)
    plan = rank(two["table"], config).plan
    assert not plan.is_empty()
    assert plan == rank(one["table"], config).plan


SHARDED_CASES = [
    ("llama", "taylor", "fsdp"),
    ("llama", "wanda", "fsdp"),
    ("gemma3", "taylor", "fsdp"),
    ("qwen2", "wanda", "fsdp"),
    ("llama", "taylor", "fsdp:0:0"),  # FSDP2's own scheduling: every layer resharded, no prefetch asked
    ("llama", "taylor", "fsdp:2:99"),  # every layer resident from forward to backward, two ahead
    ("llama", "wanda", "fsdp:2:99"),  # forward-only: resident layers stay gathered across windows
]


@pytest.mark.parametrize(("family", "criterion", "strategy"), SHARDED_CASES)
def test_fully_sharded_processes_give_the_scores_of_one(
    tiny_tokenizer, tmp_path, family, criterion, strategy
):
    """FSDP2: taylor reads each rank's whole gradient from the gathered parameter (the gradient never
    reaches the reduce-scatter); wanda reads the sharded weights whole when it scores. The whole copy
    gathered from the shards (what the apply stage prunes) computes the logits of the model itself. The
    strategy's prefetch and resident layers change when weights are gathered, never what is computed."""
    folder = build_tiny(family, tiny_tokenizer, tmp_path / family)
    two = _ddp(folder, criterion, tmp_path / "fsdp.pt", strategy)
    one = calibrate(str(folder), criterion, 1, "auto")
    assert two["sharded"] and not one["sharded"] and not two["whole_is_sharded"]
    torch.testing.assert_close(two["logits"], one["logits"], rtol=0, atol=0)
    assert two["world"] == 2 and two["tokens"] == one["tokens"]
    for kind in ("attention", "mlp"):
        for a, b in zip(two[kind], one[kind], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(two["block"], one["block"], rtol=1e-12, atol=1e-15)
    for layer, means in one["means"].items():
        for name in ("o", "down"):
            torch.testing.assert_close(two["means"][layer][name], means[name], rtol=1e-12, atol=1e-15)
    assert two["table"].layer_params == one["table"].layer_params  # whole sizes, not a shard's
    assert two["table"].total_params == one["table"].total_params
    if criterion == "taylor":
        for two_layer, one_layer in zip(two["gradients"], one["gradients"], strict=True):
            for kind in ("attention", "mlp"):
                assert two_layer[kind]["elements"] == one_layer[kind]["elements"]
                assert two_layer[kind]["max"] == one_layer[kind]["max"]
    config = RankingConfig(ratio=0.4, temperature=1.0, tau=None)
    plan = rank(two["table"], config).plan
    assert not plan.is_empty()
    assert plan == rank(one["table"], config).plan


@pytest.mark.parametrize("even", [False, True])
def test_batch_shards_cover_every_batch_once(even):
    """Every batch on exactly one rank; with ``even`` (FSDP2) the short ranks are padded to one length."""
    from prunelight.data.batches import PADDING, BatchShardSampler

    batches, world = list(range(7)), 3
    shards = [list(BatchShardSampler(batches, world, rank, even)) for rank in range(world)]
    real = sorted(k for shard in shards for k in shard if k != PADDING)
    assert real == batches
    lengths = {len(shard) for shard in shards}
    assert lengths == ({3} if even else {3, 2})
    assert sum(shard.count(PADDING) for shard in shards) == (2 if even else 0)


def test_fsdp2_over_one_process_leaves_the_model_whole(tiny_llama):
    """One shard would be the whole model: sharding it would only add FSDP2's copies to every pass (6-10%
    slower on one H200), so the strategy keeps it plain, and the scores are those of no strategy at all."""
    from prunelight.models.sharding import FullyShardedStrategy

    fsdp = calibrate(str(tiny_llama), "taylor", 1, FullyShardedStrategy())
    plain = calibrate(str(tiny_llama), "taylor", 1, "auto")
    assert not fsdp["sharded"] and fsdp["world"] == 1
    for kind in ("attention", "mlp", "block"):
        for a, b in zip(fsdp[kind], plain[kind], strict=True):
            assert torch.equal(a, b)
