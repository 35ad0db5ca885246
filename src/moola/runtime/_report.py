"""What a dry-run period looked like: ``moola runtime report`` (HTML) and ``moola runtime status``.

Everything is read back from the ledger (``Ledger``), so a report can be written while the
runtime is still running, or long after it stopped.

Definitions (the report states them too):

* **realised outcome** of a signal at bar ``t`` (the bar whose close it is computed at): the next
  bar's close vs bar ``t``'s close, the label the members were trained on (``moola.datasets``:
  "up" when ``close[t+1] > close[t]``, the next row of the same symbol). Closes come from
  ``bars`` when given; otherwise from the paper book's marks (``close = (pnl - cash) /
  position``), which exist only for bars where the book held a position, so fewer bars have an
  outcome; the report says how many.
* **hit rate**: long/short decisions (``decision`` +-1) whose next bar moved their way, over the
  calls with an outcome; a next bar that closes unchanged is neither a hit nor a miss and is left
  out (counted separately). The interval is Wilson's score interval (95 %), beside a
  moving-block bootstrap (``moola.evaluation.block_bootstrap_ci``) of the same hits in time order.
* **reliability**: P(up) in equal-count bins vs the share of next bars that closed up
  (``reliability_up``: direction models put nearly every P(up) within a few points of 0.5).
* **paper PnL** after fees and slippage: the last ``positions`` row per symbol (``PaperBook``),
  in quote currency and, when the book's notional can be read off its fills, in % of it.

A runtime with no measurable call (warm-up only, or every bar stale) renders "not measured"
where a number would be, instead of failing.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates
import matplotlib.pyplot as plt
import numpy as np
import polars as pl
from rich.table import Table

from moola.data import TS_DTYPE
from moola.evaluation import BootstrapCI, block_bootstrap_ci
from moola.evaluation.data_report import DataReport
from moola.evaluation.run_report import reliability_up
from moola.runtime._ledger import Ledger, LedgerError

__all__ = [
    "HitRate",
    "RuntimeSummary",
    "SymbolSummary",
    "runtime_outcomes",
    "runtime_summary",
    "status_rows",
    "status_table",
    "wilson_interval",
    "write_runtime_report",
]

NOT_MEASURED = "not measured"
Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile
OutcomeSource = Literal["bars", "paper marks"]
N_BOOT = 500  # hit-rate bootstrap resamples: a few seconds for a month of minutes over 3 symbols


def wilson_interval(hits: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for a proportion ``hits / n`` (well behaved near 0, 1 and small n)."""
    if n <= 0:
        raise ValueError(f"wilson_interval: n must be >= 1, got {n}")
    if not 0 <= hits <= n:
        raise ValueError(f"wilson_interval: hits must be in [0, n={n}], got {hits}")
    p = hits / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class HitRate:
    """Long/short calls with a realised outcome: hits, rate, Wilson 95 % interval, block bootstrap."""

    hits: int
    n: int
    flat_next: int = 0  # calls whose next bar closed unchanged (left out of n)
    bootstrap: BootstrapCI | None = None

    @property
    def measured(self) -> bool:
        return self.n > 0

    @property
    def rate(self) -> float | None:
        return self.hits / self.n if self.n else None

    @property
    def wilson(self) -> tuple[float, float] | None:
        return wilson_interval(self.hits, self.n) if self.n else None

    def verdict(self) -> str:
        """Plain words: above, below, or not distinguishable from a coin's 0.5."""
        ci = self.wilson
        if ci is None:
            return NOT_MEASURED
        if ci[0] > 0.5:
            return "above 0.5"
        if ci[1] < 0.5:
            return "below 0.5"
        return "not distinguishable from 0.5"

    def text(self) -> str:
        if not self.measured:
            return f"hit rate {NOT_MEASURED} (no long/short call with a realised next bar)"
        lo, hi = self.wilson or (math.nan, math.nan)
        return (f"hit rate {self.rate:.3f} on {self.n:,} long/short calls "
                f"(95% Wilson CI {lo:.3f}-{hi:.3f}): {self.verdict()}")


@dataclass(frozen=True)
class SymbolSummary:
    """One symbol's period in the ledger."""

    symbol: str
    first_bar: datetime | None
    last_bar: datetime | None
    rows: int
    signals: int
    no_signal: dict[str, int]
    missing: int | None        # bars between the first and last with no ledger row (None: step unknown)
    decisions: dict[int, int]  # decision -> count among the signal rows
    hit: HitRate
    pnl: float | None          # paper PnL after costs at the last bar (quote currency)
    costs: float | None        # fees + slippage paid (quote currency)
    fills: int
    latency_p50_ms: float | None
    latency_p99_ms: float | None


