"""The canonical store: idempotent re-ingest, newer-wins merges, crash safety (a failed or
killed write leaves exactly the previous store), orphan sweeping, the writer lock, odd symbols."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import polars as pl
import pytest

import moola._io as io_mod
from _data_helpers import (
    SHARED_PANEL,
    SP500_SUBSET,
    btc_csv_lines,
    btc_frame,
    cli,
    listing,
    snapshot,
    sp500_subset,
    unreferenced_files,
    write_csv_lines,
)
from _real_data import require_shared
from moola.data import Store, StoreError, Timeframe, ingest, read_file, validate_bars, validate_raw

D1 = Timeframe.D1


def _old_part(tmp: Path) -> Path:
    """The subset's first three years: an 'older export' that later writes update."""
    p = tmp / "sp500_old.parquet"
    sp500_subset().filter(pl.col("date") < pl.date(2016, 1, 1)).write_parquet(p)
    return p


def _state(store: Store) -> tuple[pl.DataFrame, pl.DataFrame, bytes]:
    return store.read(D1), store.read_rejects(D1), store.manifest_path.read_bytes()


def _assert_state(store: Store, state: tuple[pl.DataFrame, pl.DataFrame, bytes]) -> None:
    bars, rej, manifest = state
    assert store.manifest_path.read_bytes() == manifest
    assert store.read(D1).equals(bars)
    assert store.read_rejects(D1).equals(rej)


# --------------------------------------------------------------------- idempotence


def test_reingest_same_file_changes_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    first = ingest([SP500_SUBSET], store).writes[D1]
    assert len(first.added) == 30 and not first.updated
    assert first.rows_new == 36_567
    before = snapshot(store.root)
    again = ingest([SP500_SUBSET], store).writes[D1]
    assert not again.changed
    assert again.added == [] and again.updated == []
    assert sorted(again.unchanged) == sorted(first.added)
    assert again.rows_new == 0 and again.rows_replaced == 0
    assert snapshot(store.root) == before  # manifest bytes and every file identical
    # the CLI says so too
    res = cli("data", "ingest", SP500_SUBSET, "--store", store.root)
    assert res.exit_code == 0
    assert "0 partition(s) added, 0 updated, 30 unchanged" in res.stdout
    assert snapshot(store.root) == before


