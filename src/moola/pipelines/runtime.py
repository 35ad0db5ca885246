"""The runtime recipe: a runtime config -> its ensemble (registry members, checked), its feed and
ledger -> the dry-run loop, with a live terminal view; plus status and report on a ledger."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from moola.inference import Ensemble
from moola.pipelines._ensemble import load_ensemble
from moola.registry import show_model
from moola.runtime import (
    Feed,
    Ledger,
    LiveFeed,
    LiveFeedConfig,
    ReplayFeed,
    RunSummary,
    Runtime,
    RuntimeConfig,
    SignalRow,
    Tick,
)

__all__ = ["make_feed", "member_versions", "run_runtime"]


def member_versions(ens: Ensemble) -> list[str]:
    """Each member's registry version (``NAME/VERSION``) or run directory, as the ledger records it."""
    out = []
    for ref, pred in zip(ens.refs_, ens.members_, strict=True):
        if ref.startswith("models:/"):
            info, v = show_model(ref)
            out.append(f"{info.name}/{v.version}" if v is not None else ref)
        else:
            out.append(str(pred.run_dir_))
    return out


def make_feed(cfg: RuntimeConfig, warmup: int) -> Feed:
    """The configured feed, holding ``warmup`` bars of history per symbol for the buffers."""
    f = cfg.feed
    if isinstance(f, LiveFeedConfig):
        from datetime import timedelta

        return LiveFeed((f.exchange, dict(f.options)), retries=cfg.retry, warmup=warmup,
                        poll_interval_s=f.poll_s, stale_after=timedelta(seconds=f.stale_after_s))
    return ReplayFeed(f.source, start=f.start, end=f.end, pace=f.pace_s, warmup=warmup,
                      last_fraction=f.last_fraction)


_DECISION = {1: "[green]long[/]", -1: "[red]short[/]", 0: "flat"}


class _View:
    """The live terminal view: per symbol the last bar, P(up), decision, members, lag."""

    def __init__(self, console: Console, members: list[str]) -> None:
        self.console = console
        self.members = members
        self.rows: dict[str, SignalRow] = {}
        self.ticks = 0
        self.now: datetime | None = None
        self.live: Live | None = None

    def table(self) -> Table:
        t = Table(title=f"moola runtime (dry run) - tick {self.ticks}"
                  + (f", feed clock {self.now:%Y-%m-%d %H:%M}" if self.now else ""), title_justify="left")
        for col in ("symbol", "last bar", "P(up)", "decision", "members voting", "lag"):
            t.add_column(col)
        for sym, r in sorted(self.rows.items()):
            lag = "-" if self.now is None else f"{(self.now - r.bar_ts).total_seconds():.0f} s"
            votes = sum(1 for v in r.members.values() if v.get("ok"))
            t.add_row(sym, f"{r.bar_ts:%Y-%m-%d %H:%M}",
                      "-" if r.proba_up is None else f"{r.proba_up:.4f}",
                      _DECISION.get(r.decision, f"none ({r.reason})") if r.decision is not None
                      else f"none ({r.reason})",
                      f"{votes}/{len(r.members)}", lag)
        return t

    def __call__(self, _rt: Runtime, tick: Tick, rows: list[SignalRow]) -> None:
        self.ticks += 1
        self.now = tick.now
        for r in rows:
            self.rows[r.symbol] = r
        if self.live is not None and (self.ticks % 25 == 0 or len(rows) > 3):
            self.live.update(self.table())


def run_runtime(cfg: RuntimeConfig, *, iterations: int | None = None, until: datetime | None = None,
                console: Console | None = None, view: bool = True) -> RunSummary:
    """Load the ensemble (members refused when they disagree with each other or the feed), then
    run the loop into the configured ledger until the feed ends, ``iterations`` ticks, ``until``
    or SIGTERM. Safe to restart after any kill: it resumes from the ledger's last bar."""
    console = console or Console()
    ens = load_ensemble(cfg.ensemble)
    versions = member_versions(ens)
    warmup = max(p.feature_set_.max_lookback + p.window_ for p in ens.members_)
    live_view = _View(console, list(ens.names_)) if view else None
    runtime = Runtime(cfg, ens, versions, on_tick=live_view)
    ledger = Ledger(cfg.db, retry=cfg.db_retry)
    feed = make_feed(cfg, warmup)
    console.print(f"runtime {cfg.name!r} (dry run): {len(ens.names_)} member(s) "
                  + ", ".join(f"{n} = {v}" for n, v in zip(ens.names_, versions, strict=True))
                  + f"; symbols {cfg.symbols}; ledger {ledger.masked_url}", highlight=False)
    until = None if until is None else (until.replace(tzinfo=UTC) if until.tzinfo is None else until)
    if live_view is not None and console.is_terminal:
        with Live(live_view.table(), console=console, refresh_per_second=4) as live:
            live_view.live = live
            summary = runtime.run(feed, ledger, iterations=iterations, until=until)
            live.update(live_view.table())
    else:
        summary = runtime.run(feed, ledger, iterations=iterations, until=until)
        if live_view is not None and live_view.rows:
            console.print(live_view.table())
    ledger.close()
    console.print(f"stopped ({summary.stopped}) after {summary.ticks:,} tick(s): {summary.signals:,} "
                  f"signal row(s), no-signal {summary.no_signals or 'none'}, "
                  f"events {summary.events or 'none'}",
                  highlight=False)
    return summary


def runtime_status(db: str) -> dict[str, Any]:
    """Every runtime in the ledger at ``db`` with its status summary."""
    with Ledger(db) as ledger:
        return {name: ledger.status(name) for name in ledger.runtimes()}


def runtime_report(db: str, out: str | Path, *, runtime: str | None = None,
                   bars: str | Path | None = None, timeframe: str | None = None) -> Path:
    """The HTML report of one runtime (the only one in the ledger when None); ``bars``: a store
    with the bars (``timeframe``: which of its timeframes, needed when it holds several)."""
    from moola.data import Store
    from moola.runtime import write_runtime_report

    frame = None
    if bars is not None:  # the runtime's timeframe: its start event names it in the ledger
        store = Store(bars)
        frame = store.read(store.resolve_timeframe(timeframe))
    with Ledger(db) as ledger:
        return write_runtime_report(ledger, runtime, Path(out), bars=frame)