@dataclass(frozen=True)
class RuntimeSummary:
    """The numbers of the report's first line (and of its tables)."""

    runtime: str
    step: timedelta | None
    outcome_source: OutcomeSource
    symbols: list[SymbolSummary]
    hit: HitRate
    outcomes: int              # signal rows with a realised next bar (for the reliability diagram)
    notional: float | None     # the paper book's notional per entry, read off its fills
    first_bar: datetime | None
    last_bar: datetime | None
    events: dict[str, int] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.symbols)

    @property
    def pnl(self) -> float | None:
        vals = [s.pnl for s in self.symbols if s.pnl is not None]
        return sum(vals) if vals else None

    def pnl_text(self, value: float | None) -> str:
        if value is None:
            return NOT_MEASURED
        if self.notional:
            return f"{100 * value / self.notional:+.3f}%"
        return f"{value:+.6g}"

    def headline(self) -> str:
        """The report's first line: how the period went, in plain words."""
        if not self.symbols:
            return (f"Runtime {self.runtime}: no bars in the ledger yet; hit rate and paper PnL "
                    f"{NOT_MEASURED}.")
        shared = len({(s.first_bar, s.last_bar) for s in self.symbols}) == 1
        span = f", {_ts(self.first_bar)} to {_ts(self.last_bar)} UTC" if shared else ""
        per = []
        for s in self.symbols:
            ns = sum(s.no_signal.values())
            reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(s.no_signal.items()))
            miss = f", {s.missing:,} bar{'s' if s.missing > 1 else ''} missing" if s.missing else ""
            own = "" if shared else f" from {_ts(s.first_bar)} to {_ts(s.last_bar)} UTC"
            per.append(f"{s.symbol} {s.rows:,} bars{own} ({s.signals:,} signals, {ns:,} no-signal"
                       + (f": {reasons}" if reasons else "") + f"{miss})")
        unit = f" of the {self.notional:g} notional" if self.notional else " (quote currency)"
        pnl = "; ".join(f"{s.symbol} {self.pnl_text(s.pnl)}"
                        + (f" (costs {self.pnl_text(s.costs).lstrip('+')})" if s.costs else
                           " (no fills)" if s.fills == 0 and s.pnl is not None else "")
                        for s in self.symbols)
        if all(s.pnl is None for s in self.symbols):
            pnl, unit = NOT_MEASURED, " (no paper positions)"
        src = "" if self.outcome_source == "bars" else " (outcomes from the paper book's marks)"
        return (f"Runtime {self.runtime}{span}: {'; '.join(per)}. Ensemble {self.hit.text()}{src}. "
                f"Paper PnL after costs{unit}: {pnl}.")


def _ts(t: datetime | None) -> str:
    return "-" if t is None else t.astimezone(UTC).strftime("%Y-%m-%d %H:%M")


def _pick_runtime(ledger: Ledger, runtime: str | None) -> str:
    names = ledger.runtimes()
    if runtime is not None:
        if runtime not in names:
            raise LedgerError(f"{ledger.masked_url}: no runtime {runtime!r} in the ledger; it holds "
                              f"{names or 'no runtime yet'}")
        return runtime
    if len(names) == 1:
        return names[0]
    if not names:
        raise LedgerError(f"{ledger.masked_url}: the ledger holds no runtime yet (no signals, no "
                          "events); run `moola runtime run` first")
    raise LedgerError(f"{ledger.masked_url}: the ledger holds several runtimes {names}; name one "
                      "(runtime=...)")


def _infer_step(frame: pl.DataFrame, ts: str) -> timedelta | None:
    """The bar length: the smallest positive gap between consecutive bars of a symbol."""
    if frame.height < 2:
        return None
    d = (frame.sort("symbol", ts).select((pl.col(ts).diff().over("symbol")).alias("d"))
         .filter(pl.col("d") > timedelta(0))["d"])
    if d.is_empty():
        return None
    v = d.min()
    return v if isinstance(v, timedelta) else None


def _bars_frame(bars: pl.DataFrame) -> pl.DataFrame:
    need = {"symbol", "ts", "close"}
    if missing := sorted(need - set(bars.columns)):
        raise LedgerError(f"runtime report: bars lack columns {missing} (have {bars.columns})")
    cols = [c for c in ("open", "close") if c in bars.columns]
    return (bars.select("symbol", pl.col("ts").cast(TS_DTYPE), *[pl.col(c).cast(pl.Float64) for c in cols])
            .unique(["symbol", "ts"], keep="last").sort("symbol", "ts"))


