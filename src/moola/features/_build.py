"""build_features: canonical bars -> FeatureMatrix (adjusted prices, per-symbol, warm-up NaN)."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from moola.data import PRICE_COLUMNS, REQUIRED_COLUMNS, Timeframe, infer_timeframe, mark_gaps
from moola.features._matrix import FeatureMatrix
from moola.features._registry import FeatureSet, FeatureSpec, get_feature_set

BAR_COLUMNS: tuple[str, ...] = (*PRICE_COLUMNS, "volume")
# Most features evaluated per Polars query: batches bound the intermediates held at once.
BATCH = 32


def adjusted_bars(df: pl.DataFrame) -> pl.DataFrame:
    """Split/dividend-adjust prices when ``adj_close`` is present (Qlib convention).

    factor = adj_close / close; open/high/low/close *= factor; volume /= factor, so that
    price x volume (turnover) is unchanged. NaN becomes null so it spoils only its own windows.
    """
    clean = [pl.col(c).cast(pl.Float64).fill_nan(None) for c in BAR_COLUMNS]
    out = df.select("symbol", "ts", *clean)
    if "adj_close" in df.columns:
        factor = (df.get_column("adj_close").cast(pl.Float64).fill_nan(None) / df["close"])
        out = out.with_columns(factor.alias("_factor")).with_columns(
            *[(pl.col(c) * pl.col("_factor")).alias(c) for c in PRICE_COLUMNS],
            (pl.col("volume") / pl.col("_factor")).alias("volume"),
        ).drop("_factor")
    return out


def _check_input(df: pl.DataFrame) -> None:
    """Fail early, with the reason, on frames that break the canonical-bar contract."""
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"bars lack required columns {missing}")
    if df.height < 2:
        return
    keys = df.select("symbol", "ts")
    sym, ts = keys["symbol"], keys["ts"]
    prev_sym, prev_ts = sym.shift(1), ts.shift(1)
    bad = ((sym < prev_sym) | ((sym == prev_sym) & (ts <= prev_ts))).fill_null(False)
    if bad.any():
        i = int(bad.arg_true()[0])
        raise ValueError(
            f"bars must be sorted by (symbol, ts) with unique keys; row {i} "
            f"({sym[i]!r}, {ts[i]}) follows ({sym[i - 1]!r}, {ts[i - 1]})"
        )


def _keys(df: pl.DataFrame, timeframe: Timeframe | str | None) -> pl.DataFrame:
    """symbol, ts, gap_before (built from the timeframe if absent), is_filled (False if absent)."""
    if "gap_before" not in df.columns:
        if timeframe is None and df.height == df.get_column("symbol").n_unique():
            # One bar per symbol: nothing precedes any bar, so there is no gap to find.
            df = df.with_columns(gap_before=pl.lit(False))
        else:
            tf = Timeframe(timeframe) if timeframe is not None else infer_timeframe(df)
            df = mark_gaps(df.select("symbol", "ts"), tf)
    is_filled = (
        pl.col("is_filled").fill_null(False) if "is_filled" in df.columns else pl.lit(False)
    )
    return df.select(
        "symbol", "ts", pl.col("gap_before").fill_null(False).cast(pl.Boolean),
        is_filled.cast(pl.Boolean).alias("is_filled"),
    )


def _position_in_symbol(symbols: pl.Series) -> np.ndarray:
    """0-based row index of each bar within its symbol (the frame is sorted by symbol)."""
    codes = symbols.rle_id().to_numpy()
    n = len(codes)
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]]) if n else np.empty(0, int)
    lengths = np.diff(np.r_[starts, n])
    return np.arange(n) - np.repeat(starts, lengths)


def _batches(fs: FeatureSet) -> list[list[int]]:
    """Spec indices grouped by look-back, in chunks of ``BATCH``.

    Features with the same look-back mostly share sub-expressions (alpha158's memoised window
    sums, the helper columns), which Polars' common-subexpression elimination then evaluates
    once per batch; small batches also bound the intermediates alive at once.
    """
    order = sorted(range(len(fs.specs)), key=lambda j: fs.specs[j].lookback)
    out: list[list[int]] = []
    for j in order:
        same = out and fs.specs[out[-1][-1]].lookback == fs.specs[j].lookback
        if same and len(out[-1]) < BATCH:
            out[-1].append(j)
        else:
            out.append([j])
    return out


def _output_expr(spec: FeatureSpec) -> pl.Expr:
    """The spec's expression as a named float32 output column."""
    if spec.expr is None:
        raise ValueError(f"feature {spec.name!r} has no expression to evaluate")
    return spec.expr.cast(pl.Float32).alias(spec.name)


