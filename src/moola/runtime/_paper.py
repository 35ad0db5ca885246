"""The dry-run paper book: positions from the ensemble's decisions, fills at the next bar's open.

No order is ever sent; this is bookkeeping only. Per symbol, for each bar that has a signal row,
in time order (``on_bar``):

1. the decision pending from the previous bar (computed at that bar's close) is filled at THIS
   bar's open ``o``: the target is ``decision * notional / o`` units (a fixed quote notional per
   entry, so symbols of different prices weigh alike); a decision equal to the target in effect
   trades nothing (the units bought at entry are held, not rebalanced);
2. a fill of ``qty`` units costs ``fee = |qty| * o * fee_bps / 1e4`` and ``slippage = |qty| * o *
   slippage_bps / 1e4`` (``CostConfig``: the same bps as the offline backtest); ``price`` is the
   bar's open and the slippage is booked as a cost beside it;
   ``cash -= qty * o + fee + slippage``;
3. the book is marked at the bar's close ``c``: ``pnl = cash + position * c`` (net of costs, in
   quote currency; starts at 0 flat);
4. this bar's decision becomes pending. A bar without a decision ("no_signal": warm-up, stale
   feed, failed members) leaves the target unchanged: the absence of a signal is not a decision
   to exit.

So the book is a pure function of the signal rows and the bars (``paper_ledger``), which the
runtime can recompute and the tests check by hand; ``restore`` continues a book from its last
``PositionRow`` after a restart exactly as if it had never stopped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime

import polars as pl

from moola.evaluation import CostConfig
from moola.runtime._ledger import FillRow, LedgerError, PositionRow

__all__ = ["PaperBook", "PaperResult", "paper_ledger"]


@dataclass
class _Symbol:
    target: int = 0            # the decision in effect (filled)
    position: float = 0.0      # units held, signed
    cash: float = 0.0
    costs: float = 0.0
    pending: int | None = None  # decided at the last bar's close, filled at the next open
    pending_ts: datetime | None = None
    last_ts: datetime | None = None


@dataclass(frozen=True)
class PaperResult:
    """The fills and one position row per bar, in (symbol, bar) order."""

    fills: list[FillRow] = field(default_factory=list)
    positions: list[PositionRow] = field(default_factory=list)


class PaperBook:
    """Paper positions of one runtime, per symbol (see the module docstring for the arithmetic)."""

    def __init__(self, costs: CostConfig, *, runtime: str, notional: float = 1.0) -> None:
        if not (math.isfinite(notional) and notional > 0):
            raise LedgerError(f"paper book: notional must be a positive number, got {notional!r}")
        self.costs = costs
        self.runtime = runtime
        self.notional = notional
        self._books: dict[str, _Symbol] = {}

    def restore(self, last: PositionRow, pending: int | None) -> None:
        """Continue ``last.symbol``'s book after a restart: the state after bar ``last.bar_ts``
        and the decision taken at that bar (the signal row's, None for no_signal)."""
        if pending not in (None, -1, 0, 1):
            raise LedgerError(
                f"paper book {last.symbol}: pending decision must be -1, 0, 1 or None, got {pending!r}")
        self._books[last.symbol] = _Symbol(
            target=last.target, position=last.position, cash=last.cash, costs=last.costs,
            pending=pending, pending_ts=last.bar_ts if pending is not None else None, last_ts=last.bar_ts)

    def on_bar(self, symbol: str, bar_ts: datetime, open_: float, close: float,
               decision: int | None) -> tuple[FillRow | None, PositionRow]:
        """Bar ``bar_ts`` of ``symbol``: fill the pending decision at its open, mark at its close,
        then take ``decision`` (this bar's signal, None for no signal) as pending."""
        b = self._books.setdefault(symbol, _Symbol())
        where = f"paper book {symbol} at {bar_ts}"
        if b.last_ts is not None and bar_ts <= b.last_ts:
            raise LedgerError(f"{where}: bars must come in time order (last was {b.last_ts})")
        if decision not in (None, -1, 0, 1):
            raise LedgerError(f"{where}: decision must be -1, 0, 1 or None, got {decision!r}")
        if not (math.isfinite(open_) and math.isfinite(close) and open_ > 0 and close > 0):
            raise LedgerError(f"{where}: open and close must be positive numbers, got {open_!r}, {close!r}")
        fill = None
        if b.pending is not None and b.pending != b.target:
            new_position = b.pending * self.notional / open_
            qty = new_position - b.position
            traded = abs(qty) * open_
            fee = traded * self.costs.fee_bps / 1e4
            slippage = traded * self.costs.slippage_bps / 1e4
            b.cash -= qty * open_ + fee + slippage
            b.costs += fee + slippage
            b.position, b.target = new_position, b.pending
            assert b.pending_ts is not None
            fill = FillRow(self.runtime, symbol, bar_ts, b.pending_ts, "buy" if qty > 0 else "sell",
                           abs(qty), open_, fee, slippage)
        b.pending = decision
        b.pending_ts = bar_ts if decision is not None else None
        b.last_ts = bar_ts
        pos = PositionRow(self.runtime, symbol, bar_ts, b.target, b.position, b.cash, b.costs,
                          b.cash + b.position * close)
        return fill, pos


def paper_ledger(signals: pl.DataFrame, bars: pl.DataFrame, costs: CostConfig, *, runtime: str,
                 notional: float = 1.0) -> PaperResult:
    """The whole paper book from signal rows (``symbol``, ``bar_ts``, ``decision``: the ledger's
    ``signals()`` frame) and bars (``symbol``, ``ts``, ``open``, ``close``). Only bars with a signal
    row are booked (the runtime books exactly those); a no-signal row without its bar (a gap: the
    feed never delivered that minute) is skipped, as the runtime does; a decision without its bar
    is an error."""
    need_s, need_b = {"symbol", "bar_ts", "decision"}, {"symbol", "ts", "open", "close"}
    for name, frame, need in (("signals", signals, need_s), ("bars", bars, need_b)):
        if missing := sorted(need - set(frame.columns)):
            raise LedgerError(f"paper_ledger: {name} frame lacks columns {missing} (has {frame.columns})")
    joined = (signals.select("symbol", pl.col("bar_ts").dt.convert_time_zone("UTC"), "decision")
              .join(bars.select("symbol", pl.col("ts").dt.convert_time_zone("UTC").alias("bar_ts"),
                                "open", "close"),
                    on=["symbol", "bar_ts"], how="left")
              .sort("symbol", "bar_ts"))
    no_bar = pl.col("open").is_null() | pl.col("close").is_null()
    orphans = joined.filter(no_bar & pl.col("decision").is_not_null())
    if orphans.height:
        first = orphans.row(0, named=True)
        raise LedgerError(f"paper_ledger: {orphans.height} decisions have no bar with open and close, "
                          f"first {first['symbol']} at {first['bar_ts']}")
    joined = joined.filter(~no_bar)
    book = PaperBook(costs, runtime=runtime, notional=notional)
    out = PaperResult()
    for sym, ts, decision, o, c in joined.iter_rows():
        fill, pos = book.on_bar(sym, ts.astimezone(UTC), float(o), float(c),
                                None if decision is None else int(decision))
        if fill is not None:
            out.fills.append(fill)
        out.positions.append(pos)
    return out
