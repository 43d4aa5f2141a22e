"""The command line: every config loads, overrides work, evaluate runs, bad input is one clear line."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

from prunelight.cli import SUBCOMMANDS, nested_nulls
from prunelight.main import main

CONFIGS = sorted(p for p in (ROOT / "configs").glob("*.yaml") if not p.name.startswith("study_"))


def _print_config(capsys, *args) -> dict:
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--print_config"])
    assert exit_.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def test_there_are_configs():
    assert CONFIGS


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_config_loads(config, capsys):
    subcommand = config.name.split("_")[0]
    assert subcommand in SUBCOMMANDS, f"{config.name} must start with its subcommand"
    assert config.read_text().startswith(f"# python train.py {subcommand} --config configs/{config.name}")
    printed = _print_config(capsys, subcommand, "--config", str(config))
    written = yaml.safe_load(config.read_text())
    for section, values in written.items():
        if not isinstance(values, dict) or section == "trainer":
            continue
        parsed = printed[section]
        parsed = parsed["init_args"] if "class_path" in parsed else parsed  # model, data, finetune_data
        for key, value in values.items():
            assert _contains(parsed[key], value), (section, key)


def _contains(parsed, written) -> bool:
    """``written`` as the YAML gives it, inside ``parsed`` (which adds the defaults of nested sections)."""
    if isinstance(written, dict) and isinstance(parsed, dict):
        return all(k in parsed and _contains(parsed[k], v) for k, v in written.items())
    return parsed == written


@pytest.mark.parametrize("subcommand", ["evaluate", "validate", "test"])
def test_overrides_and_print_config_for_each_subcommand(subcommand, capsys):
    printed = _print_config(capsys, subcommand, "--data.seqlen", "128", "--model.dtype", "bfloat16")
    assert printed["data"]["init_args"]["seqlen"] == 128
    assert printed["model"]["init_args"]["dtype"] == "bfloat16"
    assert printed["model"]["class_path"] == "prunelight.evaluate.PerplexityModule"


def test_evaluate_end_to_end(tiny_llama, tmp_path, capsys):
    args = [
        "evaluate",
        "--model.path",
        str(tiny_llama),
        "--model.dtype",
        "float32",
        "--data.corpora",
        "[ptb, wikitext2]",
        "--data.seqlen",
        "32",
        "--data.max_windows",
        "2",
        "--results_root",
        str(tmp_path),
        "--experiment",
        "cli",
        "--trainer.enable_progress_bar",
        "false",
    ]
    main(args)
    run = tmp_path / "tiny-llama0" / "cli"
    report = json.loads((run / "analysis" / "perplexity.json").read_text())
    assert set(report["corpora"]) == {"ptb", "wikitext2"}
    assert (run / "tb" / "config.yaml").is_file()
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert "ptb" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (["--data.corpora", "[wikitext103]"], "unknown corpus 'wikitext103'; known corpora: c4, c4_zh"),
        (["--data.seqlen", "4096"], "data.seqlen: 4096 tokens is longer than the context"),
        (["--data.corpora", "[{name: wikitext2, split: train}]"], "is not available"),
        (["--model.path", "./missing/model"], "does not exist"),
    ],
)
def test_bad_input_is_one_line_and_no_output(override, message, tiny_llama, tmp_path, capsys):
    args = [
        "evaluate",
        "--model.path",
        str(tiny_llama),
        "--data.corpora",
        "[ptb]",
        "--data.seqlen",
        "32",
        "--results_root",
        str(tmp_path),
        *override,
    ]
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("prunelight: error: ") and message in err[-1]
    assert "Traceback" not in "\n".join(err)
    assert list(tmp_path.iterdir()) == []


def test_console_script_and_train_py_are_the_same_program():
    script = shutil.which("prunelight", path=str(Path(sys.executable).parent))
    assert script, "the console script 'prunelight' is not installed"
    a = subprocess.run([script, "--help"], capture_output=True, text=True, check=True).stdout
    b = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--help"], capture_output=True, text=True, check=True
    ).stdout
    # The usage lines wrap at a width that depends on the program's name; the words must be the same.
    assert "evaluate" in a and a.split()[2:] == b.split()[2:]


FINETUNE_SECTIONS = ("lora", "training", "finetune_data")


def test_finetune_and_pipeline_take_the_same_fine_tuning_sections(tmp_path, capsys):
    """Each config's lora, training and finetune_data sections, given to the other subcommand unchanged,
    parse to the same sections there: one place for the fine-tuning settings in both YAMLs."""
    configs = {name: ROOT / "configs" / f"{name}_smollm2{tail}.yaml" for name, tail in
               (("finetune", "_lora"), ("pipeline", ""))}  # fmt: skip
    for source in configs.values():
        sections = {k: v for k, v in yaml.safe_load(source.read_text()).items() if k in FINETUNE_SECTIONS}
        assert set(sections) == set(FINETUNE_SECTIONS), source.name
        moved = tmp_path / f"sections_of_{source.name}"
        moved.write_text(yaml.safe_dump(sections))
        printed = {name: _print_config(capsys, name, "--config", str(moved)) for name in configs}
        assert {k: printed["finetune"][k] for k in FINETUNE_SECTIONS} == {
            k: printed["pipeline"][k] for k in FINETUNE_SECTIONS
        }, source.name
        assert printed["finetune"]["lora"]["rank"] == sections["lora"]["rank"]


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (["--model.lora.rank", "4"], "top-level lora section (lora.rank)"),
        (["--model.training.learning_rate", "0.01"], "top-level training section (training.learning_rate)"),
        (["--data.block_size", "64"], "top-level finetune_data section (finetune_data.block_size)"),
    ],
)
def test_the_old_places_of_the_fine_tuning_settings_are_refused_on_finetune(old, new, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["finetune", "--model.path", "smollm2-135m", *old, "--results_root", str(tmp_path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("prunelight: error: ") and new in err[0], err
    assert list(tmp_path.iterdir()) == []


def test_fit_keeps_lightnings_places_of_the_fine_tuning_settings(capsys):
    printed = _print_config(capsys, "fit", "--model.lora.rank", "4", "--data.block_size", "64")
    assert printed["model"]["init_args"]["lora"]["rank"] == 4
    assert printed["data"]["init_args"]["block_size"] == 64
    assert not set(FINETUNE_SECTIONS) & set(printed)


ZERO_SHOT = ["prune", "--config", str(ROOT / "configs" / "prune_smollm2_taylor.yaml")]


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (["--evaluation.zero_shot.tasks", "[piqa]", "--evaluation.zero_shot.limit", "null"], {"limit": None}),
        (["--evaluation.zero_shot.tasks=[piqa]", "--evaluation.zero_shot.limit=null"], {"limit": None}),
        (["--evaluation.zero_shot.tasks", "[piqa]", "--evaluation.zero_shot.limit", "5"], {"limit": 5}),
        (
            ["--evaluation.zero_shot.tasks", "[piqa]", "--evaluation.zero_shot.data_root", "null"],
            {"data_root": None},
        ),
        (
            ["--evaluation.init_args.zero_shot.cache_dir", "~", "--evaluation.zero_shot.tasks", "[piqa]"],
            {"cache_dir": None},
        ),
        (["--evaluation.zero_shot", "{tasks: [piqa], limit: null}"], {"limit": None}),
    ],
)
def test_null_in_a_section_of_an_optional_section_is_none(override, expected, capsys):
    """jsonargparse hands a null two keys below ``evaluation`` on as the text None (cli.nested_nulls)."""
    zero_shot = _print_config(capsys, *ZERO_SHOT, *override)["evaluation"]["zero_shot"]
    assert zero_shot["tasks"] == ["piqa"]
    assert {key: zero_shot[key] for key in expected} == expected


def test_null_on_the_command_line_keeps_the_rest_of_the_yaml_section(tmp_path, capsys):
    config = tmp_path / "zero_shot.yaml"
    config.write_text(
        "evaluation:\n  max_windows: 4\n  zero_shot: {tasks: [piqa, arc_easy], limit: 10, batch_size: 2}\n"
    )
    printed = _print_config(
        capsys, *ZERO_SHOT, "--config", str(config), "--evaluation.zero_shot.limit", "null"
    )
    evaluation = printed["evaluation"]
    assert evaluation["max_windows"] == 4
    assert evaluation["zero_shot"]["tasks"] == ["piqa", "arc_easy"]
    assert evaluation["zero_shot"]["batch_size"] == 2
    assert evaluation["zero_shot"]["limit"] is None
    config.write_text("evaluation:\n  zero_shot: {tasks: [piqa], limit: null}\n")
    assert (
        _print_config(capsys, *ZERO_SHOT, "--config", str(config))["evaluation"]["zero_shot"]["limit"] is None
    )


def test_a_bad_limit_is_still_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*ZERO_SHOT, "--evaluation.zero_shot.tasks", "[piqa]", "--evaluation.zero_shot.limit", "abc"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["prunelight: error: evaluation.zero_shot.limit: expected int, got 'abc'"]


def test_nested_nulls_rewrites_only_a_null_two_keys_below_a_section_option():
    options = {"--evaluation": None, "--ranking.tau": None, "--print_config": None}
    args = ["prune", "--evaluation.zero_shot.limit", "null", "--evaluation.a.b.c=~", "--evaluation.x", "null"]
    assert nested_nulls([*args, "--ranking.tau", "null", "--evaluation.zero_shot.limit", "5"], options) == [
        "prune",
        "--evaluation.zero_shot",
        '{"limit": null}',
        "--evaluation.a",
        '{"b": {"c": null}}',
        "--evaluation.x",
        "null",
        "--ranking.tau",
        "null",
        "--evaluation.zero_shot.limit",
        "5",
    ]
    assert nested_nulls(["--print_config", "--evaluation.y.z"], options) == [
        "--print_config",
        "--evaluation.y.z",
    ]