def _kernel_values(bars: pl.DataFrame, fs: FeatureSet) -> np.ndarray:
    """(N, F) float32 from the set's compiled kernel, shape and dtype checked."""
    assert fs.kernel is not None
    values = fs.kernel(bars)
    want = (bars.height, len(fs.specs))
    if values.shape != want or values.dtype != np.float32:
        raise RuntimeError(f"feature set {fs.name!r}: its kernel returned {values.dtype} "
                           f"{values.shape}, expected float32 {want}")
    return values


def _bar_values(df: pl.DataFrame, fs: FeatureSet, keys: pl.DataFrame) -> np.ndarray:
    """(N, F) float32 of an ``align="bars"`` set: the set's kernel, or whole-panel batches of
    its expressions (inf -> NaN); then warm-up rows NaN."""
    bars = adjusted_bars(df)
    if fs.kernel is not None:
        values = _kernel_values(bars, fs)  # inf already NaN
    else:
        if fs.aux:
            bars = bars.with_columns(*[expr.alias(name) for name, expr in fs.aux])
        values = np.empty((df.height, len(fs.specs)), dtype=np.float32)
        for cols in _batches(fs):
            query = bars.lazy().select([_output_expr(fs.specs[j]) for j in cols])
            block = query.collect().to_numpy()
            if not block.flags.writeable:  # Polars may hand out a read-only zero-copy view
                block = block.copy()
            np.copyto(block, np.float32(np.nan), where=np.isinf(block))
            values[:, cols] = block
    pos = _position_in_symbol(keys.get_column("symbol"))
    lookbacks = np.array([s.lookback for s in fs.specs], dtype=np.int64)
    for lb in np.unique(lookbacks[lookbacks > 0]):
        rows = np.flatnonzero(pos < lb)
        if rows.size:
            values[np.ix_(rows, np.flatnonzero(lookbacks == lb))] = np.nan
    return values


def calendar_frame(bars: pl.DataFrame, pad: int, calendar: pl.Series | None = None) -> pl.DataFrame:
    """Every symbol laid on the calendar (``calendar``, else the union of the frame's dates),
    from ``pad`` slots before its first bar to its last: a day the symbol lacks is a row of
    nulls, and the padding rows (``_pad`` True, null ``ts``) keep any window from reaching the
    previous symbol."""
    days = bars.get_column("ts") if calendar is None else calendar.cast(bars.schema["ts"])
    cal = days.unique().sort().to_frame("ts").with_row_index("_ci")
    b = bars.join(cal, on="ts", how="left", maintain_order="left").with_columns(
        pl.col("_ci").cast(pl.Int64))
    spans = b.group_by("symbol", maintain_order=True).agg(
        pl.col("_ci").min().alias("_first"), pl.col("_ci").max().alias("_last"))
    grid = spans.select(
        "symbol", "_first", pl.int_ranges(pl.col("_first") - pad, pl.col("_last") + 1).alias("_ci"),
    ).explode("_ci")
    frame = grid.join(b, on=["symbol", "_ci"], how="left", maintain_order="left")
    return frame.with_columns((pl.col("_ci") < pl.col("_first")).alias("_pad")).drop("_first")


def _calendar_values(df: pl.DataFrame, fs: FeatureSet, calendar: pl.Series | None) -> np.ndarray:
    """(N, F) float32 of an ``align="calendar"`` set: evaluated on ``calendar_frame``, kept for
    the real bars only; no warm-up NaN (Qlib's partial windows, min_periods=1). The adjusted
    bars are rounded to float32 first, as Qlib stores them: equal highs then tie as in Qlib, and
    high - low on a near-flat bar cancels the same way."""
    bars = adjusted_bars(df).with_columns(pl.col(BAR_COLUMNS).cast(pl.Float32).cast(pl.Float64))
    frame = calendar_frame(bars, fs.max_lookback + 1, calendar)
    if fs.aux:
        frame = frame.with_columns(*[expr.alias(name) for name, expr in fs.aux])
    real = frame.get_column("ts").is_not_null().to_numpy()
    values = np.empty((df.height, len(fs.specs)), dtype=np.float32)
    for cols in _batches(fs):
        block = frame.lazy().select([_output_expr(fs.specs[j]) for j in cols]).collect().to_numpy()
        block = block[real]
        np.copyto(block, np.float32(np.nan), where=np.isinf(block))
        values[:, cols] = block
    return values