def test_reingest_under_another_path_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same export given as a relative path, or copied elsewhere, is still the same data:
    its rejected rows (538 null rows, 2 duplicates) must not be remembered twice."""
    store = Store(tmp_path / "s")
    ingest([SP500_SUBSET], store)
    before = snapshot(store.root)
    monkeypatch.chdir(SP500_SUBSET.parent)
    copy = tmp_path / "elsewhere" / "sp500_subset.parquet"
    copy.parent.mkdir()
    copy.write_bytes(SP500_SUBSET.read_bytes())
    for spelling in (Path(SP500_SUBSET.name), copy):
        w = ingest([spelling], store).writes[D1]
        assert not w.changed, (spelling, w)
        assert snapshot(store.root) == before
    rep = validate_bars(store.read(D1), D1, store.read_rejects(D1))
    assert rep.totals()["all_null"] == 538
    assert rep.totals()["duplicate_identical"] == 1


def test_overlapping_newer_file_merges_newer_wins(tmp_path: Path) -> None:
    a = write_csv_lines(tmp_path / "a" / "BTCUSD_1m.csv", btc_csv_lines(100))
    lines = btc_csv_lines(100, start=50)
    for i in range(1, len(lines)):  # a "revised" export: high and close 0.5 higher
        ts, o, h, lo, c, v = lines[i].split(",")
        lines[i] = ",".join([ts, o, repr(float(h) + 0.5), lo, repr(float(c) + 0.5), v])
    b = write_csv_lines(tmp_path / "b" / "BTCUSD_1m.csv", lines)
    store = Store(tmp_path / "s")
    w1 = ingest([a], store).writes[Timeframe.M1]
    assert w1.added == ["1m/BTCUSD"] and w1.rows_new == 100
    w2 = ingest([b], store).writes[Timeframe.M1]
    assert w2.updated == ["1m/BTCUSD"] and not w2.added
    assert w2.rows_new == 50 and w2.rows_replaced == 50

    bars = store.read(Timeframe.M1)
    src = btc_frame(150)
    assert bars.height == 150
    assert bars["ts"].to_list() == src["ts"].to_list()
    close = bars["close"].to_list()
    assert close[:50] == src["close"].to_list()[:50]  # only in the old file: unchanged
    assert close[50:] == [x + 0.5 for x in src["close"].to_list()[50:]]  # shared keys: newer wins
    assert bars["open"].to_list() == src["open"].to_list()
    assert store.last_ts("BTCUSD", "1m") == src["ts"].dt.epoch("ns")[-1]
    # the older file again: now IT is newer, and wins back the shared keys
    w3 = ingest([a], store).writes[Timeframe.M1]
    assert w3.rows_replaced == 100 and w3.rows_new == 0
    assert store.read(Timeframe.M1)["close"].to_list()[:100] == src["close"].to_list()[:100]


# ---------------------------------------------------------------------- atomicity


@pytest.mark.parametrize("fail_at", ["replace#1", "replace#7", "commit", "commit-interrupt"])
def test_crash_mid_write_keeps_previous_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_at: str
) -> None:
    store = Store(tmp_path / "s")
    ingest([_old_part(tmp_path)], store)
    state = _state(store)
    files_before = set(snapshot(store.root))

    real_replace = os.replace
    calls = {"n": 0}

    if fail_at.startswith("replace"):
        k = int(fail_at.split("#")[1])

        def flaky_replace(src: str | Path, dst: str | Path) -> None:
            calls["n"] += 1
            if calls["n"] == k:
                raise OSError("disk full (simulated)")
            real_replace(src, dst)

        monkeypatch.setattr(io_mod.os, "replace", flaky_replace)  # the atomic writer's rename
        exc: type[BaseException] = StoreError  # an OS error, said in one line
    else:
        raised = OSError if fail_at == "commit" else KeyboardInterrupt
        exc = StoreError if fail_at == "commit" else KeyboardInterrupt

        def broken_commit(self: Store, manifest: dict) -> None:
            # every partition file of this write exists when the manifest swap fails
            written = set(snapshot(self.root)) - files_before
            assert any(f.endswith(".parquet") for f in written)
            raise raised("crash before the manifest swap (simulated)")

        monkeypatch.setattr(Store, "_commit", broken_commit)

    with pytest.raises(exc) as ei:  # the whole subset: updates every old partition
        ingest([SP500_SUBSET], store)
    monkeypatch.undo()
    if exc is StoreError:
        assert "the store was left unchanged" in str(ei.value)

    _assert_state(store, state)
    # nothing committed, and the failed write removed every file it had created
    assert set(snapshot(store.root)) == files_before

    # plant orphans a hard crash would leave (a complete data file and a half-written temp)
    orphan_dir = store.root / "timeframe=1d" / "symbol=AAPL"
    (orphan_dir / "bars-0000000000000000.parquet").write_bytes(b"PAR1 not referenced")
    (orphan_dir / "bars-1111111111111111.parquet.tmp").write_bytes(b"half")
    assert len(unreferenced_files(store.root)) >= 2

    w = ingest([SP500_SUBSET], store).writes[D1]  # a later successful write
    assert w.changed
    assert unreferenced_files(store.root) == []
    expected = validate_raw(read_file(SP500_SUBSET).frame, D1).bars.sort("symbol", "ts")
    assert store.read(D1).equals(expected.select(store.read(D1).columns))


def test_failed_write_of_new_symbols_changes_no_reader_view(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path / "s")
    ingest([_old_part(tmp_path)], store)
    symbols = store.symbols()
    lines = btc_csv_lines(30)
    p = write_csv_lines(tmp_path / "BTCUSD_1d.csv", [lines[0]] + [
        # each day's bar at midnight (the minute bars' prices, re-dated onto the daily grid)
        f"2023-03-{i:02d} 00:00:00+00:00," + ln.split(",", 1)[1] for i, ln in enumerate(lines[1:], 1)
    ])
    before = snapshot(store.root)
    monkeypatch.setattr(Store, "_commit", lambda self, m: (_ for _ in ()).throw(OSError("boom")))
    with pytest.raises(StoreError, match=r"boom while writing manifest\.json"):
        ingest([p], store)
    assert snapshot(store.root) == before  # and no empty timeframe=1d/symbol=BTCUSD directory
    assert store.symbols() == symbols
    assert "1d/BTCUSD" not in store.manifest()["partitions"]
    assert store.last_ts("BTCUSD", D1) is None


_KILL_SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    from moola.data import Store, ingest

    slow_after = int(sys.argv[3])
    if slow_after:
        real = os.replace
        n = [0]

        def slow_replace(a, b):
            real(a, b)
            n[0] += 1
            if n[0] == slow_after:
                print("PARTIAL", flush=True)
                time.sleep(300)

        os.replace = slow_replace
    print("START", flush=True)
    ingest([sys.argv[1]], Store(sys.argv[2]))
    print("DONE", flush=True)
    """
)


