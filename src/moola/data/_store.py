"""Canonical Parquet store: one file per (timeframe, symbol), committed by a manifest swap.

Layout::

    STORE/manifest.json                         # the only thing readers trust
    STORE/timeframe=1d/symbol=AAPL/bars-<h>.parquet
    STORE/timeframe=1d/symbol=AAPL/rejects-<h>.parquet   # rows dropped by validation, with reasons

New data files get new content-hashed names and become visible only when ``manifest.json`` is
atomically replaced (``moola._io``: unique temp, fsync, ``os.replace``). A crash at any point
leaves the previous manifest, hence the previous store, intact; unreferenced files, temp files and
empty partition directories are swept on the next write. One ``write_many`` (one ingest command)
is one manifest swap across all its timeframes; a failed one removes what it created and turns an
operating-system error into one StoreError.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import polars as pl
from polars.exceptions import PolarsError

from moola._io import atomic_write, atomic_write_json, temp_path
from moola.data._errors import StoreError
from moola.data._schema import CANONICAL_SCHEMA, Timeframe, conform
from moola.data._symbols import partition_name
from moola.data._validate import REJECT_SCHEMA

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class WriteSummary:
    """What a write did, per partition: added, updated or unchanged."""

    added: list[str]
    updated: list[str]
    unchanged: list[str]
    rows_new: int
    rows_replaced: int

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated)


def _frame_hash(df: pl.DataFrame) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({k: str(v) for k, v in df.schema.items()}).encode())
    h.update(json.dumps(df.columns).encode())
    h.update(df.hash_rows(seed=0).to_numpy().tobytes())
    return h.hexdigest()[:16]


class Store:
    """A directory of canonical bars. Construct with the path; nothing is read until asked."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # ---------------------------------------------------------------- manifest
    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    def exists(self) -> bool:
        return self.manifest_path.is_file()

    def manifest(self) -> dict[str, Any]:
        if not self.exists():
            return {"format": FORMAT_VERSION, "partitions": {}}
        try:
            m = json.loads(self.manifest_path.read_text())
        except json.JSONDecodeError as e:
            raise StoreError(f"manifest is not valid JSON ({e})", path=self.manifest_path) from e
        if m.get("format") != FORMAT_VERSION:
            raise StoreError(f"unsupported store format {m.get('format')}", path=self.manifest_path)
        return m

    def _require(self) -> dict[str, Any]:
        if not self.exists():
            raise StoreError("not a moola store (no manifest.json)", path=self.root,
                             hint="create it with `moola data ingest ... --store DIR`")
        return self.manifest()

    @staticmethod
    def key(timeframe: Timeframe | str, symbol: str) -> str:
        return f"{Timeframe(timeframe).value}/{symbol}"

    def partitions(self, timeframe: Timeframe | str | None = None) -> list[dict[str, Any]]:
        parts = list(self._require()["partitions"].values())
        if timeframe is not None:
            parts = [p for p in parts if p["timeframe"] == Timeframe(timeframe).value]
        return sorted(parts, key=lambda p: (p["timeframe"], p["symbol"]))

    def timeframes(self) -> list[Timeframe]:
        return sorted({Timeframe(p["timeframe"]) for p in self.partitions()}, key=list(Timeframe).index)

    def symbols(self, timeframe: Timeframe | str | None = None) -> list[str]:
        return sorted({p["symbol"] for p in self.partitions(timeframe) if p["rows"] > 0})

    def last_ts(self, symbol: str, timeframe: Timeframe | str) -> int | None:
        """Last stored bar time (ns since epoch), for resuming a fetch."""
        p = self.manifest()["partitions"].get(self.key(timeframe, symbol))
        return None if p is None or p["last_ts"] is None else int(p["last_ts"])

    # ------------------------------------------------------------------ reads
    def read(
        self,
        timeframe: Timeframe | str | None = None,
        symbols: list[str] | None = None,
    ) -> pl.DataFrame:
        """All bars of one timeframe, sorted by (symbol, ts). Picks the only timeframe if unset."""
        tf = self.resolve_timeframe(timeframe)
        parts = [p for p in self.partitions(tf) if symbols is None or p["symbol"] in symbols]
        if symbols is not None:
            missing = sorted(set(symbols) - {p["symbol"] for p in parts})
            if missing:
                raise StoreError(f"symbols not in the store at {tf}: {missing}", path=self.root)
        if not parts:
            return pl.DataFrame(schema={k: v for k, v in CANONICAL_SCHEMA.items()
                                        if k not in ("adj_close", "trades", "is_filled")})
        # one lazy query over the files: Polars reads them in parallel (2.5x a loop of reads).
        # No sort: a partition is one symbol sorted by ts (``_stage``) and ``partitions``
        # lists them by symbol, so the concatenation is in (symbol, ts) order; sorting it again
        # was half the read.
        frames = [pl.scan_parquet(self.root / p["file"]) for p in parts]
        return pl.concat(frames, how="diagonal_relaxed").collect()

    def read_rejects(self, timeframe: Timeframe | str | None = None) -> pl.DataFrame:
        tf = self.resolve_timeframe(timeframe)
        frames = [pl.read_parquet(self.root / p["rejects"]) for p in self.partitions(tf)
                  if p.get("rejects")]
        if not frames:
            return pl.DataFrame(schema=REJECT_SCHEMA)
        return pl.concat(frames).sort("symbol", "ts", "reason")

    def resolve_timeframe(self, timeframe: Timeframe | str | None) -> Timeframe:
        if timeframe is not None:
            return Timeframe(timeframe)
        tfs = self.timeframes()
        if len(tfs) != 1:
            raise StoreError(
                f"store holds timeframes {[t.value for t in tfs]}; pass --timeframe",
                path=self.root,
            )
        return tfs[0]

    # ----------------------------------------------------------------- writes
    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """Exclusive writer lock (``flock``: the kernel drops it when the holder dies, even by
        kill -9, so it never goes stale). A failed first write removes the store it created."""
        created = [d for d in (self.root, *self.root.parents) if not d.exists()]
        lock = self.root / ".lock"
        for _ in range(3):
            self.root.mkdir(parents=True, exist_ok=True)
            fh = open(lock, "a")  # noqa: SIM115 - held open for the lock's lifetime
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as e:
                fh.close()
                raise StoreError("store is locked by another writer", path=self.root) from e
            with contextlib.suppress(FileNotFoundError):
                if os.stat(lock).st_ino == os.fstat(fh.fileno()).st_ino:
                    break
            fh.close()  # locked a lock file a failed first write just removed: take the new one
        else:
            raise StoreError("store is locked by another writer", path=self.root)
        try:
            yield
        except BaseException:
            if created and not self.exists():
                lock.unlink(missing_ok=True)  # still holding it: no one else can be inside
                for d in created:
                    with contextlib.suppress(OSError):
                        d.rmdir()  # only if empty: never what another process put there
            raise
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()

    def write(
        self, bars: pl.DataFrame, timeframe: Timeframe, rejects: pl.DataFrame | None = None
    ) -> WriteSummary:
        """Merge validated bars into the store; newer rows win on (symbol, ts). Atomic."""
        tf = Timeframe(timeframe)
        return self.write_many({tf: (bars, rejects)})[tf]

    def write_many(self, batches: Mapping[Timeframe, Batch]) -> dict[Timeframe, WriteSummary]:
        """Merge several timeframes in one manifest swap, so one command commits all or nothing.

        Operating-system failures (disk full, read-only, name too long) raise one StoreError
        after removing every file and directory this write created.
        """
        staged = {Timeframe(tf): (conform(b), pl.DataFrame(schema=REJECT_SCHEMA) if r is None else r)
                  for tf, (b, r) in batches.items()}
        if not staged:
            return {}
        txn = _Txn(self.root)
        try:
            with self._lock():
                txn.doing = ("reading", self.manifest_path)
                parts: dict[str, Any] = dict(self.manifest()["partitions"])
                try:
                    out = {tf: self._stage(tf, bars, rej, parts, txn) for tf, (bars, rej) in staged.items()}
                    if any(w.changed for w in out.values()):
                        txn.doing = ("writing", self.manifest_path)
                        txn.files.append(temp_path(self.manifest_path))
                        self._commit({"format": FORMAT_VERSION, "partitions": dict(sorted(parts.items()))})
                except BaseException:
                    txn.rollback()
                    raise
                self._sweep()
        except (OSError, PolarsError) as e:
            n = _os_errno(e)
            if n is None and not isinstance(e, OSError):
                raise
            raise txn.error(e, n) from e
        return out

    def _stage(
        self, timeframe: Timeframe, bars: pl.DataFrame, rejects: pl.DataFrame, parts: dict[str, Any],
        txn: _Txn,
    ) -> WriteSummary:
        """Write one timeframe's new partition files and update ``parts``; nothing is visible yet."""
        added: list[str] = []
        updated: list[str] = []
        unchanged: list[str] = []
        rows_new = rows_replaced = 0
        symbols = sorted(set(bars.get_column("symbol").unique().to_list())
                         | set(rejects.get_column("symbol").unique().to_list()))
        by_sym = {k[0]: g for k, g in bars.group_by("symbol")}
        rej_by_sym = {k[0]: g for k, g in rejects.group_by("symbol")}
        for sym in symbols:
            key = self.key(timeframe, sym)
            new = by_sym.get(sym, pl.DataFrame(schema=bars.schema))
            rej = rej_by_sym.get(sym, pl.DataFrame(schema=REJECT_SCHEMA))
            old_entry = parts.get(key)
            if old_entry is not None:
                txn.doing = ("reading", self.root / old_entry["file"])
                old = pl.read_parquet(self.root / old_entry["file"])
                merged = pl.concat([old, new], how="diagonal_relaxed")
                n_before = old.height
                merged = merged.unique(["symbol", "ts"], keep="last", maintain_order=True)
                replaced = new.join(old.select("ts"), on="ts", how="semi").height
                if old_entry.get("rejects"):
                    txn.doing = ("reading", self.root / old_entry["rejects"])
                    rej = pl.concat([pl.read_parquet(self.root / old_entry["rejects"]), rej])
            else:
                merged, n_before, replaced = new, 0, 0
            merged = conform(merged).sort("ts")
            # one reject per (row, reason): the same file re-ingested under another
            # path (relative vs absolute, moved, copied) must not count its warts twice
            rej = rej.unique(["symbol", "ts", "reason", "line"], keep="first",
                             maintain_order=True).sort("ts", "reason", "line")
            bars_h = _frame_hash(merged)
            rej_h = _frame_hash(rej)
            if old_entry is not None and old_entry["hash"] == bars_h and \
                    old_entry.get("rejects_hash") == rej_h:
                unchanged.append(key)
                continue
            pdir = self.root / f"timeframe={timeframe.value}" / partition_name(sym)
            txn.mkdirs(pdir)
            f_bars = pdir / f"bars-{bars_h}.parquet"
            f_rej = pdir / f"rejects-{rej_h}.parquet"
            for frame, path in ((merged, f_bars), (rej, f_rej)):
                if not path.exists():
                    txn.doing = ("writing", path)
                    txn.files += [path, temp_path(path)]
                    atomic_write(path, frame.write_parquet)
            ts = merged.get_column("ts").dt.epoch("ns")
            parts[key] = {
                "timeframe": timeframe.value,
                "symbol": sym,
                "file": str(f_bars.relative_to(self.root)),
                "rejects": str(f_rej.relative_to(self.root)),
                "hash": bars_h,
                "rejects_hash": rej_h,
                "rows": merged.height,
                "rejected_rows": rej.height,
                "first_ts": int(cast(int, ts.min())) if merged.height else None,
                "last_ts": int(cast(int, ts.max())) if merged.height else None,
                "columns": merged.columns,
            }
            (updated if old_entry is not None else added).append(key)
            rows_new += merged.height - n_before
            rows_replaced += replaced
        return WriteSummary(added, updated, unchanged, rows_new, rows_replaced)

    def _commit(self, manifest: dict[str, Any]) -> None:
        """The one step that makes a write visible: the manifest swapped in by rename."""
        atomic_write_json(self.manifest_path, manifest, indent=1)

    def _sweep(self) -> None:
        """Delete what no manifest entry references (data files left by crashes or replaced,
        temp files, empty partition directories); the caller holds the lock, so none is live.
        Best effort: it runs after the commit, so a failure here must not fail the write."""
        with contextlib.suppress(OSError):
            if not self.exists():
                return
            live = set()
            for p in self.manifest()["partitions"].values():
                live.add(p["file"])
                if p.get("rejects"):
                    live.add(p["rejects"])
            junk = [*self.root.glob(f".{MANIFEST}.*.tmp"),
                    *(f for f in self.root.glob("timeframe=*/symbol=*/*")
                      if str(f.relative_to(self.root)) not in live)]
            for f in junk:
                with contextlib.suppress(OSError):
                    f.unlink(missing_ok=True)
            for d in [*self.root.glob("timeframe=*/symbol=*"), *self.root.glob("timeframe=*")]:
                with contextlib.suppress(OSError):
                    d.rmdir()  # fails, as it should, unless empty


