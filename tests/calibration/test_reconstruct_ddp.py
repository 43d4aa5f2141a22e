"""lsq reconstruction under DDP and FSDP2 (two gloo processes, each with half the calibration windows) gives
the plan and the repaired weights of one process: the float64 input sums are all-reduced before every refit,
and before every layer's OBS scores when the criterion is ``obs``. Under FSDP2 each rank repairs a whole copy
gathered from the shards, and the padding batch that keeps the ranks in step is not part of the sums."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import launch_ddp
from reconstruct_ddp_worker import prune  # tests/calibration is on sys.path (pytest rootdir-less import)

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_two_processes_reconstruct_like_one(tiny_llama, tmp_path, strategy):
    """The obs scores and the lsq refit, each summed across ranks (a one-pass criterion's refit is the same
    code as the one after obs)."""
    criterion = "obs"
    out = tmp_path / "two.pt"
    worker = ROOT / "tests/calibration/reconstruct_ddp_worker.py"
    launch_ddp(worker, str(tiny_llama), str(tmp_path / "two"), str(out), criterion, strategy)
    two = torch.load(out, weights_only=False)
    one = prune(str(tiny_llama), str(tmp_path / "one"), 1, "auto", criterion)
    assert two["world"] == 2 and one["world"] == 1
    assert one["weights"].keys() == two["weights"].keys()
    for name, weight in one["weights"].items():
        assert two["weights"][name].shape == weight.shape, f"{name}: a different plan"
        torch.testing.assert_close(two["weights"][name], weight, rtol=1e-5, atol=1e-6)
    assert one["errors"]["down"]["after"] < one["errors"]["down"]["before"]