def _kill_during_ingest(tmp_path: Path, src: Path, store: Store, slow_after: int) -> None:
    script = tmp_path / "kill_me.py"
    script.write_text(_KILL_SCRIPT)
    before = listing(store.root)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(src), str(store.root), str(slow_after)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        if slow_after:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.strip() == "PARTIAL":
                    break
            else:
                pytest.fail(f"writer ended early: {proc.stderr.read() if proc.stderr else ''}")
        else:  # natural speed: kill as soon as the first new partition file appears
            deadline = time.monotonic() + 120
            while not any("bars-" in f for f in listing(store.root) - before):
                assert proc.poll() is None, "ingest finished before it could be killed"
                assert time.monotonic() < deadline
                time.sleep(0.002)
        new = listing(store.root) - before
        assert any("bars-" in f for f in new), new  # it really was mid-write
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("source", ["bundled-slowed", "shared-panel"])
def test_sigkill_during_ingest_leaves_previous_store(tmp_path: Path, source: str) -> None:
    if source == "shared-panel":
        require_shared(SHARED_PANEL)
    src = SP500_SUBSET if source == "bundled-slowed" else SHARED_PANEL
    store = Store(tmp_path / "s")
    ingest([_old_part(tmp_path)], store)
    state = _state(store)

    _kill_during_ingest(tmp_path, src, store, slow_after=9 if source == "bundled-slowed" else 0)

    _assert_state(store, state)  # readable, and exactly the previous data
    assert unreferenced_files(store.root), "the killed write should have left orphans"
    # the next successful write commits and sweeps what the killed one left
    ingest([SP500_SUBSET], store)
    assert unreferenced_files(store.root) == []
    assert not [f for f in snapshot(store.root) if f.endswith(".tmp")]
    assert store.read(D1).height == 36_567


# --------------------------------------------------------------------------- lock


