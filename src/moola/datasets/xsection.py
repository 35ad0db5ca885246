"""Cross-sectional labels and processors of the ranking journey, vectorised over dates.

* ``forward_returns``: one column per horizon, each stock on its own rows, never across a gap
  in its own bars (against the union calendar) nor past its last bar.
* Processors, scikit-learn style (``__init__`` stores parameters, ``fit`` returns self, learned
  state ends in ``_``): ``CSRankNorm`` and ``CSZScoreNorm`` work per date and learn nothing;
  ``RobustZScoreNorm`` learns median and MAD on the rows it is fitted on (the training dates
  only); ``Fillna``. ``Processors`` chains them, typed by ``ProcessorConfig`` and serialised to
  JSON so a run directory can store the fitted state and ``predict`` can apply it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import Annotated, Any, Literal

import numpy as np
import polars as pl
from pydantic import Field

from moola.config import Config

__all__ = [
    "ENTRIES",
    "CSRankNorm",
    "CSZScoreNorm",
    "Fillna",
    "ProcessorConfig",
    "Processors",
    "RobustZScoreNorm",
    "forward_returns",
    "label_horizon_bars",
    "processor_config",
]

Entry = Literal["next_close", "close"]
ENTRIES: tuple[Entry, ...] = ("next_close", "close")
DATE = "ts"
QLIB_RANK_SCALE = 3.46  # Qlib's CSRankNorm: (rank_pct - 0.5) * 3.46, about unit variance
MAD_TO_STD = 1.4826  # MAD of a normal sample x this = its standard deviation


def label_horizon_bars(horizon: int, entry: Entry) -> int:
    """Bars after t a label of ``horizon`` days reads: h (entry at t's close) or h + 1 (entry at
    the next close, Qlib's convention). The purge of a split is the largest of these."""
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    if entry not in ENTRIES:
        raise ValueError(f"entry {entry!r}: choose one of {', '.join(ENTRIES)}")
    return horizon + (1 if entry == "next_close" else 0)


def forward_returns(bars: pl.DataFrame, horizons: Sequence[int] = (1, 5, 10, 20), *,
                    entry: Entry = "next_close", price: str = "adj_close") -> pl.DataFrame:
    """``symbol, ts, ret_{h}...`` in ``bars``' row order (sorted by symbol, ts).

    ``entry="next_close"`` (Qlib's ``Ref($close, -h-1) / Ref($close, -1) - 1``): bought at the
    close after t, sold h days later, ``P[t+1+h] / P[t+1] - 1``; ``entry="close"``:
    ``P[t+h] / P[t] - 1``. The bars read must be the next consecutive days of the union calendar
    for that stock (a gap in its own bars, its last bars, or a missing or non-positive price make
    the label NaN): a label is never borrowed across a gap or from another stock.
    """
    if entry not in ENTRIES:
        raise ValueError(f"entry {entry!r}: choose one of {', '.join(ENTRIES)}")
    hs = list(horizons)
    if (not hs or any(isinstance(h, bool) or not isinstance(h, int | np.integer) or h < 1 for h in hs)
            or len(set(hs)) != len(hs)):
        raise ValueError(f"horizons must be unique integers >= 1, got {hs}")
    hs = [int(h) for h in hs]
    missing = [c for c in ("symbol", DATE, price) if c not in bars.columns]
    if missing:
        raise ValueError(f"forward_returns: bars lack column(s) {missing}; have {bars.columns} "
                         f"(returns are computed from {price!r})")
    unordered = bars.select((pl.col(DATE) <= pl.col(DATE).shift(1).over("symbol")).sum()).item()
    if unordered:
        raise ValueError(f"forward_returns: '{DATE}' must increase strictly within each symbol "
                         f"({unordered} rows repeat or go back); sort bars by symbol, ts and drop duplicates")
    cal = bars.get_column(DATE).unique().sort()
    pos = np.searchsorted(cal.to_numpy(), bars.get_column(DATE).to_numpy())
    off = 1 if entry == "next_close" else 0
    p = pl.col(price).cast(pl.Float64)
    p = pl.when(p > 0).then(p).otherwise(None)
    frame = bars.select("symbol", DATE, p.alias("_p")).with_columns(_pos=pl.Series(pos, dtype=pl.Int64))
    out = []
    for h in hs:
        a, b = off, off + h

        def ahead(col: str, k: int) -> pl.Expr:
            return pl.col(col).shift(-k).over("symbol") if k else pl.col(col)

        consecutive = (ahead("_pos", b) - pl.col("_pos")) == b  # rows t..t+b are calendar days t..t+b
        r = pl.when(consecutive).then(ahead("_p", b) / ahead("_p", a) - 1.0).otherwise(None)
        out.append(r.fill_null(float("nan")).alias(f"ret_{h}"))
    return frame.select("symbol", DATE, *out)


# ---- processors -------------------------------------------------------------------------


def _nan_to_null(cols: Sequence[str]) -> list[pl.Expr]:
    return [pl.col(c).cast(pl.Float64).fill_nan(None).alias(c) for c in cols]


def _on_dates(frame: pl.DataFrame, dates: Iterable[Any] | pl.Series | None, who: str) -> pl.DataFrame:
    """The rows of ``frame`` whose ``ts`` is one of ``dates`` (all rows when None): the training
    dates a processor may learn from. ``datetime.date`` values match a datetime ``ts`` by day."""
    if dates is None:
        return frame
    d = dates if isinstance(dates, pl.Series) else pl.Series(DATE, list(dates))
    ts = pl.col(DATE)
    if d.dtype == pl.Date and frame.schema[DATE] != pl.Date:
        ts = ts.dt.date()
    else:
        d = d.cast(frame.schema[DATE])
    out = frame.filter(ts.is_in(d.implode()))
    if out.height == 0:
        raise ValueError(f"{who}.fit: none of the {d.len()} fit dates is in the frame's '{DATE}' column")
    return out


def _nan_as_none(values: Sequence[float]) -> list[float | None]:
    """NaN -> None so the stored state is strict JSON (``from_dict`` reads None back as NaN)."""
    return [None if v != v else v for v in values]


def _check_columns(frame: pl.DataFrame, cols: Sequence[str], who: str) -> None:
    missing = [c for c in (DATE, *cols) if c not in frame.columns]
    if missing:
        raise ValueError(f"{who}: frame lacks column(s) {missing[:8]}; it needs '{DATE}' and the "
                         f"processed columns ({len(cols)})")


class Processor(ABC):
    """``fit(frame, dates)`` -> self, learning (state ends in ``_``) from the rows on ``dates``
    only (all rows when None); ``transform(frame)`` -> a new frame with the processed columns as
    Float64 (NaN = unknown); ``to_dict`` for the run directory."""

    kind: str = "processor"

    def __init__(self, columns: Sequence[str]) -> None:
        self.columns = list(columns)

    def fit(self, frame: pl.DataFrame, dates: Iterable[Any] | pl.Series | None = None) -> Processor:
        _check_columns(frame, self.columns, type(self).__name__)
        return self

    @abstractmethod
    def transform(self, frame: pl.DataFrame) -> pl.DataFrame: ...

    def params(self) -> dict[str, Any]:
        return {}

    def state(self) -> dict[str, Any]:
        return {}

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "columns": self.columns, **self.params(), "state": self.state()}