def runtime_outcomes(signals: pl.DataFrame, positions: pl.DataFrame,
                     bars: pl.DataFrame | None = None) -> tuple[pl.DataFrame, OutcomeSource]:
    """Every signal row with its close, the next bar's close and the realised direction.

    Columns added: ``close``, ``next_close`` (null where unknown), ``move`` (sign of
    ``next_close - close``, null where unknown), ``up`` (``next_close > close``, the training
    label), ``hit`` (``decision == move`` for a long/short call with a non-zero move, else null).
    """
    if bars is not None:
        b = _bars_frame(bars).filter(pl.col("symbol").is_in(signals["symbol"].unique().implode()))
        b = b.with_columns(pl.col("close").shift(-1).over("symbol").alias("next_close"))
        joined = signals.join(b.select("symbol", pl.col("ts").alias("bar_ts"), "close", "next_close"),
                              on=["symbol", "bar_ts"], how="left", maintain_order="left")
        source: OutcomeSource = "bars"
    else:
        marks = positions.select(
            "symbol", "bar_ts",
            pl.when(pl.col("position") != 0).then((pl.col("pnl") - pl.col("cash")) / pl.col("position"))
            .otherwise(None).alias("close"))
        joined = signals.join(marks, on=["symbol", "bar_ts"], how="left", maintain_order="left")
        joined = joined.sort("symbol", "bar_ts").with_columns(
            pl.col("close").shift(-1).over("symbol").alias("next_close"))
        source = "paper marks"
    joined = joined.sort("symbol", "bar_ts").with_columns(
        (pl.col("next_close") - pl.col("close")).sign().cast(pl.Int8).alias("move"),
        (pl.col("next_close") > pl.col("close")).alias("up"))
    call = (pl.col("status") == "signal") & pl.col("decision").is_in([-1, 1])
    joined = joined.with_columns(
        pl.when(call & pl.col("move").is_not_null() & (pl.col("move") != 0))
        .then(pl.col("decision") == pl.col("move")).otherwise(None).alias("hit"),
        (call & (pl.col("move") == 0)).fill_null(False).alias("flat_next"))
    return joined, source


def _hit_rate(frame: pl.DataFrame, *, bootstrap: bool = True) -> HitRate:
    h = frame["hit"].drop_nulls().cast(pl.Float64).to_numpy()
    flat = int(frame["flat_next"].sum())
    ci = block_bootstrap_ci(h, n_boot=N_BOOT, seed=0) if bootstrap and h.size >= 2 else None
    return HitRate(int(h.sum()), int(h.size), flat, ci)


def _notional(fills: pl.DataFrame, positions: pl.DataFrame) -> float | None:
    """The paper book's quote notional per entry: ``|position| * fill price`` after a fill into a
    long or short (``PaperBook`` sizes every entry so)."""
    if fills.is_empty():
        return None
    j = fills.join(positions, on=["symbol", "bar_ts"], how="inner").filter(pl.col("target") != 0)
    if j.is_empty():
        return None
    v = (j["position"].abs() * j["price"]).median()
    return float(v) if isinstance(v, int | float) and v > 0 else None


def runtime_summary(ledger: Ledger, runtime: str | None = None, *,
                    bars: pl.DataFrame | None = None) -> RuntimeSummary:
    """The period's numbers (what the report's first line says); see the module doc."""
    summary, _ = _collect(ledger, runtime, bars)
    return summary


@dataclass
class _Data:
    signals: pl.DataFrame
    outcomes: pl.DataFrame
    events: pl.DataFrame
    fills: pl.DataFrame
    positions: pl.DataFrame
    bars: pl.DataFrame | None


def _collect(ledger: Ledger, runtime: str | None,
             bars: pl.DataFrame | None) -> tuple[RuntimeSummary, _Data]:
    rt = _pick_runtime(ledger, runtime)
    sig, ev = ledger.signals(rt), ledger.events(rt)
    fills, pos = ledger.fills(rt), ledger.positions(rt)
    out, source = runtime_outcomes(sig, pos, bars)
    step = _infer_step(_bars_frame(bars), "ts") if bars is not None else None
    step = step or _infer_step(sig, "bar_ts")
    per: list[SymbolSummary] = []
    for sym in sorted(sig["symbol"].unique().to_list()):
        s = out.filter(pl.col("symbol") == sym)
        first, last = s["bar_ts"].min(), s["bar_ts"].max()
        assert isinstance(first, datetime) and isinstance(last, datetime)
        missing = None
        if step is not None:
            missing = max(0, round((last - first) / step) + 1 - s.height)
        ns = s.filter(pl.col("status") == "no_signal")["reason"].fill_null("?").value_counts()
        dec = s.filter(pl.col("status") == "signal")["decision"].value_counts()
        p = pos.filter(pl.col("symbol") == sym)
        lat = s["latency_ms"].drop_nulls()
        per.append(SymbolSummary(
            symbol=sym, first_bar=first, last_bar=last, rows=s.height,
            signals=int((s["status"] == "signal").sum()),
            no_signal={str(k): int(v) for k, v in ns.iter_rows()},
            missing=missing,
            decisions={int(k): int(v) for k, v in dec.iter_rows() if k is not None},
            hit=_hit_rate(s),
            pnl=float(p["pnl"][-1]) if p.height else None,
            costs=float(p["costs"][-1]) if p.height else None,
            fills=fills.filter(pl.col("symbol") == sym).height,
            latency_p50_ms=float(np.percentile(lat.to_numpy(), 50)) if lat.len() else None,
            latency_p99_ms=float(np.percentile(lat.to_numpy(), 99)) if lat.len() else None))
    firsts = [s.first_bar for s in per if s.first_bar is not None]
    lasts = [s.last_bar for s in per if s.last_bar is not None]
    summary = RuntimeSummary(
        runtime=rt, step=step, outcome_source=source, symbols=per, hit=_hit_rate(out),
        outcomes=int(out.filter((pl.col("status") == "signal") & pl.col("proba_up").is_not_null()
                                & pl.col("up").is_not_null()).height),
        notional=_notional(fills, pos), first_bar=min(firsts, default=None),
        last_bar=max(lasts, default=None),
        events={str(k): int(v) for k, v in ev["kind"].value_counts().sort("kind").iter_rows()})
    return summary, _Data(sig, out, ev, fills, pos, None if bars is None else _bars_frame(bars))


