"""Sparse pruning through the prune stage: Wanda against a hand computation, sequential against one pass,
exact sparsity per pattern measured on the weights, the saved model, and bad input."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from prunelight.calibration import CalibrationDataModule, CalibrationModule
from prunelight.callbacks.mask import MaskCallback
from prunelight.errors import ConfigError
from prunelight.main import main
from prunelight.models.projections import PROJECTIONS
from prunelight.ranking import RankingConfig
from prunelight.stages.settings import ImportanceSettings, SparsitySettings
from prunelight.trainer import PrunelightTrainer

WIKI_VALID = [{"name": "wikitext2", "split": "validation"}]


def _prune(folder, tmp_path, criterion: str, **sparsity) -> tuple[CalibrationModule, dict]:
    module = CalibrationModule(str(folder), dtype="float32")
    data = CalibrationDataModule(WIKI_VALID, nsamples=4, seqlen=32, batch_size=2, split="validation")
    trainer = PrunelightTrainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path / "run"),
    )
    report = trainer.prune(
        module,
        data,
        importance=ImportanceSettings(criterion),
        evaluation=None,
        save_model=False,
        sparsity=SparsitySettings(**sparsity),
    )
    return module, report


def _windows(tiny_llama) -> torch.Tensor:
    data = CalibrationDataModule(
        WIKI_VALID, nsamples=4, seqlen=32, batch_size=2, split="validation", tokenizer=str(tiny_llama)
    )
    data.setup("test")
    return data.windows.input_ids


def _linears(model, layer_index: int) -> dict[str, torch.nn.Linear]:
    layer = model.model.layers[layer_index]
    attn, mlp = layer.self_attn, layer.mlp
    return {
        "q": attn.q_proj, "k": attn.k_proj, "v": attn.v_proj, "o": attn.o_proj,
        "gate": mlp.gate_proj, "up": mlp.up_proj, "down": mlp.down_proj,
    }  # fmt: skip


def _weights(model, layer_index: int) -> dict[str, torch.Tensor]:
    return {name: linear.weight for name, linear in _linears(model, layer_index).items()}


def _input_norms(model, layer_index: int, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """||X_j|| of every projection's input in one layer, by plain hooks (independent of LayerInputs)."""
    sums: dict[str, torch.Tensor] = {}
    handles = []
    for name, module in _linears(model, layer_index).items():

        def hook(_m, args, name=name):
            x = args[0].detach().double().reshape(-1, args[0].shape[-1])
            sums[name] = sums.get(name, 0) + (x * x).sum(0)

        handles.append(module.register_forward_pre_hook(hook))
    with torch.no_grad():
        for batch in ids.split(2):
            model(input_ids=batch)
    for h in handles:
        h.remove()
    return {name: s.sqrt() for name, s in sums.items()}


def _hand_wanda(model, layer_index: int, norms: dict[str, torch.Tensor], sparsity: float) -> dict:
    """Zero, per output row, the lowest ``sparsity`` of |W_ij| * ||X_j||."""
    out = {}
    for name, w in _weights(model, layer_index).items():
        score = w.detach().double().abs() * norms[name][None, :]
        keep = torch.ones_like(score, dtype=torch.bool)
        k = int(sparsity * score.shape[1])
        for row in range(score.shape[0]):
            keep[row, score[row].argsort(stable=True)[:k]] = False
        out[name] = w.detach() * keep
    return out


def test_one_pass_wanda_equals_a_hand_computation(tiny_llama, tmp_path):
    dense = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    ids = _windows(tiny_llama)
    module, report = _prune(
        tiny_llama, tmp_path, "wanda", pattern="unstructured", sparsity=0.5, calibration="one_pass"
    )
    assert report["sparsity_reached"] == 0.5
    for index in range(dense.config.num_hidden_layers):
        expected = _hand_wanda(dense, index, _input_norms(dense, index, ids), 0.5)
        for name, weight in _weights(module.model, index).items():
            torch.testing.assert_close(weight.detach(), expected[name], rtol=0, atol=0, msg=f"{index} {name}")


