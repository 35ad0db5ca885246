"""Validation: count every wart per symbol and reason, apply a per-reason policy, drop nothing
uncounted. Rows removed by a policy go to a ``rejects`` frame that the store keeps."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, cast

import numpy as np
import polars as pl

from moola._io import atomic_write_json
from moola.data._errors import ValidationFailed
from moola.data._gaps import mark_gaps
from moola.data._schema import (
    FAULT_EMPTY,
    FAULT_SYMBOL,
    FAULT_TIMESTAMP,
    PRICE_COLUMNS,
    Timeframe,
    conform,
)


class Reason(StrEnum):
    EMPTY_ROW = FAULT_EMPTY  # the reader's row faults (_schema) are reasons of the same name
    BAD_TIMESTAMP = FAULT_TIMESTAMP
    BAD_SYMBOL = FAULT_SYMBOL
    OFF_GRID = "off_grid"
    ALL_NULL = "all_null"
    PARTIAL_NULL = "partial_null"
    NON_FINITE = "non_finite"
    NONPOSITIVE_PRICE = "nonpositive_price"
    NEGATIVE_VOLUME = "negative_volume"
    NON_MONOTONIC = "non_monotonic"
    DUPLICATE_IDENTICAL = "duplicate_identical"
    DUPLICATE_CONFLICTING = "duplicate_conflicting"
    OHLC_INCONSISTENT = "ohlc_inconsistent"
    GAP = "gap"
    EXTREME_RETURN = "extreme_return"
    STALE_PRICE = "stale_price"


class Action(StrEnum):
    DROP = "drop"  # remove the row(s); they are kept in the store's rejects with the reason
    KEEP = "keep"  # keep and count (flag)
    FAIL = "fail"  # stop: nothing is written
    FILL = "fill"  # gaps only: insert flat zero-volume bars marked is_filled
    SNAP = "snap"  # off_grid only: move the bar to the start of the grid slot it falls in


ALLOWED: dict[Reason, tuple[Action, ...]] = {
    Reason.EMPTY_ROW: (Action.DROP, Action.FAIL),
    Reason.BAD_TIMESTAMP: (Action.FAIL, Action.DROP),
    Reason.BAD_SYMBOL: (Action.FAIL, Action.DROP),
    Reason.OFF_GRID: (Action.FAIL, Action.DROP, Action.SNAP),
    Reason.ALL_NULL: (Action.DROP, Action.FAIL),
    Reason.PARTIAL_NULL: (Action.FAIL, Action.DROP),
    Reason.NON_FINITE: (Action.FAIL, Action.DROP),
    Reason.NONPOSITIVE_PRICE: (Action.FAIL, Action.DROP, Action.KEEP),
    Reason.NEGATIVE_VOLUME: (Action.FAIL, Action.DROP, Action.KEEP),
    Reason.NON_MONOTONIC: (Action.FAIL, Action.KEEP),
    Reason.DUPLICATE_IDENTICAL: (Action.DROP, Action.FAIL),
    Reason.DUPLICATE_CONFLICTING: (Action.KEEP, Action.DROP, Action.FAIL),
    Reason.OHLC_INCONSISTENT: (Action.KEEP, Action.DROP, Action.FAIL),
    Reason.GAP: (Action.KEEP, Action.FILL, Action.FAIL),
    Reason.EXTREME_RETURN: (Action.KEEP, Action.FAIL),
    Reason.STALE_PRICE: (Action.KEEP, Action.FAIL),
}

# Safe defaults (the first allowed action): rows that cannot be trusted at all are dropped
# (all-null) or stop the ingest (partial/NaN/inf, non-positive prices, negative volume,
# unsorted files); conflicting duplicates keep the LAST row seen (a newer file wins) and are
# counted; judgement calls (OHLC inconsistencies, extreme returns, stale prices, gaps) are
# kept and flagged.
DEFAULT_POLICY: dict[Reason, Action] = {r: a[0] for r, a in ALLOWED.items()}

EXPLAIN: dict[Reason, str] = {
    Reason.EMPTY_ROW: "a blank line or a row of only delimiters",
    Reason.BAD_TIMESTAMP: "timestamp missing, unparseable or outside 1677-09-21 .. 2262-04-11 UTC",
    Reason.BAD_SYMBOL: "symbol outside the allowed alphabet (control characters, line separators) "
                       "or too long for a file name",
    Reason.OFF_GRID: "timestamp not on the timeframe's grid (a 00:02:30 bar in a 1-minute file)",
    Reason.ALL_NULL: "every price and volume is empty",
    Reason.PARTIAL_NULL: "some prices or volume are empty or NaN",
    Reason.NON_FINITE: "a value is +/-inf",
    Reason.NONPOSITIVE_PRICE: "a price is zero or negative",
    Reason.NEGATIVE_VOLUME: "volume is negative",
    Reason.NON_MONOTONIC: "timestamp earlier than the previous row of the same symbol in the file",
    Reason.DUPLICATE_IDENTICAL: "repeated (symbol, ts) with identical values",
    Reason.DUPLICATE_CONFLICTING: "repeated (symbol, ts) with different values",
    Reason.OHLC_INCONSISTENT: "high < max(open, close), low > min(open, close) or high < low",
    Reason.GAP: "bars missing between two bars of the symbol (count = missing bars)",
    Reason.EXTREME_RETURN: "|log return| above the timeframe's threshold",
    Reason.STALE_PRICE: "run of flat zero-volume bars at an unchanged price",
}

EXTREME_RETURN_THRESHOLD: dict[Timeframe, float] = {
    Timeframe.M1: 0.05, Timeframe.M5: 0.07, Timeframe.M15: 0.1,
    Timeframe.H1: 0.15, Timeframe.H4: 0.25, Timeframe.D1: 0.4,
}

VALUE_COLUMNS = ("open", "high", "low", "close", "volume", "adj_close")


@dataclass(frozen=True)
class Policy:
    """Action per reason plus the thresholds that define the flags."""

    actions: dict[Reason, Action] = field(default_factory=lambda: dict(DEFAULT_POLICY))
    stale_run: int = 5
    extreme_return: float | None = None  # None: by timeframe (EXTREME_RETURN_THRESHOLD)

    @classmethod
    def from_overrides(cls, overrides: Iterable[str], **kwargs: Any) -> Policy:
        """Parse ``reason=action`` strings; unknown reasons or disallowed actions are errors."""
        actions = dict(DEFAULT_POLICY)
        problems = []
        for item in overrides:
            if "=" not in item:
                problems.append(f"'{item}' is not reason=action")
                continue
            r, a = (s.strip() for s in item.split("=", 1))
            try:
                reason = Reason(r)
            except ValueError:
                problems.append(f"unknown reason '{r}' (known: {', '.join(Reason)})")
                continue
            try:
                action = Action(a)
            except ValueError:
                problems.append(f"unknown action '{a}' for {r}")
                continue
            if action not in ALLOWED[reason]:
                problems.append(
                    f"{r}={a} not allowed (choose {'|'.join(ALLOWED[reason])})"
                )
                continue
            actions[reason] = action
        if problems:
            raise ValueError("bad --policy: " + "; ".join(problems))
        return cls(actions=actions, **kwargs)

    def threshold(self, timeframe: Timeframe) -> float:
        return self.extreme_return or EXTREME_RETURN_THRESHOLD[timeframe]


@dataclass
class ValidationReport:
    """Counts per (symbol, reason) with the action taken and an example location."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    rows_in: int = 0
    rows_out: int = 0

    def add(self, reason: Reason, action: Action, counts: pl.DataFrame) -> None:
        """``counts``: symbol, count[, file, line, ts] (first example per symbol)."""
        for rec in counts.iter_rows(named=True):
            if rec["count"] <= 0:
                continue
            self.rows.append(
                {
                    "symbol": rec["symbol"],
                    "reason": str(reason),
                    "count": int(rec["count"]),
                    "action": str(action),
                    "example": _example(rec),
                }
            )

    def frame(self) -> pl.DataFrame:
        schema = {"symbol": pl.String, "reason": pl.String, "count": pl.Int64,
                  "action": pl.String, "example": pl.String}
        return pl.DataFrame(self.rows, schema=schema).sort("reason", "symbol")

    def totals(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.rows:
            out[r["reason"]] = out.get(r["reason"], 0) + r["count"]
        return dict(sorted(out.items()))

    @property
    def has_findings(self) -> bool:
        return bool(self.rows)

    def to_dict(self) -> dict[str, Any]:
        per_symbol: dict[str, dict[str, int]] = {}
        for r in self.rows:
            per_symbol.setdefault(r["symbol"], {})[r["reason"]] = r["count"]
        actions = {}
        for r in self.rows:
            actions[r["reason"]] = r["action"]
        return {
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "totals": self.totals(),
            "actions": actions,
            "per_symbol": dict(sorted(per_symbol.items())),
            "findings": self.frame().to_dicts(),
            "reasons": {str(r): EXPLAIN[r] for r in Reason},
        }

    def write_json(self, path: str | Path) -> Path:
        """Strict JSON (an empty price is null, listed under ``_nulls``), written atomically."""
        return atomic_write_json(path, self.to_dict())


def _example(rec: dict[str, Any]) -> str:
    parts = []
    if rec.get("file"):
        parts.append(f"{rec['file']}:{rec.get('line')}")
    if rec.get("ts") is not None:
        parts.append(str(rec["ts"]))
    return " ".join(parts)


@dataclass
class Validated:
    """Clean canonical bars, the rows removed (with reasons), and the report."""

    bars: pl.DataFrame
    rejects: pl.DataFrame
    report: ValidationReport


REJECT_SCHEMA: dict[str, pl.DataType] = {
    "symbol": pl.String(), "ts": pl.Datetime("ns", "UTC"), "reason": pl.String(),
    "file": pl.String(), "line": pl.Int64(),
}


def _count(df: pl.DataFrame, mask: pl.Expr, *, weight: pl.Expr | None = None) -> pl.DataFrame:
    """Per-symbol counts of rows matching ``mask`` with the first example location."""
    hit = df.filter(mask)
    if hit.height == 0:
        return pl.DataFrame(schema={"symbol": pl.String, "count": pl.Int64})
    agg = [
        (weight.sum() if weight is not None else pl.len()).cast(pl.Int64).alias("count"),
        pl.col("ts").first().alias("ts"),
    ]
    if "_file" in df.columns:
        agg += [pl.col("_file").first().alias("file"), pl.col("_line").first().alias("line")]
    return hit.group_by("symbol", maintain_order=True).agg(agg).sort("symbol")


def _fail(reason: Reason, df: pl.DataFrame, mask: pl.Expr, column: str | None = None,
          why: str = "") -> None:
    hit = df.filter(mask).head(1)
    rec = hit.row(0, named=True)
    n = df.select(mask.sum()).item()
    raise ValidationFailed(
        f"{EXPLAIN[reason]} (symbol {rec['symbol']}, ts {rec['ts']}); {n} row(s) in all{why}",
        path=rec.get("_file"),
        line=rec.get("_line"),
        column=column,
        hint=f"policy {reason}=fail; choose {'|'.join(a for a in ALLOWED[reason] if a != 'fail')}"
        f" with --policy {reason}=...",
    )


def _dst_repeat(df: pl.DataFrame, unsorted: pl.Expr, prev_max: pl.Expr, timeframe: Timeframe) -> str:
    """The likely cause when the first step back is one hour less a bar: a naive local-time export
    across the end of daylight saving, which repeats an hour (ambiguous without UTC offsets)."""
    back = df.select(prev_max.alias("p"), pl.col("ts"), unsorted.alias("u")).filter(pl.col("u")).head(1)
    seconds = (back.get_column("p") - back.get_column("ts")).dt.total_seconds()[0]
    step = timeframe.step.total_seconds()
    if not timeframe.is_intraday or not 3600 - step <= seconds <= 3600:
        return ""
    return (f"; time steps back {seconds / 60:.0f} minutes: these look like local times without UTC "
            "offsets across the end of daylight saving, which repeats an hour and is ambiguous; "
            "export in UTC or with UTC offsets")


def _first_bad_column(df: pl.DataFrame, mask: pl.Expr, bad: str) -> str | None:
    """Name the first value column at fault in the first offending row."""
    row = df.filter(mask).head(1)
    if row.height == 0:
        return None
    for c in VALUE_COLUMNS:
        if c not in row.columns:
            continue
        v = row.get_column(c)[0]
        if bad == "null" and v is None:
            return c
        if bad == "inf" and isinstance(v, float) and np.isinf(v):
            return c
        if bad == "nonpositive" and c != "volume" and v is not None and v <= 0:
            return c
    return None


def validate_raw(df: pl.DataFrame, timeframe: Timeframe, policy: Policy | None = None) -> Validated:
    """Apply the policy to freshly read rows (with ``_file``/``_line``) of one timeframe."""
    policy = policy or Policy()
    act = policy.actions
    report = ValidationReport(rows_in=df.height)
    rejects: list[pl.DataFrame] = []
    vcols = [c for c in VALUE_COLUMNS if c in df.columns]
    if "_file" not in df.columns:
        df = df.with_columns(_file=pl.lit(None, pl.String), _line=pl.lit(None, pl.Int64))
    df = df.with_columns(_order=pl.int_range(pl.len(), dtype=pl.Int64))
    df = df.with_columns([pl.col(c).fill_nan(None) for c in vcols if df.schema[c].is_float()])

    def drop(reason: Reason, mask: pl.Expr) -> None:
        nonlocal df
        rejects.append(_reject_rows(df, reason, mask))
        df = df.filter(~mask)

    def handle(reason: Reason, mask: pl.Expr, column: str | None = None) -> None:
        counts = _count(df, mask)
        if counts.height == 0:
            return
        if act[reason] is Action.FAIL:
            _fail(reason, df, mask, column)
        report.add(reason, act[reason], counts)
        if act[reason] is Action.DROP:
            drop(reason, mask)

    df = _line_faults(df, timeframe, act, report, rejects)

    null_any = pl.any_horizontal([pl.col(c).is_null() for c in vcols])
    null_all = pl.all_horizontal([pl.col(c).is_null() for c in vcols])
    handle(Reason.ALL_NULL, null_all)
    all_null_keys = pl.concat(rejects).select("symbol", "ts") if rejects else None
    handle(Reason.PARTIAL_NULL, null_any, _first_bad_column(df, null_any, "null"))
    inf = pl.any_horizontal([pl.col(c).is_infinite() for c in vcols if df.schema[c].is_float()])
    handle(Reason.NON_FINITE, inf, _first_bad_column(df, inf, "inf"))
    price_cols = [c for c in (*PRICE_COLUMNS, "adj_close") if c in df.columns]
    nonpos = pl.any_horizontal([pl.col(c) <= 0 for c in price_cols])
    handle(Reason.NONPOSITIVE_PRICE, nonpos, _first_bad_column(df, nonpos, "nonpositive"))
    handle(Reason.NEGATIVE_VOLUME, pl.col("volume") < 0, "volume")

    # Order within each (file, symbol) as written; a later row with an earlier ts is unsorted.
    prev_max = pl.col("ts").cum_max().shift(1).over("_file", "symbol")
    unsorted = (pl.col("ts") < prev_max).fill_null(False)
    counts = _count(df, unsorted)
    if counts.height:
        if act[Reason.NON_MONOTONIC] is Action.FAIL:
            dst = _dst_repeat(df, unsorted, prev_max, timeframe)
            _fail(Reason.NON_MONOTONIC, df, unsorted, "ts", why=dst)
        report.add(Reason.NON_MONOTONIC, act[Reason.NON_MONOTONIC], counts)
    df = df.sort("symbol", "ts", "_order")

    # Duplicates: identical copies collapse to one; conflicting keys keep the last row seen.
    key = ["symbol", "ts"]
    dup = pl.len().over(key) > 1
    if df.select(dup.any()).item():
        same = pl.all_horizontal([pl.col(c).n_unique().over(key) == 1 for c in vcols])
        df = df.with_columns(_dup=dup, _same=same, _last=pl.col("_order") == pl.col("_order").max().over(key))
        identical = pl.col("_dup") & pl.col("_same") & ~pl.col("_last")
        conflicting = pl.col("_dup") & ~pl.col("_same")
        handle(Reason.DUPLICATE_IDENTICAL, identical)
        # conflicting: count keys, not rows
        ckeys = df.filter(conflicting & pl.col("_last"))
        if ckeys.height:
            a = act[Reason.DUPLICATE_CONFLICTING]
            if a is Action.FAIL:
                _fail(Reason.DUPLICATE_CONFLICTING, df, conflicting & ~pl.col("_last"))
            report.add(Reason.DUPLICATE_CONFLICTING, a, _count(df, conflicting & pl.col("_last")))
            losers = conflicting if a is Action.DROP else conflicting & ~pl.col("_last")
            drop(Reason.DUPLICATE_CONFLICTING, losers)
        df = df.drop("_dup", "_same", "_last")

    bad_ohlc = (
        (pl.col("high") < pl.max_horizontal("open", "close"))
        | (pl.col("low") > pl.min_horizontal("open", "close"))
        | (pl.col("high") < pl.col("low"))
    )
    handle(Reason.OHLC_INCONSISTENT, bad_ohlc)
    df = _flag_returns_and_stale(df, timeframe, policy, report)

    # Gaps are judged with dropped all-null rows still occupying their slot, so a null row
    # is counted once (as all_null), not again as a gap.
    df, _ = _gaps(df, timeframe, policy, report, extra_keys=all_null_keys)
    bars = conform(df.drop([c for c in df.columns if c.startswith("_")]))
    report.rows_out = bars.height
    rej = pl.concat(rejects) if rejects else pl.DataFrame(schema=REJECT_SCHEMA)
    return Validated(bars=bars, rejects=rej.cast(pl.Schema(REJECT_SCHEMA)), report=report)


LINE_REASONS = (Reason.EMPTY_ROW, Reason.BAD_TIMESTAMP, Reason.BAD_SYMBOL, Reason.OFF_GRID)
MAX_LISTED_LINES = 20


def _line_faults(
    df: pl.DataFrame, timeframe: Timeframe, act: dict[Reason, Action], report: ValidationReport,
    rejects: list[pl.DataFrame],
) -> pl.DataFrame:
    """Reader row faults and off-grid bars. Under ``fail`` one error lists every such line of every
    file; under ``drop`` they are counted rejects; ``snap`` moves off-grid bars onto the grid."""
    fault = pl.col("_fault") if "_fault" in df.columns else pl.lit(None, pl.String)
    detail = pl.col("_detail") if "_detail" in df.columns else pl.lit(None, pl.String)
    on_grid = _grid_slot(df, timeframe)
    df = df.with_columns(_on_grid=on_grid).with_columns(
        _reason=pl.when(fault.is_not_null()).then(fault)
        .when(pl.col("ts").is_not_null() & (pl.col("ts") != pl.col("_on_grid")))
        .then(pl.lit(str(Reason.OFF_GRID))).otherwise(None),
    ).with_columns(
        _why=pl.when(fault.is_not_null()).then(detail)
        .when(pl.col("_reason") == str(Reason.OFF_GRID))
        .then(pl.format("bar at {} is off the {} grid (its slot starts at {})",
                        pl.col("ts").dt.strftime("%Y-%m-%d %H:%M:%S%.f"), pl.lit(timeframe.value),
                        pl.col("_on_grid").dt.strftime("%Y-%m-%d %H:%M:%S")))
        .otherwise(None),
    )
    present = set(df.get_column("_reason").drop_nulls().unique().to_list())
    found = [r for r in LINE_REASONS if str(r) in present]
    failing = [r for r in found if act[r] is Action.FAIL]
    if failing:
        _fail_lines(df.filter(pl.col("_reason").is_in([str(r) for r in failing])), failing)
    unfiled = df.filter(pl.col("_reason").is_not_null() & pl.col("symbol").is_null())
    if unfiled.height:
        rec = unfiled.row(0, named=True)
        raise ValidationFailed(f"{rec['_why']}, and no row of the file names a valid symbol to file it under",
                               path=rec["_file"], line=rec["_line"], hint="pass --symbol")
    for r in found:
        mask = (pl.col("_reason") == str(r)).fill_null(False)
        report.add(r, act[r], _count(df, mask))
        if act[r] is Action.DROP:
            rejects.append(_reject_rows(df, r, mask))
            df = df.filter(~mask)
        elif act[r] is Action.SNAP:
            df = df.with_columns(ts=pl.when(mask).then(pl.col("_on_grid")).otherwise(pl.col("ts")))
    return df.drop([c for c in ("_fault", "_detail", "_on_grid", "_reason", "_why") if c in df.columns])


def _reject_rows(df: pl.DataFrame, reason: Reason, mask: pl.Expr) -> pl.DataFrame:
    """The store's reject records (symbol, ts, reason, file, line) of the rows ``mask`` removes."""
    return df.filter(mask).select(
        "symbol", "ts", pl.lit(str(reason)).alias("reason"),
        pl.col("_file").alias("file"), pl.col("_line").alias("line"),
    )


def _grid_slot(df: pl.DataFrame, timeframe: Timeframe) -> pl.Expr:
    """Start of the grid slot each bar falls in: epoch-aligned steps intraday; for daily bars the
    symbol's most common time of day (exports stamp days at local midnight or the close)."""
    if timeframe.is_intraday:
        return pl.col("ts").dt.truncate(f"{int(timeframe.step.total_seconds())}s")
    day = pl.col("ts").dt.truncate("1d")
    tod = pl.col("ts") - day
    return day + tod.drop_nulls().mode().sort().first().over("symbol")


def _fail_lines(bad: pl.DataFrame, reasons: list[Reason]) -> None:
    """One error (one line of text) naming every line at fault, the first ``MAX_LISTED_LINES``
    of them in full, and the way out."""
    bad = bad.sort("_file", "_line", nulls_last=True)
    first = bad.row(0, named=True)
    counts = {str(r): bad.filter(pl.col("_reason") == str(r)).height for r in reasons}
    one_file = bad.get_column("_file").n_unique() == 1
    listed = [f"{'' if one_file else str(rec['_file']) + ':'}line {rec['_line']}: {rec['_why']} "
              f"[{rec['_reason']}]" for rec in bad.head(MAX_LISTED_LINES).iter_rows(named=True)]
    if bad.height > len(listed):
        listed.append(f"and {bad.height - len(listed)} more line(s)")
    tally = ", ".join(f"{r} {n}" for r, n in counts.items())
    policies = ", ".join(f"{r}=fail" for r in counts)
    way_out = " ".join(f"--policy {r}={next(a for a in ALLOWED[Reason(r)] if a is not Action.FAIL)}"
                       for r in counts)
    raise ValidationFailed(
        f"{bad.height} input line(s) cannot be stored as bars ({tally}): " + "; ".join(listed),
        path=first["_file"], line=first["_line"], column=_LINE_COLUMN[Reason(first["_reason"])],
        hint=f"policy {policies}; `{way_out}` stores the valid rows and keeps these lines as "
        "counted rejects",
    )


_LINE_COLUMN: dict[Reason, str | None] = {
    Reason.EMPTY_ROW: None, Reason.BAD_TIMESTAMP: "ts", Reason.BAD_SYMBOL: "symbol", Reason.OFF_GRID: "ts",
}


def _flag_returns_and_stale(
    df: pl.DataFrame, timeframe: Timeframe, policy: Policy, report: ValidationReport
) -> pl.DataFrame:
    price = "adj_close" if "adj_close" in df.columns else "close"
    ret = (pl.col(price) / pl.col(price).shift(1)).log().over("symbol")
    extreme = (ret.abs() > policy.threshold(timeframe)).fill_null(False)
    counts = _count(df, extreme)
    if counts.height:
        if policy.actions[Reason.EXTREME_RETURN] is Action.FAIL:
            _fail(Reason.EXTREME_RETURN, df, extreme, price)
        report.add(Reason.EXTREME_RETURN, Action.KEEP, counts)
    synthetic = pl.col("is_filled").fill_null(False) if "is_filled" in df.columns else pl.lit(False)
    flat = (
        ~synthetic  # bars inserted by gap=fill are counted as gaps, not as stale prices
        & (pl.col("volume") == 0)
        & (pl.col("open") == pl.col("close"))
        & (pl.col("high") == pl.col("close"))
        & (pl.col("low") == pl.col("close"))
        & (pl.col("close") == pl.col("close").shift(1).over("symbol"))
    ).fill_null(False)
    run_id = (flat != flat.shift(1).over("symbol")).fill_null(True).cum_sum()
    tmp = df.with_columns(_flat=flat, _run=run_id)
    tmp = tmp.with_columns(_runlen=pl.len().over("symbol", "_run"))
    stale = pl.col("_flat") & (pl.col("_runlen") >= policy.stale_run)
    counts = _count(tmp, stale)
    if counts.height:
        if policy.actions[Reason.STALE_PRICE] is Action.FAIL:
            _fail(Reason.STALE_PRICE, tmp, stale, "close")
        report.add(Reason.STALE_PRICE, Action.KEEP, counts)
    return df


def _gaps(
    df: pl.DataFrame,
    timeframe: Timeframe,
    policy: Policy,
    report: ValidationReport,
    extra_keys: pl.DataFrame | None,
) -> tuple[pl.DataFrame, int]:
    # keep the source location (when there is one) so a gap=fail error names file and line
    keys = df.select("symbol", "ts", *[c for c in ("_file", "_line") if c in df.columns])
    if extra_keys is not None and extra_keys.height:
        extra = extra_keys.select("symbol", "ts").cast({"symbol": keys.schema["symbol"],
                                                        "ts": keys.schema["ts"]})
        keys = (pl.concat([keys, extra], how="diagonal")
                .unique(["symbol", "ts"], keep="first", maintain_order=True).sort("symbol", "ts"))
    # bars filled at ingest (is_filled) occupy their slot: validate_bars counts them once, as
    # gap/fill, instead of also reporting the gap they fill as a kept gap
    marked = mark_gaps(keys, timeframe)
    counts = _count(marked, pl.col("gap_before"), weight=pl.col("missing_before"))
    if counts.height == 0:
        return df, 0
    a = policy.actions[Reason.GAP]
    if a is Action.FAIL:
        _fail(Reason.GAP, marked, pl.col("gap_before"), "ts")
    if a is Action.FILL and not timeframe.is_intraday:
        raise ValueError("gap=fill is for intraday bars; daily gaps follow the trading calendar")
    report.add(Reason.GAP, a, counts)
    if a is Action.FILL:
        df = fill_gaps(df, timeframe)
    return df, int(counts.get_column("count").sum())


def fill_gaps(df: pl.DataFrame, timeframe: Timeframe) -> pl.DataFrame:
    """Insert flat zero-volume bars at the previous close, marked ``is_filled``."""
    step = int(timeframe.step.total_seconds() * 1e9)
    base = df.with_columns(is_filled=pl.lit(False)) if "is_filled" not in df.columns else df
    prev = base.with_columns(
        _prev_ts=pl.col("ts").shift(1).over("symbol"),
        _prev_close=pl.col("close").shift(1).over("symbol"),
    )
    gap = prev.filter(
        (pl.col("ts") - pl.col("_prev_ts")).dt.total_nanoseconds() > step
    ).select("symbol", "_prev_ts", "_prev_close", "ts")
    if gap.height == 0:
        return base
    start = gap.get_column("_prev_ts").dt.epoch("ns").to_numpy()
    end = gap.get_column("ts").dt.epoch("ns").to_numpy()
    n = (end - start) // step - 1
    idx = np.repeat(np.arange(len(n)), n)
    k = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n) + 1
    ts = start[idx] + k * step
    closes = gap.get_column("_prev_close").to_numpy()[idx]
    filled = pl.DataFrame(
        {
            "symbol": gap.get_column("symbol").to_numpy()[idx],
            "ts": pl.Series(ts).cast(pl.Datetime("ns")).dt.replace_time_zone("UTC"),
            "open": closes, "high": closes, "low": closes, "close": closes,
            "volume": np.zeros(len(ts)),
            "is_filled": np.ones(len(ts), dtype=bool),
        }
    )
    if "adj_close" in base.columns:
        filled = filled.with_columns(adj_close=pl.col("close"))
    if "trades" in base.columns:
        filled = filled.with_columns(trades=pl.lit(0, pl.Int64))
    out = pl.concat([base, filled], how="diagonal_relaxed")
    return out.sort("symbol", "ts")


