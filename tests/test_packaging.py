"""Packaging: every package folder goes into the wheel, and the wheel adds one top-level name, ``prunelight``.

The editable install of the development environment finds every folder whether it is packaged or not, so
only a built wheel shows what ``pip install .`` really installs. ``scripts/check_wheel.sh`` (run by CI)
installs that wheel into a fresh environment and imports every module from it.
"""

from __future__ import annotations

import configparser
import importlib
import pkgutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import prunelight

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"prunelight": ROOT / "prunelight", "prunelight.callbacks": ROOT / "callbacks"}
"""Installed package name -> the repository folder it is built from (setup.cfg's package_dir)."""


def _python_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*.py") if "__pycache__" not in p.parts]


def _package_folders() -> dict[str, Path]:
    """Every folder holding Python files, by the dotted name it is installed under."""
    found = {}
    for name, root in SOURCES.items():
        for folder in sorted({p.parent for p in _python_files(root)}):
            relative = folder.relative_to(root).parts
            found[".".join((name, *relative))] = folder
    return found


def _setup_cfg() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    return config


def _listed(key: str) -> list[str]:
    return [line.strip() for line in _setup_cfg()["options"][key].strip().splitlines() if line.strip()]


def test_every_package_folder_is_listed_and_is_a_package():
    folders = _package_folders()
    assert sorted(folders) == sorted(_listed("packages"))
    assert [name for name, folder in folders.items() if not (folder / "__init__.py").is_file()] == []


def test_package_dir_maps_the_callbacks_folder():
    assert _listed("package_dir") == ["prunelight.callbacks = callbacks"]
    assert "py_modules" not in _setup_cfg()["options"]  # train.py stays a script of the repository


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(out)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (path,) = out.glob("prunelight-*.whl")
    return path


def test_wheel_holds_every_module_under_one_top_level_name(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = set()
    for name, root in SOURCES.items():
        prefix = name.replace(".", "/")
        expected |= {f"{prefix}/{p.relative_to(root).as_posix()}" for p in _python_files(root)}
    assert sorted(expected - names) == []
    top = {n.split("/")[0] for n in names}
    assert top == {"prunelight", f"prunelight-{prunelight.__version__}.dist-info"}
    dist_info = f"prunelight-{prunelight.__version__}.dist-info"
    assert zipfile.ZipFile(wheel).read(f"{dist_info}/top_level.txt").decode().split() == ["prunelight"]


def test_every_module_imports():
    """Every module of the installed layout imports (in the development environment: a circle of imports or
    a module that needs an undeclared package fails here before it fails a user)."""
    modules = [
        info.name
        for info in pkgutil.walk_packages(prunelight.__path__, "prunelight.")
        if "__main__" not in info.name
    ]
    callbacks = pkgutil.iter_modules([str(SOURCES["prunelight.callbacks"])])
    modules += [f"prunelight.callbacks.{m.name}" for m in callbacks]
    assert "prunelight.stages.prune" in modules and "prunelight.callbacks.importance" in modules
    for name in modules:
        importlib.import_module(name)


def test_a_source_tree_without_install_imports_the_callbacks():
    """``PYTHONPATH=<repository>`` without an install (the benchmarks on a GPU machine): the repository's
    callbacks/ folder is ``prunelight.callbacks`` there too (setup.cfg maps it only in an install)."""
    code = (
        "import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'Editable' not in "
        "getattr(f, '__name__', type(f).__name__)]; import prunelight.callbacks.mask as m; print(m.__file__)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert Path(done.stdout.strip()) == ROOT / "callbacks" / "mask.py"
