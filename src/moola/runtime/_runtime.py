"""The dry-run runtime loop: feed -> streaming members -> ensemble -> decision -> ledger.

Call order: ``Runtime(config, ensemble, versions)`` stores; ``run(feed, ledger)`` migrates the
ledger, resumes every symbol from its last recorded bar, then per tick:

1. the feed's events go to ``events``;
2. each feature set's features are computed once (a ``FeatureStream`` shared by the members
   that serve it), then every member steps the tick's new bars (history bars only fill the
   buffers);
3. per (symbol, bar) of the period after the resume point: the members that have a probability
   vote (fixed weights renormalised over them; stacking needs all), the ensemble P(up) becomes a
   decision (band), and the bar gets one ``signals`` row (or an explicit ``no_signal`` row with
   the reason: warm-up, gap, member failure); a bar the feed reports missing gets a ``gap`` row;
   a bar a stale symbol owes (``Tick.overdue``) gets a ``stale`` placeholder, which the bar's own
   row replaces if the feed delivers it later (a backfill after the stall);
4. the paper book fills the previous decision at this bar's open and marks at its close;
5. the tick's rows are written in one transaction (a ``kill -9`` leaves a tick whole or absent;
   signals are first-write-wins, so a replayed bar can never be doubled).

Dry run only: nothing here, or anywhere in moola.runtime, places an order.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from moola._io import read_json
from moola.data import Timeframe
from moola.inference import Ensemble
from moola.runtime._config import RuntimeConfig
from moola.runtime._feeds import Feed, FeedEvent, Tick
from moola.runtime._ledger import EventRow, FillRow, Ledger, PositionRow, SignalRow
from moola.runtime._paper import PaperBook
from moola.runtime._streaming import FeatureStream, MemberStep, StreamingMember, share_features

__all__ = ["MemberMismatchError", "RunSummary", "Runtime", "ServedMember", "decide"]


class MemberMismatchError(ValueError):
    """A member that cannot serve this feed (timeframe, feature schema, symbol): refused at start."""


@dataclass
class ServedMember:
    """One ensemble member as the runtime serves it."""

    name: str
    ref: str
    version: str
    stream: StreamingMember
    symbols: frozenset[str]  # the symbols its manifest was trained on
    failures: int = 0


@dataclass
class RunSummary:
    """What one ``run`` did: ticks, rows written per status, events, why it stopped."""

    ticks: int = 0
    signals: int = 0
    no_signals: dict[str, int] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)
    stopped: str = "feed exhausted"
    resumed_from: dict[str, str | None] = field(default_factory=dict)


def decide(p_up: float, band: float, mode: str) -> int:
    """+1 above 0.5 + band, -1 below 0.5 - band (long_short; 0 in long_flat), else 0."""
    if p_up > 0.5 + band:
        return 1
    if p_up < 0.5 - band:
        return -1 if mode == "long_short" else 0
    return 0


def _utc(ts: Any) -> datetime:
    t: datetime = ts
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


class Runtime:
    """The loop (module doc). ``ensemble`` holds the members' Predictors (loaded and checked for
    agreement by ``moola.pipelines``); ``versions`` names each member's registry version or
    run directory, recorded with every vote."""

    def __init__(self, config: RuntimeConfig, ensemble: Ensemble, versions: Sequence[str], *,
                 on_tick: Callable[[Runtime, Tick, list[SignalRow]], None] | None = None) -> None:
        self.config = config
        self.ensemble = ensemble
        self.versions = list(versions)
        self.on_tick = on_tick
        self._stop: str | None = None
        self._streams: list[tuple[FeatureStream, list[str]]] = []  # (stream, symbols it serves)
        self._placeheld: dict[str, datetime] = {}  # per symbol the last bar given a stale placeholder

    # ------------------------------------------------------------------ setup
    def members(self) -> list[ServedMember]:
        """The ensemble's members as streams, refused when they cannot serve the feed."""
        cfg, ens = self.config, self.ensemble
        tf = Timeframe(cfg.timeframe)
        out, problems = [], []
        for name, ref, version, pred in zip(ens.names_, ens.refs_, self.versions, ens.members_, strict=True):
            m = pred.manifest_
            if m.timeframe is not None and m.timeframe != tf.value:
                problems.append(f"member {name!r} ({ref}): trained on {m.timeframe} bars, the feed "
                                f"is {tf.value}")
                continue
            syms = frozenset(m.symbols)
            stream = StreamingMember(pred, timeframe=tf, recurrent=None if cfg.streaming else False)
            out.append(ServedMember(name, ref, version, stream, syms))
        for sym in cfg.symbols:
            if not any(sym in s.symbols for s in out):
                problems.append(f"symbol {sym!r}: no member was trained on it (members' symbols: "
                                + "; ".join(f"{s.name} {sorted(s.symbols)}" for s in out) + ")")
        if self.ensemble.config.weights == "stacking":
            partial = [s.name for s in out if not set(cfg.symbols) <= s.symbols]
            if partial:
                problems.append(f"weights: stacking needs every member on every symbol; {partial} "
                                f"do not cover {cfg.symbols}")
        if problems:
            raise MemberMismatchError(f"{len(problems)} member problem(s) for runtime "
                                      f"{cfg.name!r}:\n" + "\n".join(f"  - {p}" for p in problems))
        return out

    def bands(self) -> dict[str, float]:
        """Per symbol: the configured band, or the mean of the members' validation bands
        (metrics.json economics), 0.5 (never trade) when no member has one."""
        cfg = self.config
        if cfg.thresholds.band != "validation":
            return dict.fromkeys(cfg.symbols, float(cfg.thresholds.band))
        out = {}
        for sym in cfg.symbols:
            found = []
            for pred in self.ensemble.members_:
                path = Path(pred.run_dir_) / "metrics.json"
                econ = read_json(path).get("economics") if path.is_file() else None
                band = ((econ or {}).get("symbols") or {}).get(sym, {}).get("band")
                if isinstance(band, int | float):
                    found.append(float(band))
            out[sym] = float(np.mean(found)) if found else 0.5
        return out

    def stop(self, why: str) -> None:
        """Ask the loop to stop after the current tick (SIGTERM does this)."""
        self._stop = why

    # ------------------------------------------------------------------ run
    def run(self, feed: Feed, ledger: Ledger, *, iterations: int | None = None,
            until: datetime | None = None) -> RunSummary:
        cfg = self.config
        members = self.members()
        self._streams = [(fs, sorted(set().union(*(m.symbols for m in members if m.stream.shared is fs))))
                         for fs in share_features([m.stream for m in members])]
        bands = self.bands()
        self._placeheld = {}
        ledger.migrate()
        since = {s: ledger.last_bar(cfg.name, s) for s in cfg.symbols}
        book = PaperBook(cfg.costs, runtime=cfg.name)
        for s in cfg.symbols:
            last = ledger.last_position(cfg.name, s)
            if last is not None:  # the decision taken at the last booked bar is still pending
                sig = ledger.signal_at(cfg.name, s, last.bar_ts)
                book.restore(last, None if sig is None else sig.decision)
        summary = RunSummary(resumed_from={s: None if t is None else t.isoformat() for s, t in since.items()})
        ledger.write(events=[EventRow(cfg.name, "start", (
            f"dry-run runtime {cfg.name!r} starting: {len(members)} member(s) "
            f"{[m.name for m in members]}, symbols {cfg.symbols}, bands {bands}"),
            detail={"since": summary.resumed_from, "members": {m.name: m.version for m in members},
                    "streaming": {m.name: m.stream.recurrent for m in members}})])
        previous = signal.getsignal(signal.SIGTERM)
        try:
            signal.signal(signal.SIGTERM, lambda *_: self.stop("SIGTERM"))
        except ValueError:  # not the main thread: no signal handling
            previous = None
        feed.start(cfg.symbols, Timeframe(cfg.timeframe), since)
        live_from = {s: feed.live_from(s) for s in cfg.symbols}
        try:
            while self._stop is None:
                if iterations is not None and summary.ticks >= iterations:
                    summary.stopped = f"{iterations} iteration(s)"
                    break
                tick = feed.next_tick()
                if tick is None:
                    break
                rows = self._tick(tick, members, bands, since, live_from, book, ledger, summary)
                summary.ticks += 1
                if self.on_tick is not None:
                    self.on_tick(self, tick, rows)
                if until is not None and tick.now >= until:
                    summary.stopped = f"until {until.isoformat()}"
                    break
            if self._stop is not None:
                summary.stopped = self._stop
        except BaseException as err:  # the stop event says the run crashed, then it propagates
            summary.stopped = f"crashed: {type(err).__name__}: {err}"
            raise
        finally:
            feed.close()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            ledger.write(events=[EventRow(
                cfg.name, "stop", f"runtime {cfg.name!r} stopped: {summary.stopped}",
                detail={"ticks": summary.ticks, "signals": summary.signals,
                        "no_signals": summary.no_signals})])
            ledger.flush()
        return summary

    # ------------------------------------------------------------------ one tick
    def _tick(self, tick: Tick, members: list[ServedMember], bands: Mapping[str, float],
              since: dict[str, datetime | None], live_from: Mapping[str, datetime | None],
              book: PaperBook, ledger: Ledger, summary: RunSummary) -> list[SignalRow]:
        cfg = self.config
        t0 = time.perf_counter()
        events = [EventRow.from_feed(cfg.name, e) for e in tick.events]
        bars = tick.bars.filter(pl.col("symbol").is_in(cfg.symbols))
        votes: dict[str, dict[tuple[str, datetime], MemberStep]] = {}
        failed: dict[str, str] = {}
        present = set(bars.get_column("symbol").unique().to_list())

        def only(symbols: frozenset[str] | list[str]) -> pl.DataFrame:
            # the same frame when nothing is filtered out: the stream's parse is reused by members
            return bars if present <= set(symbols) else bars.filter(pl.col("symbol").is_in(list(symbols)))

        for fstream, served in self._streams:
            # failing leaves no shared rows: each member then computes its own and reports why
            with contextlib.suppress(Exception):
                fstream.update(only(served))
        for m in members:
            mine = only(m.symbols)
            if mine.is_empty():
                continue
            try:
                steps = m.stream.step_bars(mine)
            except Exception as err:  # a member failing at run time: logged, its weight redistributed
                m.failures += 1
                failed[m.name] = f"{type(err).__name__}: {err}"
                m.stream.reset()  # it warms up again from the next bars
                events.append(EventRow(cfg.name, "member_failure", f"member {m.name} failed: {err}",
                                       detail={"member": m.name, "error": failed[m.name]}))
                continue
            votes[m.name] = {(s.symbol, _utc(s.ts)): s for s in steps}
        latency_ms = (time.perf_counter() - t0) * 1000
        signals: list[SignalRow] = []
        fills: list[FillRow] = []
        positions: list[PositionRow] = []

        def in_period(sym: str, ts: datetime) -> bool:
            lo, done = live_from.get(sym), since.get(sym)
            return (lo is None or ts >= lo) and (done is None or ts > done)

        gaps: list[tuple[str, datetime]] = []
        for ev in tick.events:
            if ev.kind == "gap" and ev.symbol in cfg.symbols and "first" in ev.detail:
                gaps.extend(self._missing(ev))
        fed = [(s, _utc(ts)) for s, ts in bars.select("symbol", "ts").iter_rows()]
        rows = sorted({k for k in [*gaps, *fed] if in_period(*k)})
        stale = self._overdue(tick, set(rows), since, live_from)
        if stale:
            signals.extend(stale)
            summary.no_signals["stale"] = summary.no_signals.get("stale", 0) + len(stale)
        prices = {(s, _utc(ts)): (o, c)
                  for s, ts, o, c in bars.select("symbol", "ts", "open", "close").iter_rows()}
        for sym, ts in rows:
            row = self._row(sym, ts, members, votes, failed, bands[sym], latency_ms,
                            gap=(sym, ts) not in prices)
            signals.append(row)
            if row.status == "signal":
                summary.signals += 1
            else:
                assert row.reason is not None
                summary.no_signals[row.reason] = summary.no_signals.get(row.reason, 0) + 1
            if (sym, ts) in prices:
                o, c = prices[(sym, ts)]
                fill, pos = book.on_bar(sym, ts, float(o), float(c), row.decision)
                fills.extend([fill] if fill is not None else [])
                positions.append(pos)
            since[sym] = ts
        for event in events:
            summary.events[event.kind] = summary.events.get(event.kind, 0) + 1
        ledger.write(signals=signals, events=events, fills=fills, positions=positions)
        return signals

    def _overdue(self, tick: Tick, rows: set[tuple[str, datetime]], since: Mapping[str, datetime | None],
                 live_from: Mapping[str, datetime | None]) -> list[SignalRow]:
        """``stale`` placeholder rows for the bars a stale symbol owes up to ``tick.overdue``. They
        do not move the resume point: a bar delivered later replaces its placeholder."""
        cfg, step = self.config, Timeframe(self.config.timeframe).step
        out = []
        for sym, due in tick.overdue.items():
            done = since.get(sym)
            if sym not in cfg.symbols or done is None:  # nothing served yet: the feed's warm-up
                continue
            t = max(done, self._placeheld.get(sym, done)) + step
            lo = live_from.get(sym)
            while t <= _utc(due):
                if (sym, t) not in rows and (lo is None or t >= lo):
                    out.append(SignalRow.no_signal(cfg.name, sym, t, "stale"))
                t += step
            self._placeheld[sym] = max(self._placeheld.get(sym, done), _utc(due))
        return out

    def _missing(self, e: FeedEvent) -> list[tuple[str, datetime]]:
        """The (symbol, bar) pairs a gap event says are missing."""
        step = Timeframe(self.config.timeframe).step
        first = _utc(datetime.fromisoformat(str(e.detail["first"])))
        last = _utc(datetime.fromisoformat(str(e.detail.get("last", e.detail["first"]))))
        n = int((last - first) / step) + 1
        assert e.symbol is not None
        return [(e.symbol, first + k * step) for k in range(max(n, 0))]

    def _row(self, sym: str, ts: datetime, members: list[ServedMember],
             votes: Mapping[str, Mapping[tuple[str, datetime], MemberStep]], failed: Mapping[str, str],
             band: float, latency_ms: float, *, gap: bool) -> SignalRow:
        """One bar's ensemble row from the members that serve ``sym``."""
        cfg, ens = self.config, self.ensemble
        serving = [m for m in members if sym in m.symbols]
        record: dict[str, dict[str, Any]] = {}
        probs: dict[str, float] = {}
        reasons: list[str] = []
        for m in serving:
            step = votes.get(m.name, {}).get((sym, ts))
            error = failed.get(m.name)
            p = None if step is None else step.proba_up
            if p is not None and math.isfinite(p):
                probs[m.name] = float(p)
            elif error is None and step is not None and step.reason is not None:
                reasons.append(step.reason)
            why = error if error is not None else (None if step is None else step.reason)
            record[m.name] = {"proba": p, "version": m.version, "ok": p is not None and error is None,
                              "error": why}
        if gap:
            return SignalRow.no_signal(cfg.name, sym, ts, "gap", members=record, latency_ms=latency_ms)
        if not probs or (self.ensemble.config.weights == "stacking" and len(probs) < len(serving)):
            reason = "member_failure" if failed or not reasons else (
                "warmup" if "warmup" in reasons else "gap")
            return SignalRow.no_signal(cfg.name, sym, ts, reason, members=record, latency_ms=latency_ms)
        p_up = self._combine(ens, probs, serving)
        return SignalRow(cfg.name, sym, ts, "signal", proba_up=p_up,
                         decision=decide(p_up, band, cfg.thresholds.mode), members=record,
                         latency_ms=latency_ms)

    @staticmethod
    def _combine(ens: Ensemble, probs: Mapping[str, float], serving: Sequence[ServedMember]) -> float:
        """Ensemble P(up): every member voting -> exactly ``Ensemble.combine`` (what ``moola
        predict --ensemble`` computes); fewer -> fixed weights renormalised over the voters."""
        names = list(ens.names_)
        if len(probs) == len(names):
            member_proba = [np.array([[1.0 - probs[n], probs[n]]]) for n in names]
            return float(ens.combine(member_proba)[0, 1])
        assert ens.weights_ is not None  # stacking with a missing member was refused above
        w = {n: float(x) for n, x in zip(names, ens.weights_, strict=True)}
        total = sum(w[n] for n in probs)
        return float(sum(w[n] * p for n, p in probs.items()) / total)
