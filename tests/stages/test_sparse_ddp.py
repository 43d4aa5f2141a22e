"""Sequential sparse pruning under DDP (two gloo processes) gives the weights of one process."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import launch_ddp
from sparse_ddp_worker import prune  # tests/stages is on sys.path (pytest rootdir-less import)

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("criterion", "pattern"), [("wanda", "unstructured"), ("sparsegpt", "nm")])
def test_two_processes_prune_like_one(tiny_llama, tmp_path, criterion, pattern):
    out = tmp_path / "ddp.pt"
    worker = ROOT / "tests/stages/sparse_ddp_worker.py"
    launch_ddp(worker, str(tiny_llama), criterion, pattern, str(tmp_path / "ddp"), str(out))
    two = torch.load(out, weights_only=False)
    one = prune(str(tiny_llama), criterion, pattern, str(tmp_path / "one"), 1, "auto")
    assert two["world"] == 2 and one["world"] == 1
    for name, weight in one["weights"].items():
        assert torch.equal(two["weights"][name] == 0, weight == 0), f"{name}: masks differ"
        torch.testing.assert_close(two["weights"][name], weight, rtol=1e-4, atol=1e-5)
