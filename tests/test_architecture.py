"""Arrows point one way: cli -> demo -> sweeps -> pipelines -> {data, features, datasets, models,
training, pretraining, evaluation, tracking}, and never back. Checked on every import
statement of the package, including imports inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "moola"
# higher number = higher layer; a module may import its own layer or lower ones only
LAYER = {"cli": 5, "demo": 4, "sweeps": 3, "pipelines": 2}
BASE = 1  # data, features, datasets, models, training, pretraining, evaluation, tracking, config, refs


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYER.get(parts[1], BASE) if parts[0] == "moola" and len(parts) > 1 else 0


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
    return out


MODULES = sorted(SRC.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_no_module_imports_a_higher_layer(path):
    rel = path.relative_to(SRC).with_suffix("")
    me = _layer("moola." + ".".join(rel.parts))
    bad = [f"{path.relative_to(SRC)}:{line} imports {mod}" for line, mod in _imports(path)
           if mod.startswith("moola.") and _layer(mod) > me]
    assert not bad, "\n".join(bad)


def test_the_layer_check_itself_catches_a_back_arrow(tmp_path):
    fake = tmp_path / "x.py"
    fake.write_text("def f():\n    from moola.sweeps import run_sweep\n")
    assert _imports(fake) == [(2, "moola.sweeps")]
    assert _layer("moola.sweeps") > _layer("moola.pipelines.train") > _layer("moola.training.trainer")
