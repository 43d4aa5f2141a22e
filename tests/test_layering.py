"""The package's floors, read from the code's own imports: every import runs down, none runs in a circle.

prunelight is layered along its data flow (docs/design.md: Code layout). A module may import its own floor
and the floors below it, never one above; and no two modules import each other, directly or through others,
not even lazily inside a function or under ``TYPE_CHECKING``: a circle is a design that has not decided
which side knows the other. No module imports another module's private (underscore) name either.

The test parses the source (nothing is imported), so it sees lazy imports as well as top-level ones.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

ROOT = Path(os.environ.get("PRUNELIGHT_LAYERING_ROOT") or Path(__file__).resolve().parent.parent)
"""The checkout to read (a variable so that the test can be pointed at an older tree to see it fail)."""

FLOORS: tuple[tuple[str, ...], ...] = (
    # 0: the foundation every floor may use
    ("errors", "io", "measure", "hub", "signals", "run_folder", "registry"),
    # 1: what a model and a corpus are
    ("models", "data"),
    # 2: the algorithms on tensors: scores, plans, removal and masks, saved models
    ("importance", "ranking", "apply", "save"),
    # 3: analysis, and the Lightning pieces that run a model (modules, datamodules, callbacks)
    ("diagnostics", "calibration", "evaluate", "finetune", "callbacks"),
    # 4: what renders the analysis for a person: summary.md, plots, TensorBoard
    ("reports",),
    # 5: the Lightning loops the stages stand on
    ("loops",),
    # 6: one function per stage
    ("stages",),
    # 7: the trainer's subcommand methods
    ("trainer",),
    # 8: the command lines
    ("cli", "tools", "experiment"),
    # 9: the program that dispatches to them
    ("main", "__main__"),
)
"""Each floor's top-level names under ``prunelight`` (a module or a package)."""

PACKAGE_API_FLOOR = 2
"""``prunelight/__init__.py`` re-exports the public API (errors, models, save); it may reach this floor."""


def _module_files() -> dict[str, Path]:
    """Every module of the package by its dotted name; ``callbacks/`` is installed as prunelight.callbacks."""
    files = {}
    places = ((ROOT / "prunelight", "prunelight"), (ROOT / "callbacks", "prunelight.callbacks"))
    for folder, package in places:
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join([package, *parts])] = path
    return files


MODULES = _module_files()


def _floor(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return PACKAGE_API_FLOOR
    for floor, names in enumerate(FLOORS):
        if parts[1] in names:
            return floor
    raise AssertionError(f"{module} is on no floor: add its top-level name to FLOORS (and docs/design.md)")


def _imports(module: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(imported project module, names taken from it, line) for every import of ``module``, lazy ones too."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "prunelight" or alias.name.startswith("prunelight."):
                    found.append((_existing(alias.name), [], node.lineno))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if not (base == "prunelight" or base.startswith("prunelight.")):
                continue
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                if submodule in MODULES:
                    found.append((submodule, [], node.lineno))
                else:
                    found.append((_existing(base), [alias.name], node.lineno))
    return found


def _existing(name: str) -> str:
    while name not in MODULES and "." in name:
        name = name.rpartition(".")[0]
    return name


EDGES = {module: _imports(module, path) for module, path in MODULES.items()}


def test_every_module_is_on_a_floor():
    for module in MODULES:
        _floor(module)


def test_every_import_runs_down():
    upward = [
        f"{module}:{line} imports {target} (floor {_floor(target)} > {_floor(module)})"
        for module, edges in EDGES.items()
        for target, _, line in edges
        if _floor(target) > _floor(module)
    ]
    assert not upward, "imports that run up:\n" + "\n".join(upward)


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each a circle of imports."""
    graph = {m: sorted({t for t, _, _ in edges if t != m and t in MODULES}) for m, edges in EDGES.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return components


def test_no_import_circles():
    assert not _cycles(), "import circles:\n" + "\n".join(" <-> ".join(c) for c in _cycles())


def test_no_private_name_is_imported_from_another_module():
    private = [
        f"{module}:{line} takes {name} from {target}"
        for module, edges in EDGES.items()
        for target, names, line in edges
        for name in names
        if name.startswith("_") and target != module
    ]
    assert not private, "private names imported across modules:\n" + "\n".join(private)


@pytest.mark.parametrize(
    ("source", "ok"),
    [
        ("from prunelight.trainer import PrunelightTrainer", False),  # stages -> trainer runs up
        ("from prunelight.loops import calibrate", True),
        ("from prunelight.models.adapters import _get", None),  # private
    ],
)
def test_the_checks_see_what_they_are_for(tmp_path, source, ok):
    """The walker on a small stage module: an upward import and a private name are found."""
    path = tmp_path / "probe.py"
    path.write_text(f"def lazy():\n    {source}\n")
    ((target, names, _),) = _imports("prunelight.stages.probe", path)
    if ok is None:
        assert names and names[0].startswith("_")
    else:
        assert (_floor(target) <= _floor("prunelight.stages.probe")) is ok