def validate_bars(
    bars: pl.DataFrame,
    timeframe: Timeframe,
    rejects: pl.DataFrame | None = None,
    policy: Policy | None = None,
) -> ValidationReport:
    """Re-check stored bars: rejects recorded at ingest are counted, flags recomputed."""
    policy = policy or Policy()
    report = ValidationReport(rows_in=bars.height, rows_out=bars.height)
    if rejects is not None and rejects.height:
        for reason_s, grp in rejects.group_by("reason", maintain_order=True):
            reason = Reason(reason_s[0])
            if reason is Reason.DUPLICATE_CONFLICTING:  # counted in keys, as at ingest
                grp = grp.sort("symbol", "ts", "line").unique(["symbol", "ts"], keep="first")
            counts = (
                grp.sort("symbol", "ts")
                .group_by("symbol", maintain_order=True)
                .agg(
                    pl.len().cast(pl.Int64).alias("count"), pl.col("ts").first(),
                    pl.col("file").first(), pl.col("line").first(),
                )
            )
            report.add(reason, Action.DROP if reason is not Reason.DUPLICATE_CONFLICTING
                       else policy.actions[reason], counts)
    report.rows_in += 0 if rejects is None else rejects.height
    bad_ohlc = (
        (pl.col("high") < pl.max_horizontal("open", "close"))
        | (pl.col("low") > pl.min_horizontal("open", "close"))
        | (pl.col("high") < pl.col("low"))
    )
    counts = _count(bars, bad_ohlc)
    if counts.height:
        report.add(Reason.OHLC_INCONSISTENT, Action.KEEP, counts)
    _flag_returns_and_stale(bars, timeframe, policy, report)
    null_keys = None
    if rejects is not None and rejects.height:
        null_keys = rejects.filter(pl.col("reason") == str(Reason.ALL_NULL)).select("symbol", "ts")
    _gaps(bars, timeframe, Policy(actions={**policy.actions, Reason.GAP: Action.KEEP}),
          report, extra_keys=null_keys)
    if "is_filled" in bars.columns:
        filled = _count(bars, pl.col("is_filled").fill_null(False))
        if filled.height:
            report.add(Reason.GAP, Action.FILL, filled)
    return report


def infer_timeframe(df: pl.DataFrame) -> Timeframe:
    """Median spacing of consecutive bars per symbol -> the nearest known timeframe."""
    d = (
        df.sort("symbol", "ts")
        .select(pl.col("ts").diff().over("symbol").dt.total_seconds().alias("d"))
        .drop_nulls()
        .filter(pl.col("d") > 0)
    )
    if d.height == 0:
        raise ValueError("cannot infer the timeframe from fewer than two bars; pass --timeframe")
    med = float(cast(float, d.get_column("d").median()))
    for tf in Timeframe:
        if tf is not Timeframe.D1 and abs(med - tf.step.total_seconds()) < 1e-6:
            return tf
    if 86400 * 0.9 <= med <= 86400 * 4:
        return Timeframe.D1
    raise ValueError(f"median bar spacing {med:.0f}s matches no timeframe; pass --timeframe")