class CSRankNorm(Processor):
    """Per date: (average rank / n - 0.5) * 3.46 over the stocks with a value (Qlib's CSRankNorm)."""

    kind = "cs_rank"

    def transform(self, frame: pl.DataFrame) -> pl.DataFrame:
        _check_columns(frame, self.columns, "CSRankNorm")
        base = frame.with_columns(_nan_to_null(self.columns))
        exprs = [((pl.col(c).rank("average").over(DATE) / pl.col(c).count().over(DATE) - 0.5)
                  * QLIB_RANK_SCALE).fill_null(float("nan")).alias(c) for c in self.columns]
        return base.with_columns(exprs)


class CSZScoreNorm(Processor):
    """Per date: (x - mean) / std (ddof 1) over the stocks with a value; a constant date gives 0."""

    kind = "cs_zscore"

    def transform(self, frame: pl.DataFrame) -> pl.DataFrame:
        _check_columns(frame, self.columns, "CSZScoreNorm")
        base = frame.with_columns(_nan_to_null(self.columns))
        exprs = []
        for c in self.columns:
            sd = pl.col(c).std().over(DATE)
            z = pl.when(sd > 0).then((pl.col(c) - pl.col(c).mean().over(DATE)) / sd).otherwise(
                pl.when(pl.col(c).is_not_null()).then(0.0))
            exprs.append(z.fill_null(float("nan")).alias(c))
        return base.with_columns(exprs)


