"""Rule-based pattern labeler: consolidation / retracement in 105-bar windows of real prices.

Each window is labeled from its own bars only (its ATR included), so a label never looks
past the window's last bar. Rules, thresholds and the class balance: ``docs/labeler.md``;
thresholds: ``LabelerConfig`` / ``configs/labeler.yaml``. ``match_window`` is the rule on
one window; ``scan_windows`` applies it to every candidate window at once (same result).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Literal, Self

import numpy as np
import polars as pl
from pydantic import Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from moola._io import atomic_write
from moola.config import MAX_BARS, Config
from moola.data import TS_DTYPE, Store, Timeframe, mark_gaps
from moola.datasets.labeled import LabeledWindows, _to_utc_ts
from moola.datasets.tasks import calendar_positions
from moola.datasets.windows import WindowSet, flag_prefix, symbol_ranges
from moola.features import FeatureMatrix, adjusted_bars, build_features

__all__ = [
    "CLASSES",
    "LABEL_COLUMNS",
    "LabelerConfig",
    "Match",
    "build_pool",
    "candidate_windows",
    "class_balance",
    "label_windows",
    "make_labels_file",
    "match_window",
    "prepare_bars",
    "scan_windows",
    "select_labels",
]

ClassName = Literal["consolidation", "retracement"]
CLASS_ORDER: tuple[ClassName, ...] = ("consolidation", "retracement")
CLASSES: tuple[str, ...] = CLASS_ORDER
# The labels-file columns (what load_labels reads); the diagnostics follow them.
LABEL_COLUMNS: tuple[str, ...] = ("symbol", "end_ts", "label", "pointer_start", "pointer_end")
DIAGNOSTIC_COLUMNS: tuple[str, ...] = (
    "direction", "impulse_start", "impulse_end", "atr", "impulse_atr", "range_atr", "retrace",
    "score", "start_ts",
)
BarSource = pl.DataFrame | Store | str | Path


class LabelerConfig(Config):
    """Every threshold of the pattern labeler, in one place (see docs/labeler.md)."""

    window: int = Field(105, ge=2, le=MAX_BARS, description="bars per window")
    atr_period: int = Field(14, ge=1, le=MAX_BARS, description="ATR = mean of this many true ranges")
    impulse_atr: float = Field(4.0, gt=0, description="impulse >= impulse_atr x ATR[a]")
    impulse_max_bars: int = Field(15, ge=1, le=MAX_BARS, description="impulse: b - a <= this")
    min_len: int = Field(10, ge=1, le=MAX_BARS, description="consolidation: at least this many bars")
    range_atr: float = Field(2.5, gt=0, description="consolidation: range <= range_atr x ATR[a]")
    hold_max: float = Field(
        0.382, gt=0, lt=1, description="consolidation: every close gives back < this x impulse"
    )
    retrace_min: float = Field(0.382, gt=0, lt=1, description="retracement: ratio >= this")
    retrace_max: float = Field(0.786, gt=0, lt=1, description="retracement: ratio <= this")
    retrace_min_bars: int = Field(3, ge=1, le=MAX_BARS, description="retracement: counter-move >= this")
    retrace_max_bars: int = Field(15, ge=1, le=MAX_BARS, description="retracement: counter-move <= this")
    end_slack: int = Field(5, ge=1, le=MAX_BARS,
                           description="pattern ends in the window's last end_slack bars")
    priority: list[ClassName] = Field(
        default_factory=lambda: list(CLASS_ORDER),
        description="class order for two patterns ending on the same bar",
    )
    max_per_symbol: int | None = Field(None, ge=1, description="cap on labels per symbol")
    skip_degenerate: bool = Field(True, description="skip windows with volume <= 0 or high == low")
    label_from: date | None = Field(
        date(2015, 1, 1), description="labeled windows start on or after this day (UTC)"
    )
    label_to: date | None = Field(None, description="labeled windows end on or before this day")
    feature_set: str = Field("ohlc4", description="candidates = valid windows of this feature set")

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        """Cross-field rules, each reported under its own key, all at once."""
        errs: list[tuple[str, str]] = []
        if self.retrace_min >= self.retrace_max:
            errs.append(("retrace_min", f"must be < retrace_max ({self.retrace_max})"))
        if self.retrace_min_bars > self.retrace_max_bars:
            errs.append(("retrace_min_bars", f"must be <= retrace_max_bars ({self.retrace_max_bars})"))
        if sorted(self.priority) != sorted(CLASSES):
            errs.append(("priority", f"must list each of {list(CLASSES)} exactly once"))
        if self.label_from and self.label_to and self.label_from > self.label_to:
            errs.append(("label_from", f"is after label_to ({self.label_to})"))
        if self.first_impulse_end + 2 > self.window:
            errs.append(("window", f"leaves no bar after atr_period + impulse_max_bars + 1 "
                                   f"({self.first_impulse_end + 1})"))
        if errs:
            raise ValidationError.from_exception_data(type(self).__name__, [
                InitErrorDetails(type=PydanticCustomError("labeler_config", msg),
                                 loc=(key,), input=getattr(self, key))
                for key, msg in errs
            ])
        return self

    @property
    def first_impulse_end(self) -> int:
        """Earliest window offset an impulse may end at: its look-back and ATR fit inside."""
        return self.atr_period + self.impulse_max_bars


@dataclass(frozen=True)
class Match:
    """One window's pattern: the label, pointer bars, and the numbers that justified it."""

    label: str
    pointer_start: int  # window offset of the pattern's first bar
    pointer_end: int  # window offset of the pattern's last bar
    direction: int  # +1 up impulse, -1 down impulse
    impulse_start: int  # window offset a (the impulse's first close)
    impulse_end: int  # window offset b (the impulse's last close)
    atr: float  # ATR[a]: mean true range of the atr_period bars ending at a
    impulse_atr: float  # |close[b] - close[a]| / ATR[a]
    range_atr: float  # consolidation: (max high - min low) / ATR[a]; retracement: NaN
    retrace: float  # retracement ratio; consolidation: deepest close give-back ratio

    @property
    def score(self) -> float:
        """Strength used to pick one window per block: the impulse size in ATR units."""
        return self.impulse_atr