def test_sequential_scores_each_layer_on_the_pruned_outputs_before_it(tiny_llama, tmp_path):
    """Layer 0 sees the same (dense) inputs either way; layer 1 sequentially sees layer 0's pruned outputs,
    so its masks equal a hand Wanda on the model whose layer 0 is pruned, and differ from one pass."""
    dense = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    ids = _windows(tiny_llama)
    sequential, _ = _prune(tiny_llama, tmp_path / "s", "wanda", pattern="unstructured", sparsity=0.5)
    one_pass, _ = _prune(
        tiny_llama, tmp_path / "o", "wanda", pattern="unstructured", sparsity=0.5, calibration="one_pass"
    )
    seq0, one0 = _weights(sequential.model, 0), _weights(one_pass.model, 0)
    for name in PROJECTIONS:
        assert torch.equal(seq0[name], one0[name])

    partial = copy.deepcopy(dense)
    with torch.no_grad():
        for name, weight in _weights(partial, 0).items():
            weight.copy_(seq0[name])
    expected = _hand_wanda(partial, 1, _input_norms(partial, 1, ids), 0.5)
    seq1, one1 = _weights(sequential.model, 1), _weights(one_pass.model, 1)
    for name in PROJECTIONS:
        torch.testing.assert_close(seq1[name].detach(), expected[name], rtol=0, atol=0)
    changed = sum(int(((seq1[n] != 0) != (one1[n] != 0)).sum()) for n in PROJECTIONS)
    assert changed > 0, "layer 1's masks should depend on whether layer 0 was pruned first"


@pytest.mark.parametrize(
    ("criterion", "options", "tile"),
    [
        ("magnitude", dict(pattern="unstructured", sparsity=0.5, comparison="layer"), None),
        ("wanda", dict(pattern="unstructured", sparsity=0.25), None),
        ("sparsegpt", dict(pattern="unstructured", sparsity=0.5, sparsegpt_block_size=16), None),
        ("wanda", dict(pattern="nm", n=2, m=4), None),
        ("sparsegpt", dict(pattern="nm", n=4, m=8, sparsegpt_block_size=16), None),
        ("wanda", dict(pattern="block", sparsity=0.5, block=(8, 8)), (8, 8)),
        ("wanda", dict(pattern="hybrid", sparsity=0.5, block=(8, 8)), (8, 8)),
    ],
    ids=["magnitude-layer", "wanda-row", "sparsegpt", "wanda-2:4", "sparsegpt-4:8", "block", "hybrid"],
)
def test_reached_sparsity_is_exact_and_measured_on_the_weights(
    tiny_llama, tmp_path, criterion, options, tile
):
    module, report = _prune(tiny_llama, tmp_path, criterion, **options)
    measured = json.loads((tmp_path / "run/analysis/sparsity.json").read_text())
    settings = SparsitySettings(**options)
    target = settings.target
    assert report["sparsity_reached"] == pytest.approx(target, abs=1e-12)
    zeros = removed = dense = 0
    for index in range(len(module.model.model.layers)):
        entry = measured["layers"][index]
        for name, weight in _weights(module.model, index).items():
            row = entry["projections"][name]
            assert row["zeros"] == int((weight == 0).sum())  # the report is the weights, not the plan
            zeros, removed, dense = zeros + row["zeros"], removed + row["removed"], dense + row["dense"]
            w = weight.detach()
            if settings.pattern == "unstructured" and settings.comparison == "row":
                per_row = (w == 0).sum(dim=1)
                assert (per_row == round(target * w.shape[1])).all(), (index, name)
            if settings.pattern == "nm":
                groups = (w != 0).reshape(w.shape[0], -1, settings.m).sum(dim=2)
                assert (groups <= settings.n).all()
            if settings.pattern == "block":
                tiles = (w == 0).reshape(w.shape[0] // tile[0], tile[0], w.shape[1] // tile[1], tile[1])
                whole = tiles.all(dim=3).all(dim=1)
                some = tiles.any(dim=3).any(dim=1)
                assert torch.equal(whole, some), "a tile is all zero or untouched"
        if settings.pattern != "hybrid":
            assert entry["sparsity"] == pytest.approx(target, abs=1e-12), index
    assert (zeros + removed) / dense == pytest.approx(target, abs=1e-12)
    if settings.pattern == "hybrid":
        assert measured["overall"]["removed"] > 0 and measured["overall"]["tile_zeros"] > 0
        assert measured["overall"]["zeros"] > measured["overall"]["tile_zeros"]


def test_protected_layers_stay_dense_and_the_others_make_up_the_target(tiny_llama, tmp_path):
    from prunelight.ranking import RankingConfig

    module = CalibrationModule(str(tiny_llama), dtype="float32")
    data = CalibrationDataModule(WIKI_VALID, nsamples=4, seqlen=32, batch_size=2, split="validation")
    trainer = PrunelightTrainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=str(tmp_path / "run")
    )
    report = trainer.prune(
        module,
        data,
        importance=ImportanceSettings("wanda"),
        ranking=RankingConfig(protected_layers=[0]),
        evaluation=None,
        save_model=False,
        sparsity=SparsitySettings(pattern="unstructured", sparsity=0.25, comparison="layer"),
    )
    assert all((w != 0).all() for w in _weights(module.model, 0).values())
    assert report["sparsity_reached"] == pytest.approx(0.25, abs=1e-12)
    assert (_weights(module.model, 1)["q"] == 0).float().mean() == pytest.approx(0.5)