class RobustZScoreNorm(Processor):
    """(x - median) / (1.4826 MAD), clipped to +-clip, median and MAD learned on the fitted rows
    (the training dates: later dates never move them); a column with MAD 0 maps to 0."""

    kind = "robust_zscore"

    def __init__(self, columns: Sequence[str], clip: float = 3.0) -> None:
        super().__init__(columns)
        self.clip = clip

    def fit(self, frame: pl.DataFrame, dates: Iterable[Any] | pl.Series | None = None) -> RobustZScoreNorm:
        super().fit(frame)
        base = _on_dates(frame, dates, "RobustZScoreNorm").select(_nan_to_null(self.columns))
        med = base.median().row(0)
        self.median_ = [float("nan") if v is None else float(v) for v in med]
        dev = base.select([(pl.col(c) - m).abs().alias(c) for c, m in zip(self.columns, self.median_,
                                                                             strict=True)])
        self.scale_ = [float("nan") if v is None else float(v) * MAD_TO_STD for v in dev.median().row(0)]
        return self

    def transform(self, frame: pl.DataFrame) -> pl.DataFrame:
        _check_columns(frame, self.columns, "RobustZScoreNorm")
        if not hasattr(self, "median_"):
            raise RuntimeError("RobustZScoreNorm.transform before fit: fit it on the training dates")
        exprs = []
        for c, m, s in zip(self.columns, self.median_, self.scale_, strict=True):
            x = pl.col(c).cast(pl.Float64).fill_nan(None)
            z = ((x - m) / s).clip(-self.clip, self.clip) if s > 0 else pl.when(x.is_not_null()).then(0.0)
            exprs.append(z.fill_null(float("nan")).alias(c))
        return frame.with_columns(exprs)

    def params(self) -> dict[str, Any]:
        return {"clip": self.clip}

    def state(self) -> dict[str, Any]:
        if not hasattr(self, "median_"):
            return {}
        return {"median": _nan_as_none(self.median_), "scale": _nan_as_none(self.scale_)}


class Fillna(Processor):
    """Unknown values (NaN or null) -> ``value``."""

    kind = "fillna"

    def __init__(self, columns: Sequence[str], value: float = 0.0) -> None:
        super().__init__(columns)
        self.value = value

    def transform(self, frame: pl.DataFrame) -> pl.DataFrame:
        _check_columns(frame, self.columns, "Fillna")
        return frame.with_columns([pl.col(c).cast(pl.Float64).fill_nan(None).fill_null(self.value).alias(c)
                                   for c in self.columns])

    def params(self) -> dict[str, Any]:
        return {"value": self.value}


class CSRankConfig(Config):
    """``{kind: cs_rank}``: per-date rank to (pct - 0.5) * 3.46."""

    kind: Literal["cs_rank"] = "cs_rank"


class CSZScoreConfig(Config):
    """``{kind: cs_zscore}``: per-date z-score."""

    kind: Literal["cs_zscore"] = "cs_zscore"


class RobustZScoreConfig(Config):
    """``{kind: robust_zscore, clip: 3}``: median / MAD learned on the training dates."""

    kind: Literal["robust_zscore"] = "robust_zscore"
    clip: float = Field(3.0, gt=0)


class FillnaConfig(Config):
    """``{kind: fillna, value: 0}``: unknown values -> value."""

    kind: Literal["fillna"] = "fillna"
    value: float = 0.0


ProcessorConfig = Annotated[CSRankConfig | CSZScoreConfig | RobustZScoreConfig | FillnaConfig,
                            Field(discriminator="kind")]
