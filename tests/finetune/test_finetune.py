"""LoRA recovery fine-tuning on a tiny pruned model: it learns, only the adapters move, the merge is exact,
and a resumed run continues where the checkpoint left off."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from conftest import FirstStep
from lightning.pytorch.callbacks import ModelCheckpoint
from peft import PeftModel
from torch.utils.data import DataLoader

import prunelight
from prunelight.errors import ConfigError
from prunelight.finetune import FinetuneModule, LoraSettings, TrainingSettings
from prunelight.main import main
from prunelight.models.adapters import adapter_for
from prunelight.trainer import PrunelightTrainer

WIKI_VALID = "[{name: wikitext2, split: validation}]"


@pytest.fixture(scope="module")
def pruned_tiny(tiny_llama, tmp_path_factory):
    """The tiny llama pruned 50% by global Taylor ranking: its layers keep different sizes."""
    results = tmp_path_factory.mktemp("pruned")
    main(
        [
            "prune",
            "--model.path", str(tiny_llama),
            "--model.dtype", "float32",
            "--data.corpora", WIKI_VALID,
            "--data.nsamples", "4",
            "--data.seqlen", "32",
            "--ranking.ratio", "0.5",
            "--evaluation", "null",
            "--results_root", str(results),
            "--experiment", "run",
            "--trainer.enable_progress_bar", "false",
        ]
    )  # fmt: skip
    return results / tiny_llama.name / "run" / "pruned_model"


def _batches(vocab: int, count: int = 4, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    ids = [torch.randint(0, vocab, (2, 24), generator=generator) for _ in range(count)]
    return [{"input_ids": x, "labels": x.clone()} for x in ids]


def _module(path, lr: float = 1e-2, **lora) -> FinetuneModule:
    settings = LoraSettings(**{"rank": 4, "dropout": 0.0, **lora})
    return FinetuneModule(
        str(path),
        dtype="float32",
        lora=settings,
        training=TrainingSettings(learning_rate=lr, scheduler="constant"),
    )


def _trainer(tmp_path, max_steps: int, **kwargs) -> PrunelightTrainer:
    options = dict(
        accelerator="cpu",
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    return PrunelightTrainer(**{**options, **kwargs})


def test_the_pruned_model_has_layers_of_different_sizes(pruned_tiny):
    model = prunelight.load_pruned(pruned_tiny)
    adapter = adapter_for(model)
    widths = {adapter.modules(layer).up.out_features for layer in adapter.decoder_layers(model)}
    heads = {adapter.modules(layer).q.out_features for layer in adapter.decoder_layers(model)}
    assert len(widths) > 1 or len(heads) > 1


def test_a_few_steps_lower_the_loss_and_move_only_the_adapters(pruned_tiny, tmp_path):
    L.seed_everything(0)
    module = _module(pruned_tiny)
    module.configure_model()
    batches = _batches(module.config.vocab_size)
    frozen = {n: p.detach().clone() for n, p in module.named_parameters() if "lora_" not in n}
    assert all(not p.requires_grad for n, p in module.named_parameters() if "lora_" not in n)
    with torch.no_grad():
        before = sum(float(module(b).loss) for b in batches)

    _trainer(tmp_path, max_steps=12).fit(module, train_dataloaders=DataLoader(batches, batch_size=None))

    with torch.no_grad():
        after = sum(float(module(b).loss) for b in batches)
    assert after < before - 0.05
    for name, param in module.named_parameters():
        if "lora_" not in name:
            assert torch.equal(param, frozen[name]), name
    lora_b = [p for n, p in module.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)

    ids = batches[0]["input_ids"]
    module.model.eval()
    with torch.no_grad():
        adapted = module.model(input_ids=ids).logits
        merged = module.peft_model.merge_and_unload()
        assert not isinstance(merged, PeftModel)
        assert torch.allclose(merged(input_ids=ids).logits, adapted, atol=1e-5, rtol=1e-5)


def test_resume_continues_at_the_same_step_and_ends_where_an_uninterrupted_run_ends(pruned_tiny, tmp_path):
    def loader():  # two batches an epoch: the checkpoint at step 2 closes the first epoch
        return DataLoader(_batches(512, count=2), batch_size=None)

    L.seed_everything(0)
    straight = _module(pruned_tiny, lr=5e-3)
    _trainer(tmp_path / "a", max_steps=4).fit(straight, train_dataloaders=loader())

    L.seed_everything(0)
    first = _module(pruned_tiny, lr=5e-3)
    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1)
    _trainer(tmp_path / "b", max_steps=2, enable_checkpointing=True, callbacks=[saver]).fit(
        first, train_dataloaders=loader()
    )
    checkpoint = next((tmp_path / "ckpt").glob("*step=2*.ckpt"))
    saved = torch.load(checkpoint, weights_only=False)
    assert saved["state_dict"] and all("lora_" in key for key in saved["state_dict"])

    L.seed_everything(1)  # a different adapter init: the checkpoint must overwrite it
    resumed = _module(pruned_tiny, lr=5e-3)
    probe = FirstStep()
    trainer = _trainer(tmp_path / "c", max_steps=4, callbacks=[probe])
    trainer.fit(resumed, train_dataloaders=loader(), ckpt_path=str(checkpoint))
    assert probe.first == 2
    assert trainer.global_step == 4
    expected = dict(straight.named_parameters())
    for name, param in resumed.named_parameters():
        if "lora_" in name:
            assert torch.allclose(param, expected[name], atol=1e-6), name


def test_a_lora_target_that_is_not_in_the_model_is_a_clear_error(pruned_tiny):
    module = _module(pruned_tiny, targets=["q", "qkv_proj"])
    with pytest.raises(ConfigError, match="LoRA target module 'qkv_proj' is not in the model.*q_proj"):
        module.configure_model()


def test_projection_targets_resolve_through_the_family_adapter(pruned_tiny):
    module = _module(pruned_tiny, targets=["q", "down"])
    module.configure_model()
    wrapped = {n.rsplit(".", 1)[0] for n, _ in module.named_parameters() if "lora_A" in n}
    layers = module.config.num_hidden_layers
    assert len(wrapped) == 2 * layers
    assert all(n.split(".lora_A")[0].endswith(("q_proj", "down_proj")) for n in wrapped)


def test_gradient_checkpointing_gives_the_same_gradients(pruned_tiny):
    """Recomputing activations in the backward pass must not change what the adapters learn from."""
    batch = _batches(512, count=1)[0]
    grads = []
    for checkpointing in (False, True):
        L.seed_everything(0)
        module = FinetuneModule(
            str(pruned_tiny),
            dtype="float32",
            lora=LoraSettings(rank=4, dropout=0.0),
            training=TrainingSettings(gradient_checkpointing=checkpointing),
        )
        module.configure_model()
        module.model.train()
        module(batch).loss.backward()
        grads.append({n: p.grad.clone() for n, p in module.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name


def test_early_stopping_stops_when_validation_stops_improving(pruned_tiny, tmp_path):
    """A validation set the model cannot improve on (random ids) with a tiny patience stops the run early."""
    from lightning.pytorch.callbacks import EarlyStopping

    from prunelight.callbacks.overfitting import OverfittingMonitor

    L.seed_everything(0)
    module = _module(pruned_tiny, lr=0.05)
    trainer = _trainer(
        tmp_path,
        max_steps=40,
        val_check_interval=2,
        callbacks=[EarlyStopping("val/loss", patience=1, mode="min"), OverfittingMonitor()],
    )
    train = DataLoader(_batches(512, count=40, seed=1), batch_size=None)
    val = DataLoader(_batches(512, count=2, seed=2), batch_size=None)
    trainer.fit(module, train_dataloaders=train, val_dataloaders=val)
    assert trainer.should_stop and trainer.global_step < 40
