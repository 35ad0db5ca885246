"""Feature-set descriptions and the name -> set registry (a plain dict, no dotted-path lookups).

A set's schema hash covers its names, order and parameters AND its code: the normalised source
(comments and docstrings dropped) of the module that builds it, of every public
``moola.features`` module that module draws helpers from, of the compiled kernels those modules
name in ``KERNEL_MODULES``, and of the builder's adjustment and warm-up code. So a changed
formula changes the hash and a model trained on the old formula is refused, while a reworded
comment does not. The alternative, a ``version`` bumped by hand, is
forgotten exactly when it matters; hashing the Polars expressions instead would miss the NumPy
kernels some features run through ``map_batches`` (their printed form is just ``python_udf()``).
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import inspect
import sys
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import numpy as np
import polars as pl

from moola._io import did_you_mean

FeatureKind = Literal["per_symbol", "panel"]
Alignment = Literal["bars", "calendar"]


@dataclass(frozen=True)
class FeatureSpec:
    """One feature: its name, the formula in words, the bars of history it needs, its expression.

    ``lookback`` counts *previous* bars: row ``i`` of a symbol (0-based) is valid when
    ``i >= lookback``; earlier rows are warm-up rows and come out as NaN.
    ``expr`` is evaluated on the adjusted bars (plus the set's ``aux`` columns) of the whole
    sorted panel at once: it must be a finite-window expression whose value at row ``i`` reads
    rows ``i - lookback .. i`` only. The builder then NaNs the first ``lookback`` rows of every
    symbol, exactly the rows whose window would reach into the previous symbol.
    """

    name: str
    formula: str
    lookback: int
    expr: pl.Expr | None

    def __post_init__(self) -> None:
        if self.lookback < 0:
            raise ValueError(f"{self.name}: lookback must be >= 0, got {self.lookback}")


@dataclass(frozen=True)
class FeatureSet:
    """A named, ordered list of features plus the parameters that produced it.

    ``make`` is the explicit function that built this set; ``make(**params)`` rebuilds it with
    other parameters (unknown parameter names raise ``TypeError``). ``aux`` are named helper
    columns (e.g. the previous close) computed once before the specs, which may refer to them.
    ``kind``: ``per_symbol`` features depend only on the symbol's own last ``lookback + 1`` bars,
    so one symbol can be served alone; ``panel`` features may also read other symbols' bars
    (cross-sectional ranks), and their expressions do their own grouping. ``align``: ``bars``
    evaluates on the bars as given; ``calendar`` lays every symbol on the frame's calendar first
    (missing days as empty slots, ``_pad`` padding rows before each symbol; see the builder).
    ``kernel``: a compiled evaluation of a ``bars`` set, adjusted bars -> (N, F) float32 in the
    specs' order with inf already NaN, which the builder and ``serve_features`` run instead of
    the expressions (these stay the definition, and a test holds the two equal); its module is
    named in the defining module's ``KERNEL_MODULES`` so its source is part of the code hash.
    """

    name: str
    description: str
    specs: tuple[FeatureSpec, ...]
    params: Mapping[str, Any]
    kind: FeatureKind
    make: Callable[..., FeatureSet] = field(repr=False, compare=False)
    aux: tuple[tuple[str, pl.Expr], ...] = field(default=(), repr=False, compare=False)
    align: Alignment = "bars"
    kernel: Callable[[pl.DataFrame], np.ndarray] | None = field(default=None, repr=False,
                                                                compare=False)

    def __post_init__(self) -> None:
        names = self.names
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"feature set {self.name!r} has duplicate feature names: {dup}")
        if self.kind not in ("per_symbol", "panel"):
            raise ValueError(f"feature set {self.name!r}: unknown kind {self.kind!r}")
        if self.align not in ("bars", "calendar"):
            raise ValueError(f"feature set {self.name!r}: unknown align {self.align!r}; "
                             "valid: bars, calendar")
        if self.kernel is not None and self.align != "bars":
            raise ValueError(f"feature set {self.name!r}: a kernel evaluates bar-count windows "
                             f"only, not align={self.align!r}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.specs)

    @property
    def max_lookback(self) -> int:
        """Bars of history the slowest feature needs: the minimum warm-up of a symbol."""
        return max((s.lookback for s in self.specs), default=0)

    @property
    def code_hash(self) -> str:
        """Hash of the code that computes this set (see the module docstring)."""
        return code_hash(self.make)

    @property
    def schema_hash(self) -> str:
        """Names, order, parameters and code: what a model trained on this set depends on."""
        from moola.features._matrix import schema_hash

        return schema_hash(self.name, self.names, dict(self.params), code=self.code_hash)

    @property
    def legacy_schema_hash(self) -> str:
        """The hash run directories written before code hashing carry (names and parameters)."""
        from moola.features._matrix import schema_hash

        return schema_hash(self.name, self.names, dict(self.params))

    def with_params(self, **params: Any) -> FeatureSet:
        """The same set rebuilt with some parameters overridden."""
        if not params:
            return self
        return self.make(**{**self.params, **params})


def _normalised_source(obj: ModuleType | Callable[..., Any] | Path) -> str:
    """Source without comments, docstrings or layout: only a change in code changes it. A path
    is read as a file (a kernel module, hashed without importing its compiler)."""
    try:
        src = obj.read_text() if isinstance(obj, Path) else inspect.getsource(obj)
    except (OSError, TypeError) as e:
        raise RuntimeError(f"cannot read the source of {obj!r} to hash its formulas: {e}") from e
    tree = ast.parse(textwrap.dedent(src))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
                and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.unparse(tree)


def formula_modules(make: Callable[..., Any]) -> tuple[str, ...]:
    """The module defining ``make`` plus the public ``moola.features`` modules it draws names
    from, transitively (relative11 -> ohlc4, alpha158), sorted."""
    seen: set[str] = set()
    todo = [make.__module__]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for value in vars(sys.modules[name]).values():
            dep = value.__name__ if isinstance(value, ModuleType) else getattr(value, "__module__", None)
            if (isinstance(dep, str) and dep.startswith("moola.features.")
                    and not dep.rsplit(".", 1)[1].startswith("_") and dep not in seen):
                todo.append(dep)
    return tuple(sorted(seen))


@cache
def _code_hash(modules: tuple[str, ...]) -> str:
    from moola.features import _build

    parts = [_normalised_source(sys.modules[m]) for m in modules]
    for m in modules:  # the compiled kernels a module runs, read from their files
        for kernel in getattr(sys.modules[m], "KERNEL_MODULES", ()):
            spec = importlib.util.find_spec(kernel)
            if spec is None or spec.origin is None:
                raise RuntimeError(f"{m}.KERNEL_MODULES names {kernel!r}, which has no source file")
            parts.append(_normalised_source(Path(spec.origin)))
    # the builder's price adjustment, inf -> NaN and warm-up rules change every value too
    parts += [_normalised_source(f) for f in (
        _build.adjusted_bars, _build.compute_features, _build._bar_values, _build._kernel_values,
        _build.calendar_frame, _build._calendar_values)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def code_hash(make: Callable[..., Any]) -> str:
    """Hash of the normalised source behind a feature set built by ``make``."""
    return _code_hash(formula_modules(make))


class UnknownFeatureSetError(KeyError):
    """Raised for a feature-set name that is not registered; the message lists the known ones."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(name)
        self.name = name
        self.known = known

    def __str__(self) -> str:
        return (f"unknown feature set {self.name!r}{did_you_mean(self.name, self.known)}; known feature "
                f"sets: {', '.join(self.known)}")


@cache
def _registry() -> dict[str, FeatureSet]:
    """Build every set once with its default parameters (imported here to avoid an import cycle)."""
    from moola.features import alpha158, alpha360, crypto39, ohlc4, relative11

    sets = (
        ohlc4.feature_set(),
        relative11.feature_set(),
        crypto39.feature_set(),
        alpha158.feature_set(),
        alpha360.feature_set(),
    )
    return {fs.name: fs for fs in sets}


def list_feature_sets() -> list[FeatureSet]:
    """All registered sets, with their default parameters, in a fixed order."""
    return list(_registry().values())


def get_feature_set(name: str, **params: Any) -> FeatureSet:
    """The set called ``name``, optionally rebuilt with overridden parameters."""
    reg = _registry()
    if name not in reg:
        raise UnknownFeatureSetError(name, list(reg))
    return reg[name].with_params(**params)


def feature_table_markdown() -> str:
    """Markdown reference of every set and feature, generated so docs/features.md cannot drift."""
    lines = [
        "# Feature sets",
        "",
        "Generated by `moola.features.feature_table_markdown()`; do not edit by hand.",
        "",
        "All sets take canonical bars. When `adj_close` is present (stocks) prices are split- and",
        "dividend-adjusted first, Qlib style: `factor = adj_close / close`; open, high, low and",
        "close are multiplied by `factor` and volume is divided by it. Features are computed per",
        "symbol; `lookback` is the number of previous bars a feature needs, and the first",
        "`lookback` rows of each symbol are NaN (warm-up).",
        "",
    ]
    for fs in list_feature_sets():
        params = ", ".join(f"`{k}={v}`" for k, v in fs.params.items()) or "none"
        lines += [
            f"## `{fs.name}` ({len(fs.specs)} features, {fs.kind})",
            "",
            fs.description,
            "",
            f"Parameters: {params}. Longest look-back: {fs.max_lookback} bars.",
            "",
            "| # | name | look-back | formula |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {i} | `{s.name}` | {s.lookback} | `{_escape_cell(s.formula)}` |"
            for i, s in enumerate(fs.specs, 1)
        ]
        lines.append("")
    return "\n".join(lines)


def _escape_cell(text: str) -> str:
    """Escape the pipe, the one character that breaks a Markdown table cell."""
    return text.replace("|", "\\|")