# ------------------------------------------------------------------------------------ the report


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def _time_axis(ax: Any) -> None:
    """Concise UTC date ticks (minute bars over hours or days stay readable)."""
    loc = mdates.AutoDateLocator(tz=UTC)
    ax.xaxis.set_major_locator(loc)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(loc, tz=UTC))


def _panels(n: int, height: float = 2.4) -> tuple[plt.Figure, list[Any]]:
    """One row per symbol (symbols may cover different periods), sharing the y axis."""
    fig, axes = plt.subplots(max(n, 1), 1, figsize=(10, height * max(n, 1) + 0.6), sharey=True,
                             squeeze=False)
    return fig, [a[0] for a in axes]


def _placeholder(text: str, size: tuple[float, float] = (8, 1.4)) -> plt.Figure:
    fig, ax = plt.subplots(figsize=size)
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=12)
    ax.set_axis_off()
    return fig


def write_runtime_report(ledger: Ledger, runtime: str | None, out: Path | str, *,
                         bars: pl.DataFrame | None = None) -> Path:
    """Write the runtime's HTML report to ``out`` (PNGs beside it, named after its stem); returns
    ``out``. ``runtime`` None: the ledger's only runtime. ``bars`` (``symbol, ts, close`` and
    ideally ``open``): the closes for the price plot and the realised outcomes; without them the
    paper book's marks are used (see the module doc)."""
    out = Path(out)
    summary, d = _collect(ledger, runtime, bars)
    rep = DataReport(out.parent, title=f"moola runtime report: {summary.runtime}")
    pre = _slug(out.stem)
    headline = summary.headline()
    bad = summary.hit.measured and summary.hit.verdict() == "below 0.5"
    rep.verdict_box([headline], loud=bad)  # the same box every moola report opens with
    rep.paragraph(
        f"Ledger {ledger.masked_url}; bar length {summary.step or 'unknown'}; dry-run only (paper "
        "fills at the next bar's open after fees and slippage, no order placed). Realised outcome "
        "of a signal: the next bar's close vs this bar's close"
        + (" (from the bars given)." if summary.outcome_source == "bars" else
           " (from the paper book's marks: only bars where it held a position have a close; pass "
           "the bars for every outcome)."))

    _coverage_section(rep, summary)
    _price_section(rep, summary, d, pre)
    _hit_section(rep, summary, d, pre)
    _equity_section(rep, summary, d, pre)
    _events_section(rep, summary, d, pre)
    _members_section(rep, d)
    return rep.write(out.name)


def _coverage_section(rep: DataReport, s: RuntimeSummary) -> None:
    rep.heading("Bars covered")
    if not s.symbols:
        rep.paragraph("No signal rows in the ledger yet.")
        return
    reasons = sorted({r for x in s.symbols for r in x.no_signal})
    rows = [{"symbol": x.symbol, "first bar": _ts(x.first_bar), "last bar": _ts(x.last_bar),
             "rows": x.rows, "missing": x.missing, "signals": x.signals,
             **{f"no-signal: {r}": x.no_signal.get(r, 0) for r in reasons},
             "long": x.decisions.get(1, 0), "flat": x.decisions.get(0, 0), "short": x.decisions.get(-1, 0),
             "latency p50 ms": x.latency_p50_ms, "latency p99 ms": x.latency_p99_ms}
            for x in s.symbols]
    rep.table(pl.DataFrame(rows), caption="one ledger row per symbol and bar: signals, explicit "
              "no-signal rows by reason, bars missing between the first and last (should be 0)")


def _closes(s: RuntimeSummary, d: _Data, sym: str) -> tuple[list[datetime], np.ndarray, str]:
    first, last = (next((x.first_bar, x.last_bar) for x in s.symbols if x.symbol == sym))
    if d.bars is not None:
        b = d.bars.filter((pl.col("symbol") == sym) & pl.col("ts").is_between(first, last))
        return b["ts"].to_list(), b["close"].to_numpy(), "close (bars)"
    o = d.outcomes.filter(pl.col("symbol") == sym)
    return o["bar_ts"].to_list(), o["close"].cast(pl.Float64).fill_null(np.nan).to_numpy(), \
        "close (paper marks; gaps: flat)"


DETAIL_BARS = 480  # a price plot marks each decision change up to this many bars; beyond, the last ones


