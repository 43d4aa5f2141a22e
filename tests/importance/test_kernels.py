"""The fused Triton calibration kernels against float64 arithmetic and against the torch path.

On a machine without CUDA the kernels run through Triton's interpreter (``TRITON_INTERPRET=1``, set in
conftest), so the same code that runs on a GPU is checked here, on CPU tensors.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from prunelight.calibration import CalibrationDataModule, CalibrationModule
from prunelight.callbacks.importance import ImportanceCallback
from prunelight.importance import kernels
from prunelight.importance.kernels import taylor_group_scores
from prunelight.loops import calibrate
from prunelight.models.projections import ROW_PROJECTIONS
from prunelight.trainer import PrunelightTrainer

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # compiled on a GPU, interpreted on the CPU
CASES = [("q", (64, 48), 4), ("gate", (70, 33), 70), ("o", (40, 64), 4), ("down", (48, 300), 300)]


def _exact(w: torch.Tensor, g: torch.Tensor, projection: str, groups: int, second: bool) -> torch.Tensor:
    p = w.double() * g.double()
    elements = p.abs() + (0.5 * p.square() if second else 0)
    if projection in ROW_PROJECTIONS:
        return elements.reshape(groups, -1).sum(dim=1)
    return elements.reshape(elements.shape[0], groups, -1).sum(dim=(0, 2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("projection", "shape", "groups"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("second", [False, True], ids=["taylor", "taylor2"])
def test_taylor_kernel_matches_float64(dtype, projection, shape, groups, second):
    """Group scores and gradient moments from one pass, against exact arithmetic on the same values
    (shapes not multiples of the tile, so the masked edges count)."""
    g_ = torch.Generator().manual_seed(0)
    w = torch.randn(shape, generator=g_).to(DEVICE, dtype)
    g = (torch.randn(shape, generator=g_) * 1e-3).to(DEVICE, dtype)
    score, parts = kernels.taylor_scores_triton(w, g, projection, groups, second, moments=True)
    parts = parts.double()
    moments = torch.stack([parts[:, 0].sum(), parts[:, 1].sum(), parts[:, 2].min(), parts[:, 3].max()])
    assert score.dtype == torch.float64 and score.shape == (groups,)
    torch.testing.assert_close(score, _exact(w, g, projection, groups, second), rtol=2e-6, atol=0)
    x = g.double()
    expected = torch.stack([x.sum(), x.square().sum(), x.min(), x.max()])
    torch.testing.assert_close(moments, expected, rtol=2e-6, atol=1e-12)
    # the torch path agrees to the rounding of its product in the weights' dtype
    torch_score = taylor_group_scores(w, g, projection, groups, second)
    torch.testing.assert_close(torch_score, score, rtol=2e-3 if dtype == torch.bfloat16 else 2e-6, atol=0)
    torch.testing.assert_close(kernels.gradient_moments(g), expected, rtol=1e-2, atol=1e-9)


def test_taylor_kernel_reads_strided_weights():
    """A weight that is a column slice of a wider tensor (row stride > columns) scores like a copy."""
    wide = torch.randn(32, 80, device=DEVICE)
    w, g = wide[:, :48], torch.randn(32, 48, device=DEVICE)
    score, moments = kernels.taylor_scores_triton(w, g, "down", 48, False, moments=False)
    assert moments is None
    torch.testing.assert_close(score, _exact(w, g, "down", 48, False), rtol=2e-6, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_influence_kernel_matches_cosine(dtype):
    """Sum of 1 - cos per token; the output may be a non-contiguous view (transposed batch and tokens)."""
    g_ = torch.Generator().manual_seed(1)
    h_in = torch.randn(3, 37, 300, generator=g_).to(DEVICE, dtype)
    noise = torch.randn(3, 37, 300, generator=g_).to(DEVICE)
    h_out = (h_in.float() + 0.4 * noise).to(dtype).transpose(0, 1)
    h_in = h_in.transpose(0, 1)
    expected = (1 - F.cosine_similarity(h_in.double(), h_out.double(), dim=-1)).sum()
    got = kernels.influence_sum_triton(h_in, h_out)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=0)
    torch.testing.assert_close(kernels.influence_sum(h_in, h_out), expected, rtol=1e-5, atol=0)


def test_calibration_with_kernels_equals_the_torch_path(tiny_llama, monkeypatch):
    """A whole Taylor calibration through the hooks, kernels forced on (interpreted here, compiled on a
    GPU): the same scores, block influence and gradient statistics as the torch path, and the same plan."""
    from prunelight.ranking import RankingConfig, rank

    def run():
        module = CalibrationModule(path=str(tiny_llama), dtype="float32")
        data = CalibrationDataModule(
            [{"name": "wikitext2", "split": "validation"}], nsamples=4, seqlen=32, batch_size=2
        )
        trainer = PrunelightTrainer(
            accelerator="gpu" if DEVICE == "cuda" else "cpu",
            devices=1,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        return calibrate(trainer, module, data, ImportanceCallback("taylor2"))

    monkeypatch.setenv("PRUNELIGHT_KERNELS", "torch")
    plain = run()
    monkeypatch.delenv("PRUNELIGHT_KERNELS")
    calls = []
    monkeypatch.setattr(kernels, "kernels_available", lambda t: calls.append(1) or True)
    fused = run()
    assert len(calls) > 0
    for a, b in zip(
        plain.table.attention + plain.table.mlp, fused.table.attention + fused.table.mlp, strict=True
    ):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-12)
    torch.testing.assert_close(fused.table.block_importance, plain.table.block_importance, rtol=1e-5, atol=0)
    for one, other in zip(plain.gradients, fused.gradients, strict=True):
        for kind in ("attention", "mlp"):
            for key in ("mean", "std", "norm", "min", "max"):
                assert one[kind][key] == pytest.approx(other[kind][key], rel=1e-4, abs=1e-12), (kind, key)
    config = RankingConfig(ratio=0.3, temperature=1.0, tau=None)
    assert rank(plain.table, config).plan == rank(fused.table, config).plan
