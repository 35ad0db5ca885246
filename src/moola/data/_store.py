"""Canonical Parquet store: one file per (timeframe, symbol), committed by a manifest swap.

Layout::

    STORE/manifest.json                         # the only thing readers trust
    STORE/timeframe=1d/symbol=AAPL/bars-<h>.parquet
    STORE/timeframe=1d/symbol=AAPL/rejects-<h>.parquet   # rows dropped by validation, with reasons

New data files get new content-hashed names and become visible only when ``manifest.json`` is
atomically replaced (``moola._io``: unique temp, fsync, ``os.replace``). A crash at any point
leaves the previous manifest, hence the previous store, intact; unreferenced files are swept on
the next write.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

import polars as pl

from moola._io import atomic_write, atomic_write_json
from moola.data._errors import StoreError
from moola.data._schema import CANONICAL_SCHEMA, Timeframe, conform
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
        frames = [pl.read_parquet(self.root / p["file"]) for p in parts]
        return pl.concat(frames, how="diagonal_relaxed").sort("symbol", "ts")

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
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as e:
                raise StoreError("store is locked by another writer", path=self.root) from e
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def write(
        self, bars: pl.DataFrame, timeframe: Timeframe, rejects: pl.DataFrame | None = None
    ) -> WriteSummary:
        """Merge validated bars into the store; newer rows win on (symbol, ts). Atomic."""
        bars = conform(bars)
        if rejects is None:
            rejects = pl.DataFrame(schema=REJECT_SCHEMA)
        with self._lock():
            manifest = self.manifest()
            parts: dict[str, Any] = dict(manifest["partitions"])
            added: list[str] = []
            updated: list[str] = []
            unchanged: list[str] = []
            rows_new = rows_replaced = 0
            new_files: list[Path] = []
            symbols = sorted(set(bars.get_column("symbol").unique().to_list())
                             | set(rejects.get_column("symbol").unique().to_list()))
            by_sym = {k[0]: g for k, g in bars.group_by("symbol")}
            rej_by_sym = {k[0]: g for k, g in rejects.group_by("symbol")}
            try:
                for sym in symbols:
                    key = self.key(timeframe, sym)
                    new = by_sym.get(sym, pl.DataFrame(schema=bars.schema))
                    rej = rej_by_sym.get(sym, pl.DataFrame(schema=REJECT_SCHEMA))
                    old_entry = parts.get(key)
                    if old_entry is not None:
                        old = pl.read_parquet(self.root / old_entry["file"])
                        merged = pl.concat([old, new], how="diagonal_relaxed")
                        n_before = old.height
                        merged = merged.unique(["symbol", "ts"], keep="last", maintain_order=True)
                        replaced = new.join(old.select("ts"), on="ts", how="semi").height
                        old_rej = (pl.read_parquet(self.root / old_entry["rejects"])
                                   if old_entry.get("rejects") else None)
                        if old_rej is not None:
                            rej = pl.concat([old_rej, rej])
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
                    pdir = self.root / f"timeframe={timeframe.value}" / f"symbol={quote(sym, safe='')}"
                    pdir.mkdir(parents=True, exist_ok=True)
                    f_bars = pdir / f"bars-{bars_h}.parquet"
                    f_rej = pdir / f"rejects-{rej_h}.parquet"
                    for frame, path in ((merged, f_bars), (rej, f_rej)):
                        if not path.exists():
                            atomic_write(path, frame.write_parquet)
                            new_files.append(path)
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
                if added or updated:
                    self._commit({"format": FORMAT_VERSION, "partitions": dict(sorted(parts.items()))})
            except BaseException:
                for f in new_files:  # never referenced: remove what this write created
                    f.unlink(missing_ok=True)
                raise
            self._sweep()
        return WriteSummary(added, updated, unchanged, rows_new, rows_replaced)

    def _commit(self, manifest: dict[str, Any]) -> None:
        """The one step that makes a write visible: the manifest swapped in by rename."""
        atomic_write_json(self.manifest_path, manifest, indent=1)

    def _sweep(self) -> None:
        """Delete data files no manifest entry references (left by crashes or replaced), and
        manifest temp files of crashed writers (the caller holds the lock: none is live)."""
        if not self.exists():
            return
        for f in self.root.glob(f".{MANIFEST}.*.tmp"):
            f.unlink(missing_ok=True)
        live = set()
        for p in self.manifest()["partitions"].values():
            live.add(p["file"])
            if p.get("rejects"):
                live.add(p["rejects"])
        for f in self.root.glob("timeframe=*/symbol=*/*"):
            rel = str(f.relative_to(self.root))
            if rel not in live:
                f.unlink(missing_ok=True)
