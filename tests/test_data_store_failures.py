"""Store failures: one ingest is one commit across timeframes, and an operating-system error
(disk full, read-only store, name too long) is one clear StoreError that leaves the store exactly
as it was, with no temp files or empty directories behind."""

from __future__ import annotations

import builtins
import errno
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from polars.exceptions import ComputeError

import moola._io as io_mod
from _data_helpers import (
    SP500_SUBSET,
    btc_csv_lines,
    btc_frame,
    cli,
    snapshot,
    sp500_subset,
    write_csv_lines,
)
from moola.data import Policy, Store, StoreError, Timeframe, ValidationFailed, ingest

D1, M1 = Timeframe.D1, Timeframe.M1
_real_write_parquet = pl.DataFrame.write_parquet


def _seeded(tmp: Path) -> tuple[Store, Path, Path]:
    """A store holding BTC 1m (first 50 bars) and the subset's years before 2016; returns the
    store and two newer exports (a 1m file of 100 bars and the full daily subset)."""
    old_d1 = tmp / "in" / "sp500_old.parquet"
    old_d1.parent.mkdir(parents=True)
    sp500_subset().filter(pl.col("date") < pl.date(2016, 1, 1)).write_parquet(old_d1)
    old_m1 = write_csv_lines(tmp / "in" / "old" / "BTCUSD_1m.csv", btc_csv_lines(50))
    store = Store(tmp / "s")
    ingest([old_m1, old_d1], store)
    new_m1 = write_csv_lines(tmp / "in" / "new" / "BTCUSD_1m.csv", btc_csv_lines(100))
    return store, new_m1, SP500_SUBSET