def test_owl_spends_the_target_unevenly(tiny_llama, tmp_path):
    _, report = _prune(
        tiny_llama, tmp_path, "wanda", pattern="unstructured", sparsity=0.5, allocation="owl", owl_lambda=0.1
    )
    measured = json.loads((tmp_path / "run/analysis/sparsity.json").read_text())
    rates = [entry["sparsity"] for entry in measured["layers"]]
    assert len(set(round(r, 3) for r in rates)) > 1
    assert max(rates) - min(rates) <= 0.2 + 1e-9
    assert report["sparsity_reached"] == pytest.approx(0.5, abs=1e-3)


def test_the_cli_writes_a_folder_whose_model_reloads_with_its_zeros(tiny_llama, tmp_path):
    main(
        [
            "prune",
            "--model.path", str(tiny_llama),
            "--model.dtype", "float32",
            "--data.corpora", "[{name: wikitext2, split: validation}]",
            "--data.nsamples", "4",
            "--data.seqlen", "32",
            "--data.batch_size", "2",
            "--evaluation.corpora", "[{name: wikitext2, split: validation}]",
            "--evaluation.split", "validation",
            "--evaluation.seqlen", "64",
            "--evaluation.max_windows", "2",
            "--results_root", str(tmp_path / "results"),
            "--experiment", "run",
            "--trainer.enable_progress_bar", "false",
            "--importance.criterion", "wanda",
            "--sparsity.pattern", "hybrid",
            "--sparsity.sparsity", "0.5",
            "--sparsity.block", "[8, 8]",
        ]
    )  # fmt: skip
    run = tmp_path / "results" / tiny_llama.name / "run"
    for name in ("summary.md", "analysis/sparsity.json", "analysis/prune.json", "analysis/plan.json",
                 "visualization/sparsity.png", "pruned_model/config.json"):  # fmt: skip
        assert (run / name).is_file(), name
    assert list((run / "tb" / "diagnostics").glob("events.out.tfevents.*"))
    report = json.loads((run / "analysis/prune.json").read_text())
    summary = (run / "summary.md").read_text()
    assert "hybrid" in summary and "| pruned | 50.00% |" in summary
    assert report["perplexity"]["pruned"]["wikitext2"] > 0

    main(["report", str(run)])  # rebuilt from analysis/ alone: the same summary
    assert (run / "summary.md").read_text() == summary
    shutil.copytree(run, tmp_path / "copy")
    main(["compare", str(run), str(tmp_path / "copy"), "--output", str(tmp_path / "compare")])
    table = (tmp_path / "compare/compare.md").read_text()
    assert "| wanda | hybrid | 0.5 |" in table and "| 50.0% |" in table

    import prunelight

    model = prunelight.load_pruned(run / "pruned_model")
    measured = MaskCallback.from_zeros(model)
    sparsity = json.loads((run / "analysis/sparsity.json").read_text())["overall"]
    assert sum(int((~m).sum()) for m in measured.masks.values()) == sparsity["zeros"]