def _true_range(high: np.ndarray, low: np.ndarray, close: np.ndarray) -> np.ndarray:
    """True range of bars 1.. (bar 0 has no previous close in the window: NaN)."""
    tr = np.full(close.shape[0], np.nan)
    prev = close[:-1]
    tr[1:] = np.maximum(high[1:], prev) - np.minimum(low[1:], prev)
    return tr


def _atr(high: np.ndarray, low: np.ndarray, close: np.ndarray, period: int) -> np.ndarray:
    """ATR[t] = mean(TR[t-period+1 .. t]); NaN until period true ranges exist in the array.

    Summed left to right over each run of ``period`` values (not a running cumsum), so a
    window's ATR is bit for bit the same computed on the window alone or on the whole symbol.
    """
    tr = _true_range(high, low, close)
    n = close.shape[0]
    out = np.full(n, np.nan)
    if n > period:
        acc = tr[1 : n - period + 1].copy()
        for j in range(1, period):
            acc += tr[1 + j : n - period + 1 + j]
        out[period:] = acc / period
    return out


def _impulses(
    close: np.ndarray, atr: np.ndarray, cfg: LabelerConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Candidate impulses (b, direction, a, size in ATR) ending at each allowed bar b.

    For an up impulse, a is the lowest close of the impulse_max_bars bars before b and
    close[b] must be the highest close of [a, b]; down is the mirror image.
    """
    m = cfg.impulse_max_bars
    b = np.arange(cfg.first_impulse_end, close.shape[0] - 1)
    look = b[:, None] - m + np.arange(m)[None, :]  # (B, m) bars b-m .. b-1
    seg = close[look]
    out_b, out_d, out_a, out_k = [], [], [], []
    for d in (1, -1):
        j = np.argmin(d * seg, axis=1)
        a = look[np.arange(b.size), j]
        move = d * (close[b] - close[a])
        # close[b] must top every close between a and b (for d = +1)
        after_a = np.arange(m)[None, :] >= j[:, None]
        top = np.where(after_a, d * seg, -np.inf).max(axis=1) <= d * close[b]
        with np.errstate(divide="ignore", invalid="ignore"):
            k = move / atr[a]
        ok = top & (atr[a] > 0) & (k >= cfg.impulse_atr)
        out_b.append(b[ok])
        out_d.append(np.full(int(ok.sum()), d))
        out_a.append(a[ok])
        out_k.append(k[ok])
    return (
        np.concatenate(out_b), np.concatenate(out_d), np.concatenate(out_a), np.concatenate(out_k)
    )


def match_window(
    high: np.ndarray, low: np.ndarray, close: np.ndarray, cfg: LabelerConfig
) -> Match | None:
    """The pattern of one window (arrays of ``cfg.window`` adjusted bars), or None.

    Reads only these bars. Of all patterns found, the one ending latest wins, then
    ``cfg.priority``, then the larger impulse, then the later impulse end.
    """
    w = close.shape[0]
    if not high.shape == low.shape == close.shape == (cfg.window,):
        raise ValueError(f"expected 3 arrays of {cfg.window} bars, got {close.shape}")
    if not (np.isfinite(high).all() and np.isfinite(low).all() and np.isfinite(close).all()):
        raise ValueError("window holds a missing or non-finite price")
    atr = _atr(high, low, close, cfg.atr_period)
    bs, ds, as_, ks = _impulses(close, atr, cfg)
    if bs.size == 0:
        return None
    last_ok = w - cfg.end_slack  # a pattern must end at or after this offset
    cols = np.arange(w)[None, :]
    after = cols > bs[:, None]  # (B, w) bars after the impulse end
    move = ks * atr[as_]
    found: list[Match] = []
    # ---- retracement: the extreme close after b, no close beyond close[b] since
    dc = ds[:, None] * close[None, :]  # direction-signed closes
    peak = ds * close[bs]
    beyond = np.where(after, dc, -np.inf).max(axis=1) > peak
    signed = np.where(after, dc, np.inf)
    rev = signed[:, ::-1]
    e_r = w - 1 - np.argmin(rev, axis=1)  # latest bar holding the extreme
    ratio = (peak - signed[np.arange(bs.size), e_r]) / move
    n_bars = e_r - bs
    ok_r = (
        ~beyond & (ratio >= cfg.retrace_min) & (ratio <= cfg.retrace_max)
        & (n_bars >= cfg.retrace_min_bars) & (n_bars <= cfg.retrace_max_bars) & (e_r >= last_ok)
    )
    for i in np.flatnonzero(ok_r):
        found.append(Match(
            "retracement", int(bs[i]) + 1, int(e_r[i]), int(ds[i]), int(as_[i]), int(bs[i]),
            float(atr[as_[i]]), float(ks[i]), float("nan"), float(ratio[i]),
        ))
    # ---- consolidation: bars b+1.. while the range stays narrow and the impulse holds
    hi = np.where(after, high[None, :], -np.inf)
    lo = np.where(after, low[None, :], np.inf)
    rng = np.maximum.accumulate(hi, axis=1) - np.minimum.accumulate(lo, axis=1)
    give = np.maximum.accumulate(np.where(after, peak[:, None] - dc, -np.inf), axis=1)
    give = give / move[:, None]
    holds = after & (rng <= cfg.range_atr * atr[as_][:, None]) & (give < cfg.hold_max)
    # the consolidation runs from b+1 while every prefix holds: count leading True after b
    run = np.cumprod(np.where(after, holds, True), axis=1).sum(axis=1) - (bs + 1)
    e_c = bs + run
    ok_c = (run >= cfg.min_len) & (e_c >= last_ok)
    for i in np.flatnonzero(ok_c):
        e = int(e_c[i])
        found.append(Match(
            "consolidation", int(bs[i]) + 1, e, int(ds[i]), int(as_[i]), int(bs[i]),
            float(atr[as_[i]]), float(ks[i]), float(rng[i, e] / atr[as_[i]]), float(give[i, e]),
        ))
    if not found:
        return None
    rank: dict[str, int] = {c: i for i, c in enumerate(cfg.priority)}
    return min(found, key=lambda m: (-m.pointer_end, rank[m.label], -m.impulse_atr, -m.impulse_end))


# ------------------------------------------------------------------ bars -> candidate windows
def prepare_bars(source: BarSource) -> pl.DataFrame:
    """Canonical daily bars sorted and gap-marked; a Store (or a store path) is read at 1d."""
    if isinstance(source, (str, Path)):
        source = Store(source)
    bars = source.read(Timeframe.D1) if isinstance(source, Store) else source
    bars = bars.sort("symbol", "ts")
    if "gap_before" not in bars.columns:
        bars = mark_gaps(bars, Timeframe.D1)
    return bars


def _utc(day: date) -> datetime:
    """Midnight UTC of ``day``, to compare with bar timestamps."""
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def candidate_windows(bars: pl.DataFrame, cfg: LabelerConfig) -> WindowSet:
    """The windows the labeler may label: valid ``cfg.feature_set`` windows of ``bars``.

    Valid is what ``LabeledWindows.from_labels`` accepts (one symbol, no gap, no NaN), so no
    label gets rejected. With ``skip_degenerate`` no bar has volume <= 0 or high == low
    (placeholder quotes, like BHF's before its 2017 listing); windows lie in
    [label_from, label_to], which leaves the time before label_from to the unlabeled pool.
    """
    bars = prepare_bars(bars)
    fm = build_features(bars, cfg.feature_set, timeframe=Timeframe.D1)
    ws = WindowSet.from_matrix(fm, cfg.window)
    if cfg.skip_degenerate and len(ws):
        bad = bars.select(
            ((pl.col("volume") <= 0) | (pl.col("high") == pl.col("low"))).fill_null(True)
        ).to_series().to_numpy()
        p = flag_prefix(bad)
        ws = ws.subset(p[ws.starts + cfg.window] == p[ws.starts])
    ts = fm.keys.get_column("ts").cast(TS_DTYPE)
    if cfg.label_from is not None and len(ws):
        first = ts.gather(pl.Series(ws.starts))
        ws = ws.subset((first >= _utc(cfg.label_from)).to_numpy())
    if cfg.label_to is not None and len(ws):
        last = ts.gather(pl.Series(ws.end_rows))
        ws = ws.subset((last < _utc(cfg.label_to + timedelta(days=1))).to_numpy())
    return ws


# ------------------------------------------------------------------ scan: every window at once
def _symbol_matches(
    high: np.ndarray, low: np.ndarray, close: np.ndarray, cfg: LabelerConfig
) -> dict[str, np.ndarray]:
    """Every (impulse, window end) pattern of one symbol, vectorised; ``match_window``'s rules.

    An impulse ending at row b is read from rows b-m-atr_period .. b only, so it is the same in
    every window that contains those rows; what follows b is read up to the window end E, as
    running maxima/minima over t = E - b = 1 .. T. Rows are 0-based within the symbol.
    """
    n, w = close.shape[0], cfg.window
    atr = _atr(high, low, close, cfg.atr_period)
    lead = cfg.first_impulse_end
    t_max = w - 1 - lead  # the latest window end E = b + t still holds rows b-lead .. b
    empty = {k: np.zeros(0, dtype=np.int64) for k in ("end", "label", "b", "e", "dir", "a")}
    if n < w or t_max < 1:
        return {**empty, **{k: np.zeros(0) for k in ("atr", "k", "range", "retrace")}}
    bs, ds, as_, ks = _impulses(close, atr, cfg)
    move = ks * atr[as_]
    peak = ds * close[bs]
    t = np.arange(1, t_max + 1)
    rows = bs[:, None] + t[None, :]  # (I, T) row of the bar b + t (= window end E)
    inside = rows < n
    rows_c = np.minimum(rows, n - 1)
    x = np.where(inside, ds[:, None] * close[rows_c], np.nan)  # direction-signed closes
    # ---- retracement at E = b + t: no close beyond close[b]; e = latest extreme in (b, E]
    run_hi = np.fmax.accumulate(np.where(inside, x, -np.inf), axis=1)
    run_lo = np.fmin.accumulate(np.where(inside, x, np.inf), axis=1)
    new_lo = x <= run_lo
    e_r = np.maximum.accumulate(np.where(new_lo, t[None, :], 0), axis=1)
    ratio = (peak[:, None] - run_lo) / move[:, None]
    ok_r = (
        inside & (run_hi <= peak[:, None]) & (ratio >= cfg.retrace_min)
        & (ratio <= cfg.retrace_max) & (e_r >= cfg.retrace_min_bars)
        & (e_r <= cfg.retrace_max_bars) & (e_r >= t[None, :] - cfg.end_slack + 1)
    )
    # ---- consolidation at E = b + t: the leading run of bars b+1.. that hold, cut at E
    hi = np.fmax.accumulate(np.where(inside, high[rows_c], -np.inf), axis=1)
    lo = np.fmin.accumulate(np.where(inside, low[rows_c], np.inf), axis=1)
    rng = hi - lo
    give = np.fmax.accumulate(peak[:, None] - x, axis=1) / move[:, None]
    holds = inside & (rng <= cfg.range_atr * atr[as_][:, None]) & (give < cfg.hold_max)
    run = np.minimum(np.cumprod(holds, axis=1).sum(axis=1)[:, None], t[None, :])
    ok_c = inside & (run >= cfg.min_len) & (run >= t[None, :] - cfg.end_slack + 1)
    out: dict[str, list[np.ndarray]] = {k: [] for k in (
        "end", "label", "b", "e", "dir", "a", "atr", "k", "range", "retrace")}
    for code, ok, e_off in ((0, ok_c, run), (1, ok_r, e_r)):
        i, j = np.nonzero(ok)
        e = e_off[i, j]
        out["end"].append(rows[i, j])
        out["label"].append(np.full(i.size, code))
        out["b"].append(bs[i])
        out["e"].append(bs[i] + e)
        out["dir"].append(ds[i])
        out["a"].append(as_[i])
        out["atr"].append(atr[as_[i]])
        out["k"].append(ks[i])
        if code == 0:
            out["range"].append(rng[i, e - 1] / atr[as_[i]])
            out["retrace"].append(give[i, e - 1])
        else:
            out["range"].append(np.full(i.size, np.nan))
            out["retrace"].append(ratio[i, j])
    return {k: np.concatenate(v) for k, v in out.items()}


def scan_windows(source: BarSource, cfg: LabelerConfig) -> pl.DataFrame:
    """Every candidate window holding a pattern, one row each, before de-duplication.

    The same rows as ``match_window`` on each window of ``candidate_windows`` (a test holds
    the two to exact equality), from split/dividend-adjusted prices like the features.
    Columns: the labels-file columns, the diagnostics, then start_row / end_row (rows of
    ``prepare_bars(source)``).
    """
    bars = prepare_bars(source)
    ws = candidate_windows(bars, cfg)
    adj = adjusted_bars(bars)
    high, low, close = (adj.get_column(c).to_numpy() for c in ("high", "low", "close"))
    w = cfg.window
    _, bounds = symbol_ranges(ws.matrix)
    valid_end = np.zeros(close.shape[0], dtype=bool)
    valid_end[ws.end_rows] = True
    ints = ("end_row", "code", "pointer_start", "pointer_end", "direction", "impulse_start",
            "impulse_end")
    parts = []
    for lo, hi in bounds.tolist():
        m = _symbol_matches(high[lo:hi], low[lo:hi], close[lo:hi], cfg)
        end = m["end"] + lo
        keep = valid_end[end]
        w0 = end - (w - 1) - lo  # window start, in symbol rows
        parts.append(pl.DataFrame({
            "end_row": end, "code": m["label"], "pointer_start": m["b"] + 1 - w0,
            "pointer_end": m["e"] - w0, "direction": m["dir"], "impulse_start": m["a"] - w0,
            "impulse_end": m["b"] - w0, "atr": m["atr"], "impulse_atr": m["k"],
            "range_atr": m["range"], "retrace": m["retrace"],
        }, schema_overrides=dict.fromkeys(ints, pl.Int64)).filter(pl.Series(keep)))
    rank = [list[str](cfg.priority).index(c) for c in CLASSES]
    found = (
        pl.concat(parts)
        .with_columns(pl.col("code").replace_strict(list(range(len(CLASSES))), rank).alias("_rank"))
        # per window: latest pattern end, then priority, then larger impulse, then later b
        .sort(["end_row", "pointer_end", "_rank", "impulse_atr", "impulse_end"],
              descending=[False, True, False, True, True])
        .unique("end_row", keep="first", maintain_order=True)
    )
    keys = ws.matrix.keys
    start = (found.get_column("end_row") - (w - 1)).alias("start_row")
    end = found.get_column("end_row")
    return found.with_columns(
        keys.get_column("symbol").gather(end).alias("symbol"),
        keys.get_column("ts").gather(end).cast(TS_DTYPE).alias("end_ts"),
        pl.col("code").replace_strict(list(range(len(CLASSES))), list(CLASSES),
                                      return_dtype=pl.String).alias("label"),
        pl.col("impulse_atr").alias("score"),
        keys.get_column("ts").gather(start).cast(TS_DTYPE).alias("start_ts"),
        start,
    ).select(*LABEL_COLUMNS, *DIAGNOSTIC_COLUMNS, "start_row", "end_row")


# ------------------------------------------------------------------ selection and the file
def select_labels(matches: pl.DataFrame, cfg: LabelerConfig) -> pl.DataFrame:
    """Non-overlapping windows per symbol, strongest first, so no near-duplicates pile up.

    Matches are taken by score (impulse size in ATR), then later window end; one is kept only
    if its window shares no bar with a window already kept on its symbol (and the symbol is
    under ``cfg.max_per_symbol``). A total order: the result is deterministic.
    """
    order = matches.sort(["symbol", "score", "end_row"], descending=[False, True, True])
    sym = order.get_column("symbol").to_list()
    start = order.get_column("start_row").to_numpy()
    end = order.get_column("end_row").to_numpy()
    taken = np.zeros(int(end.max()) + 1 if end.size else 0, dtype=bool)
    per_symbol: dict[str, int] = {}
    keep = np.zeros(order.height, dtype=bool)
    for i in range(order.height):
        if cfg.max_per_symbol is not None and per_symbol.get(sym[i], 0) >= cfg.max_per_symbol:
            continue
        if taken[start[i] : end[i] + 1].any():
            continue
        taken[start[i] : end[i] + 1] = True
        per_symbol[sym[i]] = per_symbol.get(sym[i], 0) + 1
        keep[i] = True
    return order.filter(pl.Series(keep)).sort("symbol", "end_ts")


def label_windows(source: BarSource, cfg: LabelerConfig | None = None) -> pl.DataFrame:
    """The labeled set: ``scan_windows`` then ``select_labels``, sorted by (symbol, end_ts).

    Columns: symbol, end_ts, label, pointer_start, pointer_end (the labels file), then the
    diagnostics direction, impulse_start, impulse_end, atr, impulse_atr, range_atr, retrace,
    score, start_ts (the window's first bar). Window offsets are 0-based.
    """
    cfg = cfg or LabelerConfig()
    return select_labels(scan_windows(source, cfg), cfg).drop("start_row", "end_row")


def class_balance(labels: pl.DataFrame) -> dict[str, int]:
    """Windows per class, every class listed (0 if absent), to report and test the balance."""
    counts = dict(labels.group_by("label").len().iter_rows())
    return {c: int(counts.get(c, 0)) for c in CLASSES}


def _format_labels(labels: pl.DataFrame) -> pl.DataFrame:
    """The CSV form: ISO UTC times, floats rounded to 6 decimals (stable across machines),
    NaN (range_atr of a retracement) as an empty cell."""
    iso = "%Y-%m-%dT%H:%M:%SZ"
    return labels.select(*LABEL_COLUMNS, *DIAGNOSTIC_COLUMNS).with_columns(
        pl.col("end_ts").dt.strftime(iso),
        pl.col("start_ts").dt.strftime(iso),
        *[pl.col(c).round(6).fill_nan(None)
          for c in ("atr", "impulse_atr", "range_atr", "retrace", "score")],
    )


def make_labels_file(
    out_path: str | Path, source: BarSource, cfg: LabelerConfig | None = None
) -> pl.DataFrame:
    """Label ``source`` (bars, a Store or a store path) and write the CSV atomically.

    Returns the rows as written (times as ISO strings). The shipped
    ``data/labels/sp500_patterns.csv`` is this on the bundled subset with configs/labeler.yaml.
    """
    out = _format_labels(label_windows(source, cfg))
    atomic_write(out_path, lambda tmp: out.write_csv(tmp, float_scientific=False))
    return out


# ------------------------------------------------------------------ the unlabeled pool
def _label_spans(fm: FeatureMatrix, labels: pl.DataFrame, window: int) -> pl.DataFrame:
    """(symbol, start_ts, end_ts) of each labeled window, read from its bars in ``fm``."""
    keys = fm.keys.select("symbol", pl.col("ts").cast(TS_DTYPE)).with_row_index("_row")
    want = pl.DataFrame({
        "symbol": labels.get_column("symbol").cast(pl.String),
        "end_ts": _to_utc_ts(labels.get_column("end_ts")),
    })
    joined = want.join(keys, left_on=["symbol", "end_ts"], right_on=["symbol", "ts"],
                       how="left", maintain_order="left")
    missing = joined.filter(pl.col("_row").is_null())
    if missing.height:
        raise ValueError(
            f"{missing.height} labeled windows have no bar in the matrix, so their time range "
            f"is unknown and cannot be kept out of the pool: {missing.head(5).rows()}"
        )
    _, bounds = symbol_ranges(fm)
    end = joined.get_column("_row").cast(pl.Int64).to_numpy()
    first = bounds[np.searchsorted(bounds[:, 1], end, side="right"), 0]
    start = np.maximum(end - (window - 1), first)  # never before the symbol's first bar
    ts = fm.keys.get_column("ts").cast(TS_DTYPE)
    return pl.DataFrame({
        "symbol": joined.get_column("symbol"),
        "start_ts": ts.gather(pl.Series(start)),
        "end_ts": ts.gather(pl.Series(end)),
    })


Exclusion = Literal["time", "symbol"]


def _near(p_start: np.ndarray, p_end: np.ndarray, l_start: np.ndarray, l_end: np.ndarray,
          embargo: int) -> np.ndarray:
    """(N,) bool: pool window i lies within ``embargo`` positions of some labeled interval
    (``l_start <= p_end + embargo`` and ``l_end >= p_start - embargo``). Vectorised: labels
    sorted by start, a running maximum of their ends answers "does any label that starts by
    the window's end (+ embargo) reach back to its start (- embargo)?"."""
    if len(l_start) == 0:
        return np.zeros(len(p_start), dtype=bool)
    order = np.argsort(l_start, kind="stable")
    ls = l_start[order]
    reach = np.maximum.accumulate(l_end[order])
    k = np.searchsorted(ls, p_end + embargo, side="right")
    return (k > 0) & (reach[np.maximum(k - 1, 0)] >= p_start - embargo)


def build_pool(
    source: FeatureMatrix | WindowSet,
    labels: pl.DataFrame | LabeledWindows,
    window: int = 105,
    min_pool: int = 10_000,
    *,
    exclusion: Exclusion = "time",
    embargo_bars: int = 5,
) -> WindowSet:
    """Unlabeled windows for self-supervision that share no time with a labeled window.

    ``exclusion="time"`` (default): a pool window is kept only when it ends more than
    ``embargo_bars`` bars before, or starts more than ``embargo_bars`` bars after, every labeled
    window on ANY symbol: markets co-move, so another stock's bars in a labeled (or evaluated)
    period teach the encoder that period. Bars are counted on the union calendar of ``source``
    (``moola.datasets.tasks.calendar_positions``). ``exclusion="symbol"`` applies the same rule
    only against labeled windows of the pool window's own symbol (more pool, transductive:
    an encoder built so overlaps the labeled periods in time, and ``--pretrained-encoder``
    refuses it unless ``allow_transductive``). A labeled window is the ``window`` bars up to its
    ``end_ts``. ``source``: a FeatureMatrix (all its valid windows, stride 1) or a WindowSet to
    filter. Raises below ``min_pool`` windows. Neighbouring pool windows overlap heavily; fine for
    pre-training, which wants coverage.
    """
    if exclusion not in ("time", "symbol"):
        raise ValueError(f"exclusion must be 'time' or 'symbol', got {exclusion!r}")
    if embargo_bars < 0:
        raise ValueError(f"embargo_bars must be >= 0, got {embargo_bars}")
    ws = source if isinstance(source, WindowSet) else WindowSet.from_matrix(source, window)
    if isinstance(labels, LabeledWindows):
        spans = labels.meta.select("symbol", "start_ts", "end_ts")
    else:
        spans = _label_spans(ws.matrix, labels, window)
    ts = ws.matrix.keys.get_column("ts").cast(TS_DTYPE).dt.epoch("ns").to_numpy()
    pos = calendar_positions(ts)
    p_start, p_end = pos[ws.start_rows], pos[ws.end_rows]
    cal = np.unique(ts)
    # a label's bars on the union calendar: first bar at/after its start, last at/before its end
    l_start = np.searchsorted(cal, spans.get_column("start_ts").dt.epoch("ns").to_numpy(), side="left")
    l_end = np.searchsorted(cal, spans.get_column("end_ts").dt.epoch("ns").to_numpy(), side="right") - 1
    if exclusion == "time":
        drop = _near(p_start, p_end, l_start, l_end, embargo_bars)
    else:  # each symbol on its own stretch of one line, too far apart to meet: one pass
        sym = ws.meta.get_column("symbol").cast(pl.String)
        codes = pl.concat([sym, spans.get_column("symbol").cast(pl.String)]).cast(pl.Categorical)
        code = codes.to_physical().to_numpy().astype(np.int64)
        stride = len(cal) + 2 * embargo_bars + 2  # label positions lie in [-1, len(cal)]
        p_off, l_off = code[: len(sym)] * stride, code[len(sym):] * stride
        drop = _near(p_start + p_off, p_end + p_off, l_start + l_off, l_end + l_off, embargo_bars)
    pool = ws.subset(~drop)
    if len(pool) < min_pool:
        raise ValueError(
            f"pool holds {len(pool)} windows once every window within {embargo_bars} bars of "
            f"the {spans.height} labeled windows ({exclusion} exclusion) is dropped; at least "
            f"{min_pool} are required"
        )
    return pool
