"""Recovery by distillation: the loss is the KL it claims to be, the teacher never moves, only the chosen
weights train, and the finetune and pipeline subcommands run it end to end on a tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import FirstStep
from torch.utils.data import DataLoader

from prunelight.errors import ConfigError
from prunelight.finetune import FinetuneModule, LoraSettings, TrainingSettings
from prunelight.finetune.distillation import DistillationSettings, kd_loss, lm_loss, predicted_rows
from prunelight.main import main
from prunelight.models.loader import load_weights
from prunelight.models.spec import ModelSpec
from prunelight.trainer import PrunelightTrainer

WIKI_VALID = "[{name: wikitext2, split: validation}]"


def _hand_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float, top_k: int | None) -> float:
    """KL(teacher || student) row by row in plain float64 arithmetic, scaled by T^2, averaged over rows."""
    total = 0.0
    for s_row, t_row in zip(student.double().tolist(), teacher.double().tolist(), strict=True):
        keep = sorted(range(len(t_row)), key=lambda i: -t_row[i])[:top_k] if top_k else range(len(t_row))
        t = [t_row[i] / temperature for i in keep]
        s = [s_row[i] / temperature for i in keep]
        t_norm = math.log(sum(math.exp(v) for v in t))
        s_norm = math.log(sum(math.exp(v) for v in s))
        total += sum(math.exp(a - t_norm) * ((a - t_norm) - (b - s_norm)) for a, b in zip(t, s, strict=True))
    return total / len(student) * temperature**2


@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("top_k", [None, 3])
def test_kd_loss_is_the_hand_written_kl(temperature, top_k):
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(6, 11, generator=generator), 2 * torch.randn(6, 11, generator=generator)
    got = float(kd_loss(student, teacher, temperature, top_k))
    assert got == pytest.approx(_hand_kl(student, teacher, temperature, top_k), rel=1e-5)
    assert got > 0


@pytest.mark.parametrize("top_k", [None, 4])
def test_kd_loss_of_a_student_equal_to_its_teacher_is_zero_with_zero_gradient(top_k):
    logits = torch.randn(5, 13, generator=torch.Generator().manual_seed(1))
    student = logits.clone().requires_grad_(True)
    loss = kd_loss(student, logits, 2.0, top_k)
    loss.backward()
    assert float(loss.detach()) == 0.0
    # zero up to float32 rounding (the softmax's sum is 1 within an ulp); a different student is far off
    assert float(student.grad.abs().max()) < 1e-7
    other = logits + 0.1 * torch.randn(logits.shape, generator=torch.Generator().manual_seed(3))
    other.requires_grad_(True)
    kd_loss(other, logits, 2.0, top_k).backward()
    assert float(other.grad.abs().max()) > 1e-3


def test_lm_loss_equals_transformers_loss_and_kd_uses_the_labelled_positions(tiny_llama):
    model = load_weights(ModelSpec(str(tiny_llama), dtype="float32"))
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(2))
    labels = ids.clone()
    labels[0, :5] = -100  # a prompt: no loss there
    with torch.no_grad():
        out = model(input_ids=ids, labels=labels)
    assert float(lm_loss(out.logits, labels)) == pytest.approx(float(out.loss), rel=1e-5)
    rows = predicted_rows(out.logits, labels)
    assert rows.shape == (int((labels[:, 1:] != -100).sum()), model.config.vocab_size)


def test_distillation_settings_refuse_nonsense():
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        DistillationSettings(temperature=0)
    with pytest.raises(ConfigError, match=r"kd_weight must be in \[0, 1\]"):
        DistillationSettings(kd_weight=1.5)
    with pytest.raises(ConfigError, match="top_k must be >= 1"):
        DistillationSettings(top_k=0)


def _batches(vocab: int, count: int = 3) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    ids = [torch.randint(0, vocab, (2, 16), generator=generator) for _ in range(count)]
    return [{"input_ids": x, "labels": x.clone()} for x in ids]


def _fit(module: FinetuneModule, batches, tmp_path, steps: int = 3) -> None:
    trainer = PrunelightTrainer(
        accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))


def _student(folder, lr: float, seed: int = 0) -> FinetuneModule:
    """The tiny llama as a LoRA student (rank 4, no dropout, constant learning rate), its base loaded."""
    L.seed_everything(seed)
    module = FinetuneModule(
        str(folder), dtype="float32", lora=LoraSettings(rank=4, dropout=0.0),
        training=TrainingSettings(learning_rate=lr, scheduler="constant"),
    )  # fmt: skip
    module.load_base()
    return module


def _teacher(folder, sharper: float = 1.0):
    """The tiny llama as a teacher; ``sharper`` scales its final norm, which makes it more confident."""
    teacher = load_weights(ModelSpec(str(folder), dtype="float32"))
    with torch.no_grad():
        teacher.model.norm.weight.mul_(sharper)
    return teacher


@pytest.mark.parametrize("train", ["lora", "full"])
def test_the_teacher_never_moves_and_only_the_chosen_weights_train(tiny_llama, tmp_path, train):
    module = _student(tiny_llama, lr=1e-2)
    student = module.model
    teacher = _teacher(tiny_llama)
    # a student that differs from its teacher, as a pruned one does, so that the KD loss has a gradient
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    base_before = [(p, p.detach().clone()) for p in student.parameters()]
    teacher_before = {n: p.detach().clone() for n, p in teacher.named_parameters()}
    module.use_recovery("kd", train, DistillationSettings(temperature=2.0), teacher)
    assert not any(p.requires_grad for p in teacher.parameters())  # frozen: nothing can ask for a gradient
    # not a submodule: not in the module's parameters, so never broadcast by DDP nor checkpointed
    assert not {id(p) for p in teacher.parameters()} & {id(p) for p in module.parameters()}

    _fit(module, _batches(student.config.vocab_size), tmp_path)

    assert not teacher.training
    for name, param in teacher.named_parameters():
        assert torch.equal(param, teacher_before[name]) and param.grad is None, name
    trainable = {n for n, p in module.model.named_parameters() if p.requires_grad}
    moved = [not torch.equal(p, before) for p, before in base_before]
    if train == "lora":
        assert trainable and all("lora_" in n for n in trainable)
        assert not any(moved)  # the pruned weights themselves stay as they are
        lora_b = [p for n, p in module.model.named_parameters() if "lora_B" in n]
        assert all(float(p.abs().sum()) > 0 for p in lora_b)  # and the adapters learned
    else:
        assert all(moved) and len(trainable) == len(base_before)


def test_kd_training_lowers_the_kl_to_the_teacher(tiny_llama, tmp_path):
    module = _student(tiny_llama, lr=2e-3)
    student = module.model
    teacher = _teacher(tiny_llama, sharper=8.0)  # the random student's near-uniform outputs are far from it
    batches = _batches(student.config.vocab_size)

    def kl() -> float:
        with torch.no_grad():
            return sum(
                float(kd_loss(module.model(input_ids=b["input_ids"]).logits.flatten(0, 1),
                              teacher(input_ids=b["input_ids"]).logits.flatten(0, 1)))
                for b in batches
            )  # fmt: skip

    module.use_recovery("kd", "full", DistillationSettings(), teacher)
    module.configure_model()
    before = kl()
    _fit(module, batches, tmp_path, steps=15)
    module.model.eval()
    assert kl() < 0.8 * before


def _finetune_args(run_model, tmp_path, *extra: str) -> list[str]:
    return [
        "finetune", "--model.path", str(run_model), "--model.dtype", "float32",
        "--finetune_data.corpus", "wikitext2", "--finetune_data.train_split", "validation",
        "--finetune_data.val_split", "validation", "--finetune_data.block_size", "64",
        "--finetune_data.max_train_samples", "8", "--finetune_data.max_val_samples", "2",
        "--finetune_data.batch_size", "2", "--trainer.max_steps", "3", "--trainer.val_check_interval", "3",
        "--trainer.log_every_n_steps", "1",
        "--trainer.enable_progress_bar", "false", "--evaluation.corpora", WIKI_VALID,
        "--evaluation.split", "validation", "--evaluation.seqlen", "64", "--evaluation.max_windows", "1",
        "--results_root", str(tmp_path / "results"), "--experiment", "kd", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def pruned_run(tiny_llama, tmp_path_factory):
    """A tiny llama pruned 30%: its run folder names the dense model in analysis/prune.json."""
    results = tmp_path_factory.mktemp("kd-pruned")
    main(["prune", "--model.path", str(tiny_llama), "--model.dtype", "float32", "--data.corpora", WIKI_VALID,
          "--data.nsamples", "4", "--data.seqlen", "32", "--ranking.ratio", "0.3", "--evaluation", "null",
          "--results_root", str(results), "--experiment", "run",
          "--trainer.enable_progress_bar", "false"])  # fmt: skip
    return results / tiny_llama.name / "run" / "pruned_model"


def test_finetune_with_kd_finds_the_teacher_and_logs_both_losses(pruned_run, tiny_llama, tmp_path):
    main(_finetune_args(pruned_run, tmp_path, "--recovery.objective", "lm+kd",
                        "--recovery.distillation.top_k", "16", "--lora.rank", "4"))  # fmt: skip
    run = next((tmp_path / "results").glob("*/kd"))  # the run is named after the model it was pruned from
    report = json.loads((run / "analysis" / "finetune.json").read_text())
    assert report["recovery"]["objective"] == "lm+kd"
    assert report["recovery"]["distillation"]["teacher"] == str(tiny_llama)
    assert report["recovery"]["distillation"]["top_k"] == 16
    assert (run / "finetuned_model" / "config.json").is_file()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: set[str] = set()
    for found in (run / "tb").rglob("events.out.tfevents.*"):
        events = EventAccumulator(str(found))
        events.Reload()
        scalars |= set(events.Tags()["scalars"])
    assert {"train/lm_loss", "train/kd_loss", "train/loss", "val/loss"} <= scalars


@pytest.mark.parametrize("train", ["lora", "full"])
def test_a_kd_run_resumed_from_its_checkpoint_ends_where_an_uninterrupted_run_ends(
    tiny_llama, tmp_path, train
):
    from lightning.pytorch.callbacks import ModelCheckpoint

    teacher = _teacher(tiny_llama, sharper=4.0)

    def module(seed: int) -> FinetuneModule:
        made = _student(tiny_llama, lr=3e-3, seed=seed)
        made.use_recovery("lm+kd", train, DistillationSettings(temperature=2.0, top_k=32), teacher)
        return made

    def trainer(folder, steps: int, **kwargs) -> PrunelightTrainer:
        return PrunelightTrainer(
            accelerator="cpu", max_steps=steps, logger=False, enable_progress_bar=False,
            enable_model_summary=False, default_root_dir=str(tmp_path / folder),
            **{"enable_checkpointing": False, **kwargs},
        )  # fmt: skip

    def loader():  # two batches an epoch: the checkpoint at step 2 closes the first epoch
        return DataLoader(_batches(512, count=2), batch_size=None)

    straight = module(0)
    trainer("a", 4).fit(straight, train_dataloaders=loader())

    first = module(0)
    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1)
    trainer("b", 2, enable_checkpointing=True, callbacks=[saver]).fit(first, train_dataloaders=loader())
    checkpoint = next((tmp_path / "ckpt").glob("*step=2*.ckpt"))
    saved = torch.load(checkpoint, weights_only=False)
    assert saved["state_dict"] and not any(key.startswith("teacher.") for key in saved["state_dict"])

    resumed = module(1)  # another init: the checkpoint must overwrite it
    probe = FirstStep()
    run = trainer("c", 4, callbacks=[probe])
    run.fit(resumed, train_dataloaders=loader(), ckpt_path=str(checkpoint))
    assert probe.first == 2 and run.global_step == 4
    expected = dict(straight.model.named_parameters())
    for name, param in resumed.model.named_parameters():
        if param.requires_grad:
            assert torch.allclose(param, expected[name], atol=1e-6), name


def test_a_kd_pipeline_distils_from_its_own_dense_model(tiny_llama, tmp_path):
    main(["pipeline", "--model.path", str(tiny_llama), "--model.dtype", "float32",
          "--data.corpora", WIKI_VALID, "--data.nsamples", "4", "--data.seqlen", "32",
          "--ranking.ratio", "0.3", "--lora.rank", "4",
          "--training.learning_rate", "0.01", "--recovery.objective", "kd", "--recovery.train", "full",
          *_finetune_args(tiny_llama, tmp_path)[3:]])  # fmt: skip
    run = next((tmp_path / "results").glob("*/kd"))
    recovery = json.loads((run / "analysis" / "recovery.json").read_text())
    tuned = recovery["finetune"]
    assert tuned["recovery"]["distillation"]["teacher"] == str(tiny_llama)
    assert tuned["lora"] is None and not (run / "adapter").exists()
    rows = {r["name"]: r for r in recovery["rows"]}
    assert tuned["trainable_parameters"] == rows["recovered"]["parameters"] < rows["dense"]["parameters"]
    assert rows["recovered"]["perplexity"]["wikitext2"] < rows["pruned"]["perplexity"]["wikitext2"]
    summary = (run / "summary.md").read_text()
    assert "every weight trained" in summary and "objective: kd (teacher" in summary


def test_two_processes_distil_to_the_adapters_of_one(tiny_llama, tmp_path):
    """The same global batches on two gloo ranks (DDP averages the ranks' gradients) and on one process."""
    from conftest import launch_ddp
    from kd_worker import fit  # tests/finetune is on sys.path

    worker = Path(__file__).resolve().parent / "kd_worker.py"
    out = tmp_path / "adapters"
    launch_ddp(worker, str(tiny_llama), "2", str(tmp_path / "run"), str(out))
    one = fit(str(tiny_llama), 1, str(tmp_path / "one"))
    assert one["step"] == 3 and one["adapters"]
    for rank in range(2):
        got = torch.load(f"{out}.{rank}", weights_only=False)
        assert got["world"] == 2 and got["step"] == 3
        assert got["adapters"].keys() == one["adapters"].keys()
        for name, value in one["adapters"].items():
            assert value.dtype == torch.float64
            assert torch.allclose(got["adapters"][name], value, atol=1e-10, rtol=0), name
    lora_b = [v for n, v in one["adapters"].items() if "lora_B" in n]
    assert all(float(v.abs().sum()) > 0 for v in lora_b)  # the adapters did move