def compute_features(
    df: pl.DataFrame, fs: FeatureSet, *, timeframe: Timeframe | str | None = None,
    calendar: pl.Series | None = None,
) -> FeatureMatrix:
    """Evaluate a feature set on canonical bars (see ``build_features``).

    ``align="bars"``: the whole sorted panel is evaluated in one pass per batch of features
    (vectorised across symbols, no Python loop over symbols), then the first ``lookback`` rows of
    every symbol are set to NaN: those are the only rows whose window could reach into the
    previous symbol, so a symbol's values equal those of the symbol computed alone (up to the
    last bits of Polars' running std). ``align="calendar"``: the same batches over
    ``calendar_frame`` (``calendar``: the panel's days when ``df`` is a group of its symbols;
    default the frame's own). ``fs.kind`` does not change the evaluation; it tells consumers
    whether one symbol can be served alone.
    """
    _check_input(df)
    keys = _keys(df, timeframe)
    calendar_aligned = fs.align == "calendar"
    values = _calendar_values(df, fs, calendar) if calendar_aligned else _bar_values(df, fs, keys)
    return FeatureMatrix(
        keys=keys, values=values, names=fs.names, set_name=fs.name, params=dict(fs.params),
        code_hash=fs.code_hash,
    )


def serve_features(
    df: pl.DataFrame, fs: FeatureSet, *, timeframe: Timeframe | str | None = None
) -> FeatureMatrix:
    """``compute_features`` for the few hundred rows a serving tick reads: the same kernel, or
    the same expressions and rules in one eager (in-memory engine) query, 2-4 times faster on
    small frames. Equal bit for bit on one Polars thread; with more, ``compute_features``'
    streaming engine can differ in the last bits at a cancellation point
    (tests/test_features_serving.py, every set).

    It is a separate function because ``compute_features``' source is part of every set's code
    hash: changing how it evaluates would refuse every model trained before. Its warm-up and
    inf -> NaN rules are therefore restated here, and the parity test holds the two together.
    """
    if fs.align == "calendar":  # the calendar comes from the frame: same code path as training
        return compute_features(df, fs, timeframe=timeframe)
    _check_input(df)
    keys = _keys(df, timeframe)
    bars = adjusted_bars(df)
    if fs.kernel is not None:
        values = _kernel_values(bars, fs)
    else:
        if fs.aux:
            bars = bars.with_columns(*[expr.alias(name) for name, expr in fs.aux])
        values = bars.select([_output_expr(s) for s in fs.specs]).to_numpy()  # (N, F) float32
        if (not values.flags.writeable or values.dtype != np.float32
                or not values.flags.c_contiguous):
            values = np.ascontiguousarray(values, dtype=np.float32)
        np.copyto(values, np.float32(np.nan), where=np.isinf(values))  # the kernel's is NaN
    pos = _position_in_symbol(keys.get_column("symbol"))
    lookbacks = np.array([s.lookback for s in fs.specs], dtype=np.int64)
    for lb in np.unique(lookbacks[lookbacks > 0]):
        rows = np.flatnonzero(pos < lb)
        if rows.size:
            values[np.ix_(rows, np.flatnonzero(lookbacks == lb))] = np.nan
    return FeatureMatrix(
        keys=keys, values=values, names=fs.names, set_name=fs.name, params=dict(fs.params),
        code_hash=fs.code_hash,
    )


def build_features(
    df: pl.DataFrame, set_name: str, *, timeframe: Timeframe | str | None = None, **params: Any
) -> FeatureMatrix:
    """Features of the registered set ``set_name`` for every bar of ``df``.

    ``df`` holds canonical bars (sorted by symbol, ts; unique keys), any number of symbols.
    Each symbol is computed on its own; rows whose look-back is incomplete are NaN. ``params``
    override the set's parameters (and so change the schema hash). ``timeframe`` is only needed
    to build ``gap_before`` when it is absent and the step cannot be inferred.
    """
    return compute_features(df, get_feature_set(set_name, **params), timeframe=timeframe)