def _price_section(rep: DataReport, s: RuntimeSummary, d: _Data, pre: str) -> None:
    rep.heading("Price and decisions")
    for x in s.symbols:
        ts, close, label = _closes(s, d, x.symbol)
        o = d.outcomes.filter(pl.col("symbol") == x.symbol)
        if not np.isfinite(close).any():
            rep.paragraph(f"{x.symbol}: no price to draw (no bars given and the paper book never "
                          "held a position).")
            continue
        name = f"{pre}_price_{_slug(x.symbol)}"
        if o.height > DETAIL_BARS:
            rep.figure(_overview_figure(o, ts, close, label, x.symbol), name,
                       f"{x.symbol}: {label} over the whole period; below: the mean decision per "
                       "bucket of bars (+1 all long, -1 all short) and the share of no-signal bars")
            cut = o["bar_ts"][-DETAIL_BARS]
            keep = [i for i, t in enumerate(ts) if t >= cut]
            o, ts, close = o.tail(DETAIL_BARS), [ts[i] for i in keep], close[keep]
            name, what = f"{name}_last", f"the last {DETAIL_BARS} bars"
        else:
            what = "the period"
        rep.figure(_detail_figure(o, ts, close, label, f"{x.symbol}: {what}"), name,
                   f"{x.symbol}, {what}: {label} with the decisions marked where they change; "
                   "below: the decision per bar, no-signal bars in orange")


def _detail_figure(o: pl.DataFrame, ts: list[datetime], close: np.ndarray, label: str,
                   title: str) -> plt.Figure:
    fig, (ax, axd) = plt.subplots(2, 1, figsize=(11, 4.4), sharex=True,
                                  gridspec_kw={"height_ratios": [3, 1]})
    ax.plot(ts, close, lw=0.7, color="#333", label=label)
    sig = o.filter(pl.col("status") == "signal")
    change = sig.filter((sig["decision"] != sig["decision"].shift(1)).fill_null(True))
    px = dict(zip(ts, close, strict=True))
    for val, mk, col, name in ((1, "^", "#2e8b57", "long"), (-1, "v", "#c0392b", "short"),
                               (0, "o", "#888", "flat")):
        pts = change.filter(pl.col("decision") == val)
        xs = [t for t in pts["bar_ts"].to_list() if np.isfinite(px.get(t, np.nan))]
        if xs:
            ax.scatter(xs, [px[t] for t in xs], marker=mk, color=col, s=22, zorder=3,
                       label=f"{name} decided ({pts.height})")
    ax.set_title(f"{title}: price and decisions (markers where the decision changes)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    dec = o.select(pl.when(pl.col("status") == "signal").then(pl.col("decision").cast(pl.Float64))
                   .otherwise(None))[:, 0].fill_null(np.nan).to_numpy()
    axd.step(o["bar_ts"].to_list(), dec, where="post", lw=0.8, color="#4c72b0")
    nos = o.filter(pl.col("status") == "no_signal")["bar_ts"].to_list()
    if nos:
        axd.scatter(nos, [0.0] * len(nos), marker="|", color="#e08e0b", s=30,
                    label=f"no signal ({len(nos)})")
        axd.legend(fontsize=7, loc="upper right")
    axd.set_yticks([-1, 0, 1])
    axd.set_yticklabels(["short", "flat", "long"])
    axd.set_ylim(-1.4, 1.4)
    axd.grid(alpha=0.3)
    _time_axis(axd)
    fig.tight_layout()
    return fig