KINDS = ("cs_rank", "cs_zscore", "robust_zscore", "fillna")


AnyProcessorConfig = CSRankConfig | CSZScoreConfig | RobustZScoreConfig | FillnaConfig


_CONFIGS: dict[str, type[AnyProcessorConfig]] = {
    "cs_rank": CSRankConfig, "cs_zscore": CSZScoreConfig, "robust_zscore": RobustZScoreConfig,
    "fillna": FillnaConfig,
}


def processor_config(data: dict[str, Any]) -> AnyProcessorConfig:
    """A processor config from a mapping with ``kind`` (cs_rank, cs_zscore, robust_zscore, fillna);
    an unknown kind or key is an error naming it."""
    kind = data.get("kind")
    if kind not in _CONFIGS:
        raise ValueError(f"unknown processor kind {kind!r}; choose one of {', '.join(KINDS)}")
    return _CONFIGS[kind].from_dict(data)


def _build(kind: str, columns: Sequence[str], params: dict[str, Any]) -> Processor:
    if kind == "cs_rank":
        return CSRankNorm(columns)
    if kind == "cs_zscore":
        return CSZScoreNorm(columns)
    if kind == "robust_zscore":
        return RobustZScoreNorm(columns, clip=float(params.get("clip", 3.0)))
    if kind == "fillna":
        return Fillna(columns, value=float(params.get("value", 0.0)))
    raise ValueError(f"unknown processor kind {kind!r}; choose one of {', '.join(KINDS)}")


class Processors:
    """Processors applied in order; ``fit`` fits each on the output of the previous ones."""

    def __init__(self, steps: Sequence[Processor]) -> None:
        self.steps = list(steps)

    @classmethod
    def from_configs(cls, configs: Sequence[Any], columns: Sequence[str]) -> Processors:
        """Unfitted steps for ``columns`` from typed configs (or mappings with ``kind``)."""
        configs = [processor_config(c) if isinstance(c, dict) else c for c in configs]
        return cls([_build(c.kind, columns, c.model_dump(exclude={"kind"})) for c in configs])

    def fit(self, frame: pl.DataFrame, dates: Iterable[Any] | pl.Series | None = None) -> Processors:
        """Fit each step on the ``dates`` rows as the steps before it leave them."""
        frame = _on_dates(frame, dates, "Processors")
        for step in self.steps:
            step.fit(frame)
            frame = step.transform(frame)
        return self

    def transform(self, frame: pl.DataFrame) -> pl.DataFrame:
        for step in self.steps:
            frame = step.transform(frame)
        return frame

    def to_dict(self) -> list[dict[str, Any]]:
        return [s.to_dict() for s in self.steps]

    @classmethod
    def concat(cls, parts: Sequence[Processors]) -> Processors:
        """One pipeline over the columns of several fitted ones with the same steps (column
        chunks): columns and learned state joined in order."""
        if not parts:
            raise ValueError("Processors.concat needs at least one part")
        dicts = [p.to_dict() for p in parts]
        merged = []
        for k, first in enumerate(dicts[0]):
            steps = [d[k] for d in dicts]
            if any(st["kind"] != first["kind"] for st in steps):
                raise ValueError("Processors.concat: parts differ in their steps")
            state = {key: [v for st in steps for v in st["state"][key]] for key in first["state"]}
            merged.append({**first, "columns": [c for st in steps for c in st["columns"]], "state": state})
        return cls.from_dict(merged)

    @classmethod
    def from_dict(cls, data: Sequence[dict[str, Any]]) -> Processors:
        """Rebuild fitted processors from ``to_dict``'s output (nothing is refitted)."""
        steps = []
        for d in data:
            params = {k: v for k, v in d.items() if k not in ("kind", "columns", "state")}
            step = _build(d["kind"], d["columns"], params)
            state = d.get("state") or {}
            if isinstance(step, RobustZScoreNorm):
                if not state:
                    raise ValueError("a stored robust_zscore processor has no fitted state")
                step.median_ = [float("nan") if v is None else float(v) for v in state["median"]]
                step.scale_ = [float("nan") if v is None else float(v) for v in state["scale"]]
            steps.append(step)
        return cls(steps)
