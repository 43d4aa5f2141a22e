"""The whole structured path on the real SmolLM2-135M: scores, plan, removal equals masking, reload."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import prunelight
from prunelight.apply import apply_plan
from prunelight.calibration import CalibrationDataModule, CalibrationModule
from prunelight.callbacks.importance import ImportanceCallback
from prunelight.loops import calibrate
from prunelight.ranking import RankingConfig, rank
from prunelight.trainer import PrunelightTrainer


@pytest.mark.slow
def test_smollm2_pruned_equals_masked_dense_and_reloads(smollm2, tmp_path):
    module = CalibrationModule(path=str(smollm2), dtype="float32")
    data = CalibrationDataModule([{"name": "wikitext2", "split": "validation"}], nsamples=4, seqlen=64)
    trainer = PrunelightTrainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    calibrated = calibrate(trainer, module, data, ImportanceCallback("wanda"))
    plan = rank(calibrated.table, RankingConfig(ratio=0.2, temperature=1.0, tau=None, max_rate=0.8)).plan
    dense = module.model
    masked = copy.deepcopy(dense)
    for layer_plan, layer in zip(plan.layers, masked.model.layers, strict=True):
        attn, mlp = layer.self_attn, layer.mlp
        width = attn.o_proj.in_features // masked.config.num_key_value_heads
        with torch.no_grad():
            for g in layer_plan.attention_groups:
                attn.o_proj.weight[:, g * width : (g + 1) * width] = 0
            mlp.down_proj.weight[:, layer_plan.mlp_channels] = 0
    pruned = apply_plan(copy.deepcopy(dense), plan)
    ids = data.windows.input_ids[:2]
    with torch.no_grad():
        expected = masked(input_ids=ids).logits
        got = pruned(input_ids=ids).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in dense.parameters())

    prunelight.save_pruned(pruned, module.tokenizer, tmp_path / "pruned")
    reloaded = prunelight.load_pruned(tmp_path / "pruned")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, got, atol=0, rtol=0)


@pytest.mark.slow
def test_smollm2_two_four_wanda_beats_magnitude_and_reloads_exactly(smollm2, tmp_path):
    """2:4 on the real model: the layout holds on every projection, calibration-aware Wanda keeps more of
    the model than magnitude (Sun et al. 2024, Table 2), and the saved checkpoint gives the same logits."""
    from prunelight.stages.settings import EvaluationSettings, ImportanceSettings, SparsitySettings

    ppl = {}
    for criterion in ("magnitude", "wanda"):
        module = CalibrationModule(path=str(smollm2), dtype="float32")
        data = CalibrationDataModule(
            [{"name": "wikitext2", "split": "validation"}], nsamples=8, seqlen=256, batch_size=4
        )
        trainer = PrunelightTrainer(
            accelerator="cpu",
            logger=False,
            enable_progress_bar=False,
            default_root_dir=str(tmp_path / criterion),
        )
        report = trainer.prune(
            module,
            data,
            importance=ImportanceSettings(criterion),
            evaluation=EvaluationSettings(seqlen=512, max_windows=4, dense=criterion == "magnitude"),
            sparsity=SparsitySettings(pattern="nm", n=2, m=4),
        )
        # measured on the weights: the checkpoint's own exact zeros (a few per million) count too
        assert 0.5 <= report["sparsity_reached"] < 0.5 + 1e-4
        ppl[criterion] = report["perplexity"]["pruned"]["wikitext2"]
        for layer in module.model.model.layers:
            for linear in (layer.self_attn.q_proj, layer.mlp.down_proj):
                w = linear.weight
                assert ((w != 0).reshape(w.shape[0], -1, 4).sum(dim=2) <= 2).all()
    dense = json.loads((tmp_path / "magnitude/analysis/prune.json").read_text())["perplexity"]["dense"]
    assert dense["wikitext2"] < ppl["wanda"] < ppl["magnitude"]

    reloaded = prunelight.load_pruned(tmp_path / "wanda" / "pruned_model")
    ids = data.windows.input_ids[:2]
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded(input_ids=ids).logits, module.model(input_ids=ids).logits, atol=0, rtol=0
        )


@pytest.mark.slow
def test_smollm2_zero_shot_is_well_above_chance_and_lora_lowers_its_loss(smollm2, tmp_path):
    """A broken prompt, tokenisation or label mapping scores near chance (0.5 piqa, 0.25 arc_easy); the real
    model, on the same fixed examples, scores far above it. Then a few LoRA steps on WikiText-2 lower its
    loss on those same blocks."""
    import lightning as L
    from torch.utils.data import DataLoader

    from prunelight.evaluate import ZeroShotSettings, zero_shot
    from prunelight.finetune import FinetuneModule, LanguageModelingDataModule, LoraSettings, TrainingSettings

    module = FinetuneModule(
        str(smollm2),
        dtype="float32",
        lora=LoraSettings(rank=8, dropout=0.0),
        training=TrainingSettings(learning_rate=1e-3, scheduler="constant"),
    )
    base = module.load_base()
    result = zero_shot(base, module.tokenizer, ZeroShotSettings(tasks=["piqa", "arc_easy"], limit=100))
    assert result["tasks"]["piqa"]["acc"] > 0.6
    assert result["tasks"]["arc_easy"]["acc"] > 0.4

    data = LanguageModelingDataModule(
        "wikitext2", "validation", "test", block_size=128, max_train_samples=4, batch_size=2,
        tokenizer=str(smollm2),
    )  # fmt: skip
    data.setup("fit")
    batches = list(DataLoader(data.train_ids, batch_size=2))
    module.configure_model()
    module.model.eval()
    with torch.no_grad():
        before = sum(float(module({"input_ids": b, "labels": b}).loss) for b in batches)
    L.seed_everything(0)
    trainer = PrunelightTrainer(
        accelerator="cpu", max_steps=6, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    trainer.fit(module, train_dataloaders=data.train_dataloader())
    module.model.eval()
    with torch.no_grad():
        after = sum(float(module({"input_ids": b, "labels": b}).loss) for b in batches)
    assert after < before
