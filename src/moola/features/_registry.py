"""Feature-set descriptions and the name -> set registry (a plain dict, no dotted-path lookups)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal

import polars as pl

FeatureKind = Literal["per_symbol", "panel"]


@dataclass(frozen=True)
class FeatureSpec:
    """One feature: its name, the formula in words, the bars of history it needs, its expression.

    ``lookback`` counts *previous* bars: row ``i`` of a symbol (0-based) is valid when
    ``i >= lookback``; earlier rows are warm-up rows and come out as NaN.
    ``expr`` is evaluated on the adjusted bars of one symbol (the builder adds ``.over("symbol")``
    for per-symbol sets), so it is written as if the frame held a single series.
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
    other parameters (unknown parameter names raise ``TypeError``). ``kind`` says how specs are
    evaluated: ``per_symbol`` wraps each expression in ``.over("symbol")``; ``panel`` evaluates
    them on the whole panel (for cross-sectional features that group themselves).
    """

    name: str
    description: str
    specs: tuple[FeatureSpec, ...]
    params: Mapping[str, Any]
    kind: FeatureKind
    make: Callable[..., FeatureSet] = field(repr=False, compare=False)

    def __post_init__(self) -> None:
        names = self.names
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"feature set {self.name!r} has duplicate feature names: {dup}")
        if self.kind not in ("per_symbol", "panel"):
            raise ValueError(f"feature set {self.name!r}: unknown kind {self.kind!r}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.specs)

    @property
    def max_lookback(self) -> int:
        """Bars of history the slowest feature needs: the minimum warm-up of a symbol."""
        return max((s.lookback for s in self.specs), default=0)

    def with_params(self, **params: Any) -> FeatureSet:
        """The same set rebuilt with some parameters overridden."""
        if not params:
            return self
        return self.make(**{**self.params, **params})


class UnknownFeatureSetError(KeyError):
    """Raised for a feature-set name that is not registered; the message lists the known ones."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(name)
        self.name = name
        self.known = known

    def __str__(self) -> str:
        return f"unknown feature set {self.name!r}; known feature sets: {', '.join(self.known)}"


@cache
def _registry() -> dict[str, FeatureSet]:
    """Build every set once with its default parameters (imported here to avoid an import cycle)."""
    from moola.features import alpha158, crypto39, ohlc4, relative11

    sets = (
        ohlc4.feature_set(),
        relative11.feature_set(),
        crypto39.feature_set(),
        alpha158.feature_set(),
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