def _leftovers(root: Path) -> list[str]:
    """Temp files and empty directories anywhere under the store."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        out += [os.path.join(dirpath, f) for f in filenames if f.endswith(".tmp")]
        out += [os.path.join(dirpath, d) for d in dirnames if not os.listdir(os.path.join(dirpath, d))]
    return out


def _partial_then_fail(exc: Callable[[Path], BaseException], when: Callable[[Path], bool]
                       ) -> Callable[..., None]:
    """A ``write_parquet`` that writes the first half of the real file, then fails like a full
    disk would, for target paths where ``when(path)``."""

    def write(self: pl.DataFrame, file: Any, *a: Any, **kw: Any) -> None:
        path = Path(file)
        if not when(path):
            _real_write_parquet(self, file, *a, **kw)
            return
        _real_write_parquet(self, file, *a, **kw)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        raise exc(path)

    return write


def _polars_enospc(path: Path) -> BaseException:
    # what polars 2.x really raises on a full disk (seen on /dev/full): no errno attribute
    return ComputeError("parquet: File out of specification: underlying IO error: "
                        "No space left on device (os error 28)")


def _os_enospc(path: Path) -> BaseException:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


# ------------------------------------------------------------ one ingest, one commit


def test_multi_timeframe_ingest_failing_in_second_timeframe_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, new_m1, new_d1 = _seeded(tmp_path)
    before = snapshot(store.root)
    monkeypatch.setattr(pl.DataFrame, "write_parquet", _partial_then_fail(
        lambda p: OSError(errno.EIO, "I/O error (simulated)", str(p)),
        lambda p: "timeframe=1d" in str(p)))
    with pytest.raises(StoreError, match="timeframe=1d"):
        ingest([new_m1, new_d1], store)  # 1m is staged first, 1d fails
    monkeypatch.undo()
    assert snapshot(store.root) == before  # the 1m update was not committed either
    assert _leftovers(store.root) == []

    commits: list[dict[str, Any]] = []
    real_commit = Store._commit
    monkeypatch.setattr(Store, "_commit", lambda self, m: (commits.append(m), real_commit(self, m)))
    res = ingest([new_m1, new_d1], store)
    assert len(commits) == 1  # both timeframes in one manifest swap
    assert res.writes[M1].updated == ["1m/BTCUSD"] and res.writes[M1].rows_new == 50
    assert len(res.writes[D1].updated) == 30
    assert store.read(M1).height == 100
    assert store.read(D1).height == 36_567


def test_multi_timeframe_validation_failure_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, new_m1, new_d1 = _seeded(tmp_path)
    before = snapshot(store.root)
    writes: list[Path] = []
    monkeypatch.setattr(pl.DataFrame, "write_parquet",
                        lambda self, f, *a, **k: writes.append(Path(f)))
    # the daily subset holds 538 all-null rows; the 1m file none
    with pytest.raises(ValidationFailed, match="all_null"):
        ingest([new_m1, new_d1], store, policy=Policy.from_overrides(["all_null=fail"]))
    assert writes == []  # raised before the first byte, not rolled back after
    assert snapshot(store.root) == before


def test_write_many_keeps_write_working(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    bars = btc_frame(20).with_columns(symbol=pl.lit("BTCUSD"))
    out = store.write_many({M1: (bars, None), Timeframe.M5: (bars.head(4), None)})
    assert out[M1].added == ["1m/BTCUSD"] and out[Timeframe.M5].added == ["5m/BTCUSD"]
    assert store.write(bars, M1).unchanged == ["1m/BTCUSD"]
    assert store.write_many({}) == {}


# ------------------------------------------------------------------------ full disk


@pytest.mark.parametrize(("where", "raise_as"), [
    ("new-partition", "polars"), ("new-partition", "oserror"),
    ("existing-partition", "polars"), ("existing-partition", "oserror"),
    ("manifest-fsync", "oserror"),  # the manifest is written by Python, not polars
])
def test_disk_full_cleans_up_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, raise_as: str
) -> None:
    store, new_m1, _ = _seeded(tmp_path)
    before = snapshot(store.root)
    src = new_m1
    if where == "new-partition":  # a new symbol: its partition directory is created, then fails
        src = write_csv_lines(tmp_path / "in" / "ETHUSD_1m.csv", btc_csv_lines(40))
    if where == "manifest-fsync":  # every data file is written; the manifest's fsync fails
        real_fsync = os.fsync

        def fsync(fd: int) -> None:
            if os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp") and \
                    ".manifest.json" in os.readlink(f"/proc/self/fd/{fd}"):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real_fsync(fd)

        monkeypatch.setattr(io_mod.os, "fsync", fsync)
    else:
        monkeypatch.setattr(pl.DataFrame, "write_parquet", _partial_then_fail(
            _polars_enospc if raise_as == "polars" else _os_enospc,
            lambda p: str(p).startswith(str(store.root))))
    with pytest.raises(StoreError) as ei:
        ingest([src], store)
    monkeypatch.undo()
    msg = str(ei.value)
    assert "no space left on device" in msg and "unchanged" in msg, msg
    assert ("manifest.json" if where == "manifest-fsync" else "timeframe=1m/symbol=") in msg, msg
    assert snapshot(store.root) == before
    assert _leftovers(store.root) == []
    assert ingest([src], store).writes[M1].changed  # and the disk "has space" again


def test_failed_first_ingest_leaves_no_store_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = write_csv_lines(tmp_path / "BTCUSD_1m.csv", btc_csv_lines(30))
    store = Store(tmp_path / "deep" / "s")
    monkeypatch.setattr(pl.DataFrame, "write_parquet", _partial_then_fail(_os_enospc, lambda p: True))
    with pytest.raises(StoreError, match="no space left"):
        ingest([src], store)
    assert not store.root.exists()
    assert not (tmp_path / "deep").exists()  # created for the store: removed with it


# ---------------------------------------------------------- sweeping crash leftovers


def test_later_ingest_sweeps_temp_files_and_empty_directories(tmp_path: Path) -> None:
    store, new_m1, _ = _seeded(tmp_path)
    live = store.root / "timeframe=1m" / "symbol=BTCUSD"
    planted = [
        live / f".bars-0123456789abcdef.parquet.{os.getpid()}.1.tmp",  # a killed atomic write
        store.root / f".manifest.json.{os.getpid()}.2.tmp",
        store.root / "timeframe=1d" / "symbol=ZZZ" / ".rejects-0.parquet.3.4.tmp",
    ]
    for f in planted:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"half")
    empty = [store.root / "timeframe=4h" / "symbol=ETHUSD", store.root / "timeframe=1m" / "symbol=X"]
    for d in empty:
        d.mkdir(parents=True)
    w = ingest([new_m1.parent.parent / "old" / "BTCUSD_1m.csv"], store).writes[M1]
    assert not w.changed  # nothing to commit, but leftovers are still swept
    assert _leftovers(store.root) == []
    assert not any(f.exists() for f in planted)
    assert not (store.root / "timeframe=4h").exists()
    assert not (store.root / "timeframe=1d" / "symbol=ZZZ").exists()
    assert store.read(M1).height == 50


# ---------------------------------------------------- operating-system errors, CLI


@pytest.fixture
def read_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Path, int], None]]:
    """Make a store unwritable. EACCES: chmod 0o555 where that binds, else (as root, where it
    does not) refuse every new directory and file under it as the kernel would, the existing
    lock file staying writable as under chmod. EROFS: a read-only mount, the lock file too."""
    chmodded: list[Path] = []

    def make(root: Path, err: int) -> None:
        if err == errno.EACCES and os.geteuid() != 0:
            for d in [root, *[p for p in root.rglob("*") if p.is_dir()]]:
                d.chmod(0o555)
                chmodded.append(d)
            return
        real_mkdir, real_open = Path.mkdir, builtins.open

        def refuse(path: Any) -> None:
            if str(path).startswith(str(root)):
                raise OSError(err, os.strerror(err), str(path))

        def mkdir(self: Path, *a: Any, **kw: Any) -> None:
            if not self.exists():
                refuse(self)
            real_mkdir(self, *a, **kw)

        def write_parquet(self: pl.DataFrame, file: Any, *a: Any, **kw: Any) -> None:
            refuse(file)
            _real_write_parquet(self, file, *a, **kw)

        def bopen(file: Any, mode: str = "r", *a: Any, **kw: Any) -> Any:
            lock_ok = err == errno.EACCES and Path(file).name == ".lock" and Path(file).exists()
            if any(c in mode for c in "wax+") and not lock_ok:
                refuse(file)
            return real_open(file, mode, *a, **kw)

        monkeypatch.setattr(Path, "mkdir", mkdir)
        monkeypatch.setattr(pl.DataFrame, "write_parquet", write_parquet)
        monkeypatch.setattr(builtins, "open", bopen)

    yield make
    for d in chmodded:
        d.chmod(stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)


def _assert_clean_exit_2(res: Any, *needles: str) -> None:
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    for n in needles:
        assert n in res.stderr, res.stderr


@pytest.mark.parametrize(("err", "what"), [(errno.EACCES, "new-symbol"), (errno.EACCES, "update"),
                                           (errno.EROFS, "update")])
def test_cli_read_only_store(
    tmp_path: Path, read_only: Callable[[Path, int], None], err: int, what: str
) -> None:
    store, new_m1, _ = _seeded(tmp_path)
    src = new_m1 if what == "update" else write_csv_lines(tmp_path / "in" / "ETHUSD_1m.csv",
                                                          btc_csv_lines(40))
    before = snapshot(store.root)
    read_only(store.root, err)
    res = cli("data", "ingest", src, "--store", store.root)
    _assert_clean_exit_2(res, str(store.root), "unchanged")
    assert ("read-only" if err == errno.EROFS else "permission denied") in res.stderr, res.stderr
    assert snapshot(store.root) == before
    assert _leftovers(store.root) == []


def test_cli_disk_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, new_m1, _ = _seeded(tmp_path)
    before = snapshot(store.root)
    monkeypatch.setattr(pl.DataFrame, "write_parquet", _partial_then_fail(
        _polars_enospc, lambda p: str(p).startswith(str(store.root))))
    res = cli("data", "ingest", new_m1, SP500_SUBSET, "--store", store.root)
    _assert_clean_exit_2(res, "no space left on device while writing", "unchanged")
    assert snapshot(store.root) == before
    assert _leftovers(store.root) == []


def test_cli_symbol_too_long_for_a_file_name(tmp_path: Path) -> None:
    store, new_m1, _ = _seeded(tmp_path)
    before = snapshot(store.root)
    res = cli("data", "ingest", new_m1, "--store", store.root, "--symbol", "X" * 300)
    # the reader may refuse the symbol first; either way one clear line, nothing written
    _assert_clean_exit_2(res, "too long")
    assert snapshot(store.root) == before
    assert _leftovers(store.root) == []


def test_store_name_too_long_is_a_store_error(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    store.write(btc_frame(5).with_columns(symbol=pl.lit("BTCUSD")), M1)
    before = snapshot(store.root)
    with pytest.raises(StoreError, match="file name too long") as ei:
        store.write(btc_frame(5).with_columns(symbol=pl.lit("X" * 300)), M1)
    assert "unchanged" in str(ei.value) and "symbol=XXXX" in str(ei.value)
    assert snapshot(store.root) == before
    assert _leftovers(store.root) == []