def test_lock_prevents_a_concurrent_writer(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    ingest([_old_part(tmp_path)], store)
    before = snapshot(store.root)
    with open(store.root / ".lock", "w") as fh:  # another writer holds the store
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(StoreError, match="locked"):
            ingest([SP500_SUBSET], store)
        res = cli("data", "ingest", SP500_SUBSET, "--store", store.root)
        assert res.exit_code == 2
        assert "locked" in res.stderr and str(store.root) in res.stderr
        assert snapshot(store.root) == before
        assert store.read(D1).height > 0  # readers are not blocked
        fcntl.flock(fh, fcntl.LOCK_UN)
    assert ingest([SP500_SUBSET], store).writes[D1].changed


def test_lock_held_by_another_process(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    store.root.mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(
            f"""
            import fcntl, time
            fh = open({str(store.root / '.lock')!r}, 'w')
            fcntl.flock(fh, fcntl.LOCK_EX)
            print('LOCKED', flush=True)
            time.sleep(60)
            """
        )],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "LOCKED"
        with pytest.raises(StoreError, match="locked"):
            store.write(btc_frame(5).with_columns(symbol=pl.lit("BTCUSD")), Timeframe.M1)
        assert not store.exists()
    finally:
        holder.kill()  # SIGKILL: the kernel drops its flock, so the lock is never stale
        holder.wait()
    store.write(btc_frame(5).with_columns(symbol=pl.lit("BTCUSD")), Timeframe.M1)
    assert store.read().height == 5


def test_lock_retakes_a_lock_file_removed_under_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed first write removes the store it created, .lock included: a writer that opened
    that .lock just before must not hold a lock on a deleted file while a third takes a new one."""
    import moola.data._store as store_mod

    store = Store(tmp_path / "s")
    real_flock = fcntl.flock
    calls: list[int] = []

    def flock(fh: object, op: int) -> None:
        if op & fcntl.LOCK_EX and not calls:
            (store.root / ".lock").unlink()  # the failing first writer cleaned up meanwhile
        calls.append(op)
        real_flock(fh, op)

    monkeypatch.setattr(store_mod.fcntl, "flock", flock)
    store.write(btc_frame(5).with_columns(symbol=pl.lit("BTCUSD")), Timeframe.M1)
    assert sum(1 for op in calls if op & fcntl.LOCK_EX) == 2  # took the lock again, on the new file
    assert (store.root / ".lock").is_file() and store.read().height == 5


# ------------------------------------------------------------------ symbols, last_ts


def test_symbols_with_slash_round_trip(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    bars = pl.concat([
        btc_frame(20).with_columns(symbol=pl.lit("BTC/USD")),
        btc_frame(10).with_columns(symbol=pl.lit("BTC%2FUSD")),  # must not collide with BTC/USD
        btc_frame(5).with_columns(symbol=pl.lit("ETH/USD:USD")),
    ])
    w = store.write(bars, Timeframe.M1)
    assert sorted(w.added) == ["1m/BTC%2FUSD", "1m/BTC/USD", "1m/ETH/USD:USD"]
    assert store.symbols() == ["BTC%2FUSD", "BTC/USD", "ETH/USD:USD"]
    got = store.read(Timeframe.M1, ["BTC/USD"])
    assert got.height == 20 and got["symbol"].unique().to_list() == ["BTC/USD"]
    assert store.read(Timeframe.M1, ["BTC%2FUSD"]).height == 10
    for f in store.root.rglob("*.parquet"):
        assert f.parent.parent.name == "timeframe=1m"  # no extra directory level from the "/"
    assert store.last_ts("BTC/USD", "1m") == btc_frame(20)["ts"].dt.epoch("ns")[-1]
    # via ingest with --symbol
    p = write_csv_lines(tmp_path / "x_1m.csv", btc_csv_lines(40))
    res = cli("data", "ingest", p, "--store", tmp_path / "s2", "--symbol", "SOL/USDT")
    assert res.exit_code == 0, res.output
    assert Store(tmp_path / "s2").symbols() == ["SOL/USDT"]
    assert Store(tmp_path / "s2").read()["symbol"].unique().to_list() == ["SOL/USDT"]


def test_last_ts(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    assert store.last_ts("BTCUSD", "1m") is None  # no store yet
    store.write(btc_frame(30).with_columns(symbol=pl.lit("BTCUSD")), Timeframe.M1)
    ts = btc_frame(60)["ts"].dt.epoch("ns")
    assert store.last_ts("BTCUSD", "1m") == ts[29]
    assert store.last_ts("BTCUSD", "5m") is None
    assert store.last_ts("ETHUSD", "1m") is None
    store.write(btc_frame(60).slice(20).with_columns(symbol=pl.lit("BTCUSD")), Timeframe.M1)
    assert store.last_ts("BTCUSD", Timeframe.M1) == ts[59]
    # an out-of-order older write does not move it back
    store.write(btc_frame(10).with_columns(symbol=pl.lit("BTCUSD")), Timeframe.M1)
    assert store.last_ts("BTCUSD", "1m") == ts[59]


def test_store_errors(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    with pytest.raises(StoreError, match="not a moola store"):
        store.read()
    store.write(btc_frame(5).with_columns(symbol=pl.lit("BTCUSD")), Timeframe.M1)
    store.write(btc_frame(5).with_columns(symbol=pl.lit("BTCUSD")), Timeframe.M5)
    with pytest.raises(StoreError, match="timeframes"):
        store.read()
    with pytest.raises(StoreError, match="ETHUSD"):
        store.read(Timeframe.M1, ["ETHUSD"])
    m = json.loads(store.manifest_path.read_text())
    assert set(m["partitions"]) == {"1m/BTCUSD", "5m/BTCUSD"}
    store.manifest_path.write_text("{not json")
    with pytest.raises(StoreError, match="manifest"):
        store.read(Timeframe.M1)