def _overview_figure(o: pl.DataFrame, ts: list[datetime], close: np.ndarray, label: str,
                     symbol: str, buckets: int = 240) -> plt.Figure:
    """Too many bars to mark: the mean decision and the no-signal share per bucket of bars."""
    fig, (ax, axd) = plt.subplots(2, 1, figsize=(11, 4.4), sharex=True,
                                  gridspec_kw={"height_ratios": [3, 1]})
    ax.plot(ts, close, lw=0.6, color="#333", label=label)
    ax.set_title(f"{symbol}: price over the period ({o.height:,} bars)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    size = max(1, math.ceil(o.height / buckets))
    g = (o.with_row_index("i").with_columns((pl.col("i") // size).alias("b"))
         .group_by("b", maintain_order=True)
         .agg(pl.col("bar_ts").first(), pl.col("bar_ts").last().alias("end"),
              pl.col("decision").filter(pl.col("status") == "signal").cast(pl.Float64).mean()
              .alias("mean"),
              (pl.col("status") == "no_signal").mean().alias("none")))
    start, end = g["bar_ts"].to_list(), g["end"].to_list()
    width = [(e - b) if e > b else timedelta(minutes=1) for b, e in zip(start, end, strict=True)]
    mean = g["mean"].fill_null(0.0).to_numpy()
    axd.bar(start, mean, width=width, align="edge", color=np.where(mean >= 0, "#2e8b57", "#c0392b"),
            label=f"mean decision per {size} bars")
    axd.step(start, g["none"].to_numpy(), where="post", color="#e08e0b", lw=0.9,
             label="no-signal share")
    axd.axhline(0, color="grey", lw=0.6)
    axd.set_ylim(-1.05, 1.05)
    axd.set_yticks([-1, 0, 1])
    axd.set_yticklabels(["short", "0", "long"])
    axd.grid(alpha=0.3)
    axd.legend(fontsize=7, loc="upper right", ncol=2)
    _time_axis(axd)
    fig.tight_layout()
    return fig


def _hit_section(rep: DataReport, s: RuntimeSummary, d: _Data, pre: str) -> None:
    rep.heading("Realised hit rate and calibration")
    rows = []
    for name, h in [*((x.symbol, x.hit) for x in s.symbols), ("all", s.hit)]:
        w = h.wilson
        b = h.bootstrap
        rows.append({"symbol": name, "calls": h.n, "hits": h.hits, "hit rate": h.rate,
                     "wilson low": None if w is None else w[0], "wilson high": None if w is None else w[1],
                     "bootstrap low": None if b is None else b.low,
                     "bootstrap high": None if b is None else b.high,
                     "flat next bar": h.flat_next, "vs 0.5": h.verdict()})
    rep.table(pl.DataFrame(rows), caption="long/short calls whose next bar moved their way; 95% "
              f"Wilson interval and moving-block bootstrap ({N_BOOT} resamples, blocks of "
              "ceil(n^(1/3)) consecutive calls); a next bar closing unchanged is left out")
    if not s.hit.measured:
        rep.paragraph(f"Hit rate {NOT_MEASURED}: no long/short call has a realised next bar yet "
                      "(warm-up, flat decisions, or no closes).")
    else:
        o = d.outcomes.filter(pl.col("hit").is_not_null())
        syms = sorted(o["symbol"].unique().to_list())
        fig, axes = _panels(len(syms), 2.2)
        for ax, sym in zip(axes, syms, strict=True):
            hs = o.filter(pl.col("symbol") == sym)
            k = np.arange(1, hs.height + 1)
            rate = np.cumsum(hs["hit"].cast(pl.Float64).to_numpy()) / k
            half = Z95 * np.sqrt(0.25 / k)
            t = hs["bar_ts"].to_list()
            ax.fill_between(t, 0.5 - half, 0.5 + half, color="#999", alpha=0.2,
                            label="a coin's 95% band")
            ax.plot(t, rate, lw=1.1, color="#4c72b0", label=f"{sym}: cumulative hit rate")
            ax.axhline(0.5, color="grey", ls=":", lw=1)
            ax.set_ylim(0.2, 0.8)
            ax.set_ylabel("hit rate")
            ax.set_title(f"{sym}: {hs.height:,} calls, final {rate[-1]:.3f}", fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="upper right")
            _time_axis(ax)
        fig.suptitle(f"realised hit rate over the period; all symbols: {s.hit.text()}", fontsize=9)
        fig.tight_layout()
        rep.figure(fig, f"{pre}_hit_rate", "cumulative hit rate of the long/short calls per symbol")
    cal = d.outcomes.filter((pl.col("status") == "signal") & pl.col("proba_up").is_not_null()
                            & pl.col("up").is_not_null())
    if cal.height < 2:
        rep.paragraph(f"Calibration {NOT_MEASURED}: fewer than 2 signals with a realised next bar.")
        return
    y = cal["up"].cast(pl.Int64).to_numpy()
    p = cal["proba_up"].to_numpy().astype(np.float64)
    curve = reliability_up(y, np.stack([1 - p, p], axis=1), n_bins=10)
    brier = float(np.mean((p - y) ** 2))
    base = float(np.mean((y.mean() - y) ** 2))
    ece = sum(n * abs(a - b) for n, a, b in zip(curve["count"], curve["observed"],
                                                 curve["mean_predicted"], strict=True)) / len(y)
    fig, ax = plt.subplots(figsize=(5.6, 5.0))
    mp, ob, cnt = (np.asarray(curve[k], dtype=float) for k in ("mean_predicted", "observed", "count"))
    err = Z95 * np.sqrt(np.clip(ob * (1 - ob), 1e-9, None) / cnt)
    xlo, xhi = float(min(mp.min(), 0.5)) - 0.01, float(max(mp.max(), 0.5)) + 0.01
    lo = float(min((ob - err).min(), xlo)) - 0.01
    hi = float(max((ob + err).max(), xhi)) + 0.01
    ax.plot([lo, hi], [lo, hi], ls=":", color="grey", label="perfect calibration")
    ax.axhline(float(y.mean()), color="#55a868", lw=0.8, ls="--", label=f"share up {y.mean():.3f}")
    ax.errorbar(mp, ob, yerr=err, fmt="o-", color="#c44e52", ms=4, capsize=2,
                label="equal-count bins (95% band)")
    for a, b, n in zip(mp, ob, cnt, strict=True):
        ax.annotate(f"{int(n)}", (a, b), fontsize=7, xytext=(3, -9), textcoords="offset points")
    ax.set_xlim(xlo, xhi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("ensemble P(up) (bin mean)")
    ax.set_ylabel("share of next bars that closed up")
    ax.set_title(f"reliability: n={len(y):,}, ECE={ece:.4f}, Brier={brier:.4f} "
                 f"(base rate {base:.4f})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    rep.figure(fig, f"{pre}_reliability", "reliability of the ensemble's P(up) vs the realised next-bar "
               "direction (up: next close > close), 10 equal-count bins, counts annotated")


def _equity_section(rep: DataReport, s: RuntimeSummary, d: _Data, pre: str) -> None:
    rep.heading("Paper equity after costs")
    if d.positions.is_empty():
        rep.paragraph(f"Paper equity {NOT_MEASURED}: no position rows in the ledger.")
        return
    scale = 100.0 / s.notional if s.notional else 1.0
    unit = f"% of the {s.notional:g} notional" if s.notional else "quote currency"
    rows = [{"symbol": x.symbol, "fills": x.fills, "PnL after costs": x.pnl,
             "costs paid": x.costs,
             "PnL before costs": None if x.pnl is None or x.costs is None else x.pnl + x.costs,
             f"PnL ({unit})": None if x.pnl is None else x.pnl * scale} for x in s.symbols]
    rep.table(pl.DataFrame(rows), caption="paper book at the last bar (quote currency): fills at the "
              "next bar's open, fees and slippage paid on every fill")
    syms = sorted(d.positions["symbol"].unique().to_list())
    fig, axes = _panels(len(syms), 2.4)
    for ax, sym in zip(axes, syms, strict=True):
        p = d.positions.filter(pl.col("symbol") == sym)
        t = p["bar_ts"].to_list()
        ax.plot(t, p["pnl"].to_numpy() * scale, lw=1.1, color="#4c72b0", label="after costs")
        ax.plot(t, (p["pnl"] + p["costs"]).to_numpy() * scale, lw=0.8, ls="--", color="#dd8452",
                label="before costs")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_ylabel(f"PnL ({unit})", fontsize=8)
        ax.set_title(sym, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
        _time_axis(ax)
    fig.suptitle("paper equity per symbol, net of fees and slippage (dashed: before costs)", fontsize=10)
    fig.tight_layout()
    rep.figure(fig, f"{pre}_equity", "paper PnL per symbol after costs, marked at each bar's close")


def _events_section(rep: DataReport, s: RuntimeSummary, d: _Data, pre: str) -> None:
    rep.heading("Events")
    ev = d.events
    if ev.is_empty():
        rep.paragraph("No events recorded (no feed fault, retry, gap, member failure, start or stop).")
        return
    counts = (ev.with_columns(pl.col("symbol").fill_null("(runtime)"))
              .pivot(on="symbol", index="kind", values="id", aggregate_function="len")
              .fill_null(0).sort("kind"))
    counts = counts.with_columns(pl.sum_horizontal(pl.exclude("kind")).alias("total"))
    rep.table(counts, caption="events by kind and symbol")
    kinds = sorted(ev["kind"].unique().to_list())
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(kinds) + 1.6))
    syms = sorted(ev["symbol"].fill_null("(runtime)").unique().to_list())
    colours = plt.get_cmap("tab10")
    for i, sym in enumerate(syms):
        e = ev.filter(pl.col("symbol").fill_null("(runtime)") == sym)
        ax.scatter(e["at"].to_list(), [kinds.index(k) for k in e["kind"].to_list()], s=16,
                   color=colours(i % 10), label=sym, alpha=0.8)
    ax.set_yticks(range(len(kinds)))
    ax.set_yticklabels(kinds, fontsize=8)
    ax.set_ylim(-0.6, len(kinds) - 0.4)
    ax.set_title("events timeline (time recorded)")
    _time_axis(ax)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    rep.figure(fig, f"{pre}_events", "events by kind over time, coloured by symbol")
    last = ev.tail(30).select(pl.col("at").dt.strftime("%Y-%m-%d %H:%M:%S"), "kind", "symbol",
                              pl.col("bar_ts").dt.strftime("%Y-%m-%d %H:%M"), "message")
    rep.table(last.reverse(), caption=f"the last {last.height} of {ev.height} events, newest first")


def _members_section(rep: DataReport, d: _Data) -> None:
    rep.heading("Members")
    sig = d.outcomes
    if sig.is_empty():
        rep.paragraph("No signal rows, so no member status.")
        return
    stats: dict[str, dict[str, Any]] = {}
    errors: dict[str, Counter[str]] = {}
    for members, up in zip(sig["members"].to_list(), sig["up"].to_list(), strict=True):
        try:
            parsed = json.loads(members or "{}")
        except json.JSONDecodeError:
            parsed = {}
        for name, m in (parsed.items() if isinstance(parsed, Mapping) else ()):
            m = m if isinstance(m, Mapping) else {}
            st = stats.setdefault(name, {"listed": 0, "voted": 0, "failed": 0, "right": 0, "scored": 0,
                                         "proba": [], "versions": set()})
            st["listed"] += 1
            if m.get("version") is not None:
                st["versions"].add(str(m["version"]))
            proba = m.get("proba")
            if m.get("ok") is False:
                st["failed"] += 1
                errors.setdefault(name, Counter())[str(m.get("error") or "unknown error")] += 1
            elif isinstance(proba, int | float):
                st["voted"] += 1
                st["proba"].append(float(proba))
                if up is not None:
                    st["scored"] += 1
                    st["right"] += int((proba > 0.5) == bool(up))
    if not stats:
        rep.paragraph("The signal rows name no members.")
        return
    rows = [{"member": name, "versions": ", ".join(sorted(st["versions"])), "rows": st["listed"],
             "voted": st["voted"], "voted share": st["voted"] / sig.height, "failed": st["failed"],
             "silent (warm-up)": st["listed"] - st["voted"] - st["failed"],
             "mean P(up)": float(np.mean(st["proba"])) if st["proba"] else None,
             "own accuracy": st["right"] / st["scored"] if st["scored"] else None,
             "scored": st["scored"]}
            for name, st in sorted(stats.items())]
    rep.table(pl.DataFrame(rows), caption=f"per member over the {sig.height:,} ledger rows: how often "
              "it voted, failed, or had no probability yet (warm-up); own accuracy: P(up) > 0.5 vs "
              "the realised next bar")
    err_rows = [{"member": n, "error": e, "count": c} for n, cnt in sorted(errors.items())
                for e, c in cnt.most_common(5)]
    if err_rows:
        rep.table(pl.DataFrame(err_rows), caption="member failures (most frequent errors)")


# ------------------------------------------------------------------------------------ status


def _age(delta: timedelta | None) -> str:
    if delta is None:
        return "-"
    secs = int(delta.total_seconds())
    sign = "-" if secs < 0 else ""
    secs = abs(secs)
    d, rem = divmod(secs, 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    if d:
        return f"{sign}{d}d {h}h"
    if h:
        return f"{sign}{h}h {m}m"
    if m:
        return f"{sign}{m}m {s}s"
    return f"{sign}{s}s"


def status_rows(ledger: Ledger, runtime: str | None = None, *,
                now: datetime | None = None) -> list[dict[str, Any]]:
    """One dict per (runtime, symbol): ``runtime, symbol, first_bar, last_bar, rows, signals,
    no_signal`` ({reason: count}), ``pnl, position, last_event`` ({at, kind, message} of the
    symbol's last event, or the runtime's for a runtime without symbols), ``lag`` (now minus the
    last bar's open time). ``runtime`` None: every runtime in the ledger."""
    now = now or datetime.now(UTC)
    names = [_pick_runtime(ledger, runtime)] if runtime is not None else ledger.runtimes()
    rows: list[dict[str, Any]] = []
    for rt in names:
        st = ledger.status(rt)
        ev = ledger.events(rt)
        symbols: Mapping[str, Mapping[str, Any]] = st["symbols"]
        for sym, d in symbols.items():
            mine = ev.filter(pl.col("symbol") == sym)
            last_ev = None
            if mine.height:
                r = mine.row(-1, named=True)
                last_ev = {"at": r["at"], "kind": r["kind"], "message": r["message"]}
            last = d["last_bar"]
            rows.append({"runtime": rt, "symbol": sym, "first_bar": d["first_bar"], "last_bar": last,
                         "rows": d["rows"], "signals": d["signals"], "no_signal": dict(d["no_signal"]),
                         "pnl": d["pnl"], "position": d["position"], "last_event": last_ev,
                         "lag": None if last is None else now - last})
        if not symbols:
            rows.append({"runtime": rt, "symbol": None, "first_bar": None, "last_bar": None, "rows": 0,
                         "signals": 0, "no_signal": {}, "pnl": None, "position": None,
                         "last_event": st["last_event"], "lag": None})
    return rows


def status_table(ledger: Ledger, runtime: str | None = None, *,
                 now: datetime | None = None) -> Table:
    """``moola runtime status``: per runtime and symbol the last bar, rows, signals, no-signal rows
    by reason, paper PnL, the last event and how far the last bar lags behind now."""
    rows = status_rows(ledger, runtime, now=now)
    table = Table(title=f"moola runtime status: {ledger.masked_url}", title_justify="left")
    for name, just in (("runtime", "left"), ("symbol", "left"), ("last bar (UTC)", "left"),
                       ("rows", "right"), ("signals", "right"), ("no signal", "left"),
                       ("paper PnL", "right"), ("last event", "left"), ("lag", "right")):
        table.add_column(name, justify=just)  # type: ignore[arg-type]
    for r in rows:
        ns = ", ".join(f"{k} {v:,}" for k, v in sorted(r["no_signal"].items())) or "-"
        ev = r["last_event"]
        ev_text = "-" if ev is None else (
            f"{ev['kind']} {ev['at'].astimezone(UTC):%m-%d %H:%M:%S}: {_short(ev['message'])}")
        last = r["last_bar"]
        table.add_row(r["runtime"], r["symbol"] or "-",
                      "-" if last is None else f"{last.astimezone(UTC):%Y-%m-%d %H:%M}",
                      f"{r['rows']:,}", f"{r['signals']:,}", ns,
                      "-" if r["pnl"] is None else f"{r['pnl']:+.6g}", ev_text, _age(r["lag"]))
    if not rows:
        table.caption = "the ledger holds no runtime yet"
    return table


def _short(text: str, limit: int = 60) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