Batch = tuple[pl.DataFrame, pl.DataFrame | None]
"""One timeframe's validated bars and the rows validation dropped (or None)."""

_OS_ERROR_IN_TEXT = re.compile(r"os error (\d+)")
_HINTS = {  # errno -> what to do, after the OS's own wording (os.strerror, lower-cased)
    errno.ENOSPC: "free some space and run it again",
    errno.EDQUOT: "free some space and run it again",
    errno.EROFS: "pass a writable --store",
    errno.EACCES: "make the store directory writable, or pass another --store",
    errno.EPERM: "make the store directory writable, or pass another --store",
    errno.ENAMETOOLONG: "use a shorter symbol (--symbol)",
}


def _os_errno(e: BaseException) -> int | None:
    """The errno of an OSError, or the one polars only spells in its message ("os error 28")."""
    if isinstance(e, OSError) and e.errno is not None:
        return e.errno
    m = _OS_ERROR_IN_TEXT.search(str(e))
    return int(m.group(1)) if m else None


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else f"{text[:limit]}…({len(text)} chars)"


class _Txn:
    """What one write created, to remove on failure, and what it was doing, to say so."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files: list[Path] = []
        self.dirs: list[Path] = []
        self.doing: tuple[str, Path] = ("writing", root / ".lock")

    def mkdirs(self, path: Path) -> None:
        self.doing = ("creating", path)  # even ``exists()`` fails on a name too long
        missing = [d for d in (path, *path.parents) if d != self.root and self.root in d.parents
                   and not d.exists()]
        for d in reversed(missing):
            self.doing = ("creating", d)
            d.mkdir(exist_ok=True)
            self.dirs.append(d)

    def rollback(self) -> None:
        for f in self.files:
            with contextlib.suppress(OSError):
                f.unlink(missing_ok=True)
        for d in reversed(self.dirs):
            with contextlib.suppress(OSError):
                d.rmdir()

    def error(self, e: BaseException, n: int | None) -> StoreError:
        verb, path = self.doing
        hint = _HINTS.get(n) if n else None
        why = (os.strerror(n).lower() if hint else os.strerror(n)) if n else str(e)
        where = str(path.relative_to(self.root)) if self.root in path.parents else str(path)
        where = "/".join(_short(c) for c in where.split("/"))
        return StoreError(f"{why.rstrip('.')} while {verb} {where}; the store was left unchanged",
                          path=self.root, hint=hint)