@pytest.mark.parametrize(
    ("criterion", "options", "message"),
    [
        ("taylor", dict(pattern="unstructured", sparsity=0.5), "sparse patterns take"),
        ("sparsegpt", dict(pattern="block", sparsity=0.5), "sparsegpt reconstructs weights"),
        ("sparsegpt", dict(pattern="nm", calibration="one_pass"), "set sparsity.calibration: sequential"),
        ("wanda", dict(pattern="block", sparsity=0.5, block=(5, 5)), "tiles do not divide"),
        ("wanda", dict(pattern="nm", n=2, m=5), "not a multiple"),
        ("wanda", dict(pattern="nm", n=2, m=4, semi_structured=True), "needs a CUDA GPU"),
        ("wanda", dict(pattern="nm", n=4, m=8, semi_structured=True), "2:4 layers only"),
    ],
    ids=[
        "taylor",
        "sparsegpt-block",
        "sparsegpt-one-pass",
        "tile-size",
        "m-not-dividing",
        "semi-structured-on-cpu",
        "semi-structured-4:8",
    ],
)
def test_bad_input_is_one_clear_error_and_leaves_no_folder(tiny_llama, tmp_path, criterion, options, message):
    with pytest.raises(ConfigError, match=message):
        _prune(tiny_llama, tmp_path, criterion, **options)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(pattern="unstructured", sparsity=1.0), r"in \[0, 1\)"),
        (dict(pattern="unstructured", sparsity=-0.1), r"in \[0, 1\)"),
        (dict(pattern="unstructured"), "needs sparsity.sparsity"),
        (dict(pattern="nm", n=4, m=4), "N < M"),
        (dict(pattern="nm", n=2, m=4, sparsity=0.6), "fixes the sparsity"),
        (dict(pattern="hybrid", sparsity=0.5, structures_share=0.7, blocks_share=0.5), "sum to at most 1"),
        (dict(pattern="nm", allocation="owl"), "allocation: uniform"),
    ],
)
def test_bad_settings_are_rejected_before_anything_runs(options, message):
    with pytest.raises(ConfigError, match=message):
        SparsitySettings(**options)


def test_a_sparse_criterion_without_a_sparse_pattern_is_an_error(tiny_llama, tmp_path):
    module = CalibrationModule(str(tiny_llama), dtype="float32")
    data = CalibrationDataModule(WIKI_VALID, nsamples=4, seqlen=32, batch_size=2, split="validation")
    trainer = PrunelightTrainer(accelerator="cpu", logger=False, default_root_dir=str(tmp_path / "run"))
    with pytest.raises(ConfigError, match="add a sparsity"):
        trainer.prune(module, data, importance=ImportanceSettings("sparsegpt"), evaluation=None)


def test_two_four_check_sees_every_group():
    from prunelight.save.semi_structured import is_two_four

    weight = torch.tensor([[1.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 3.0]])
    assert is_two_four(weight)
    weight[0, 5] = 1.0
    assert is_two_four(weight)
    weight[0, 4] = 1.0  # the second group now has 3 non-zeros
    assert not is_two_four(weight)
    assert not is_two_four(torch.ones(2, 6))  # inputs not a multiple of 4


def test_a_ranking_ratio_a_sparse_run_would_ignore_is_refused_before_the_model_loads(tiny_llama, tmp_path):
    module = CalibrationModule(str(tiny_llama), dtype="float32")
    data = CalibrationDataModule(WIKI_VALID, nsamples=4, seqlen=32, batch_size=2, split="validation")
    trainer = PrunelightTrainer(accelerator="cpu", logger=False, default_root_dir=str(tmp_path / "run"))
    with pytest.raises(ConfigError, match=r"ranking.ratio=0.3 is not used by a sparse run"):
        trainer.prune(
            module,
            data,
            importance=ImportanceSettings("wanda"),
            ranking=RankingConfig(ratio=0.3),
            sparsity=SparsitySettings("unstructured", 0.5),
            evaluation=None,
        )
    assert module.model is None and not (tmp_path / "run").exists()
