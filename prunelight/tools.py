"""The subcommands that work on finished runs rather than on a model: ``report``, ``compare``, ``experiment``.

They are jsonargparse parsers (``--config``, ``--print_config`` and ``--key value`` work as for every other
subcommand), dispatched by :func:`prunelight.main.main` before LightningCLI, which would otherwise insist on
a model and a trainer.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from jsonargparse import ActionConfigFile, ArgumentParser, Namespace


def _report_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="prunelight report",
        description="Rebuild the diagnosis, plots, TensorBoard events and summary.md of finished prune runs "
        "from their analysis/ JSON.",
    )
    parser.add_argument("runs", nargs="+", type=str, help="Run folders (each holding analysis/).")
    return parser


def _compare_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="prunelight compare",
        description="Put finished prune runs side by side: compare.md (a table) and compare_rates.png.",
    )
    parser.add_argument("runs", nargs="+", type=str, help="Run folders (each holding analysis/).")
    parser.add_argument(
        "--output", type=str, default="comparison", help="Folder for compare.md and the plot."
    )
    return parser


def _experiment_parser() -> ArgumentParser:
    from prunelight.experiment import Experiment

    parser = ArgumentParser(
        prog="prunelight experiment",
        description="Run a resumable grid of prune runs and write one table (and a heatmap).",
    )
    parser.add_argument(
        "--config", action=ActionConfigFile, help="An experiment YAML (configs/study_*.yaml)."
    )
    parser.add_class_arguments(Experiment, None, as_positional=False)
    return parser


def _report(config: Namespace) -> None:
    from prunelight.reports import rebuild

    for run in config.runs:
        for path in rebuild(Path(run)):
            print(path)


def _compare(config: Namespace) -> None:
    from prunelight.reports import compare

    for path in compare([Path(r) for r in config.runs], Path(config.output)):
        print(path)


def _experiment(config: Namespace) -> None:
    from prunelight.experiment import Experiment, run_experiment

    settings = {k: v for k, v in vars(config).items() if k != "config" and not k.startswith("__")}
    experiment = Experiment(**settings)
    run_experiment(experiment)
    print(experiment.folder / "experiment.md")


TOOLS: dict[str, tuple[Callable[[], ArgumentParser], Callable[[Namespace], None]]] = {
    "report": (_report_parser, _report),
    "compare": (_compare_parser, _compare),
    "experiment": (_experiment_parser, _experiment),
}


def run_tool(name: str, argv: list[str]) -> None:
    build, run = TOOLS[name]
    parser = build()
    parser.exit_on_error = False  # main() prints a parser error as one line
    run(parser.parse_args(argv))
