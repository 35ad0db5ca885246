"""The import graph of the package, checked on every import statement (including imports inside
functions and under ``TYPE_CHECKING``):

* layers: every package and root module of ``src/moola`` has a place in ``ORDER`` and imports
  only its own package and those placed before it (arrows point down, never back);
* pipelines are independent jobs: a pipelines module never imports another public pipelines
  module (private helpers such as ``moola.pipelines._progress`` are shared);
* a package's private modules (``moola.x._y``) and private names are its own: from outside
  ``moola.x`` they are reached through ``moola.x``'s public names. The one exception is the
  root-private ``moola._io`` (durable writes and provenance, used everywhere), ``moola._warnings``
  (warning classes the CLI filters without importing torch) and ``moola._storage``
  (database URLs and the one cross-process lock that tuning studies and the MLflow store share).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "moola"

# Lowest first. ``_io``, ``_warnings``, ``refs`` and ``config`` import no other part of moola (``_storage``
# only ``_io``). The base
# packages: bars (data) -> features -> windows and splits (datasets) -> networks (models) ->
# the training loop (training) -> masked pretraining (pretraining, uses the Trainer) ->
# metrics and reports (evaluation) -> serving (inference: a Predictor over a trained run) ->
# experiment tracking (tracking) -> promotion gates and the model registry (registry: reads run
# manifests and metrics, stores versions in MLflow) -> the dry-run runtime (runtime: serves
# registry members on a feed into a ledger). Above them the applications: pipelines (one job each),
# sweeps and tuning (run pipelines), the demo (runs everything) and the CLI.
BASE_ORDER = ("_io", "_warnings", "_storage", "refs", "config", "data", "features", "datasets", "models",
              "training", "pretraining", "evaluation", "inference", "tracking", "registry", "runtime")
APP_ORDER = ("pipelines", "sweeps", "demo", "cli")
ORDER = BASE_ORDER + APP_ORDER
ROOT_PRIVATE_OK = frozenset({"moola._io", "moola._warnings", "moola._storage"})


def _module_name(path: Path, src: Path = SRC) -> str:
    rel = path.relative_to(src).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(["moola", *parts])


def _top(module: str) -> str | None:
    """The placed unit of a moola module: ``moola.data._store`` -> ``data``; the root package
    ``moola`` itself (its ``__version__``) -> None, which any module may import."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _is_module(module: str, src: Path) -> bool:
    rel = Path(*module.split(".")[1:])
    return (src / rel).with_suffix(".py").is_file() or (src / rel / "__init__.py").is_file()


def imports(path: Path, src: Path = SRC) -> Iterator[tuple[int, str, str | None]]:
    """(line, imported moola module, imported name or None) for every import statement;
    ``from moola.x import y`` counts as importing module ``moola.x.y`` when that is a module."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "moola" or a.name.startswith("moola."):
                    yield node.lineno, a.name, None
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and (
            node.module == "moola" or node.module.startswith("moola.")
        ):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                if _is_module(sub, src):
                    yield node.lineno, sub, None
                else:
                    yield node.lineno, node.module, a.name


def problem(importer: str, target: str, name: str | None = None) -> str | None:
    """Why module ``importer`` may not import ``target`` (``name`` from it), or None."""
    mine, theirs = _top(importer), _top(target)
    if theirs is None or mine is None:
        return None
    if mine not in ORDER or theirs not in ORDER:
        unplaced = mine if mine not in ORDER else theirs
        return (f"moola.{unplaced} has no place in the layer order: add it to BASE_ORDER or "
                f"APP_ORDER in tests/test_architecture.py, above every package it imports")
    if ORDER.index(theirs) > ORDER.index(mine):
        return f"{mine} is below {theirs} in the layer order ({' -> '.join(ORDER)})"
    if mine == theirs == "pipelines":
        own, other = importer.split(".")[2:3], target.split(".")[2:3]
        if other and other != own and not other[0].startswith("_"):
            return "pipelines never import each other (share code through a private helper module)"
    if mine != theirs and target not in ROOT_PRIVATE_OK:
        private = [p for p in target.split(".")[2:] if p.startswith("_")]
        if private or (name is not None and name.startswith("_")):
            return (f"{target}{'.' + name if name else ''} is private to moola.{theirs}: "
                    f"import it from moola.{theirs} (export it there if it is needed outside)")
    return None


MODULES = sorted(SRC.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_follow_the_layers_and_respect_privacy(path: Path) -> None:
    me = _module_name(path)
    bad = [f"src/moola/{path.relative_to(SRC)}:{line} imports {mod}{'.' + name if name else ''}: {why}"
           for line, mod, name in imports(path) if (why := problem(me, mod, name))]
    assert not bad, "\n".join(bad)


def test_every_package_and_root_module_is_placed() -> None:
    units = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    units |= {p.stem for p in SRC.glob("*.py") if p.stem != "__init__"}
    unplaced = sorted(units - set(ORDER))
    assert not unplaced, (f"src/moola/{unplaced[0]} has no place in the layer order: add "
                          f"{unplaced} to BASE_ORDER or APP_ORDER in tests/test_architecture.py")
    assert not set(ORDER) - units, f"ORDER lists what no longer exists: {sorted(set(ORDER) - units)}"


def test_the_checks_catch_each_kind_of_bad_import(tmp_path: Path) -> None:
    pkg = tmp_path / "moola"
    (pkg / "pipelines").mkdir(parents=True)
    (pkg / "pipelines" / "__init__.py").write_text("")
    (pkg / "pipelines" / "oof.py").write_text("")
    fake = pkg / "pipelines" / "train.py"
    fake.write_text("import moola\nfrom moola.pipelines import oof, _progress\n"
                    "def f():\n    from moola.sweeps import run_sweep\n")
    assert list(imports(fake, pkg)) == [
        (1, "moola", None), (2, "moola.pipelines.oof", None), (2, "moola.pipelines", "_progress"),
        (4, "moola.sweeps", "run_sweep")]
    assert "below sweeps" in str(problem("moola.pipelines.train", "moola.sweeps", "run_sweep"))
    assert "below training" in str(problem("moola.data._store", "moola.training.checkpoint"))
    assert "each other" in str(problem("moola.pipelines.train", "moola.pipelines.oof"))
    assert "private to moola.data" in str(problem("moola.datasets.labeled", "moola.data._schema"))
    assert "private to moola.data" in str(problem("moola.features.x", "moola.data", "_helper"))
    assert "no place" in str(problem("moola.newpkg.x", "moola.data"))
    for ok in (("moola.pipelines.train", "moola.pipelines._progress"),  # a private helper
               ("moola.data._store", "moola.data._schema"),  # inside its own package
               ("moola.sweeps._tune", "moola._io"),  # the root-private writer
               ("moola.training.checkpoint", "moola"),  # the root package (__version__)
               ("moola.cli._app", "moola.data")):
        assert problem(*ok) is None, ok
