"""FeatureMatrix: float32 features plus the keys and schema hash that travel with them."""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from moola._io import atomic_write, atomic_write_json, read_json, temp_path

if TYPE_CHECKING:
    import pyarrow as pa

    from moola.features._registry import FeatureSet


def schema_hash(set_name: str, names: tuple[str, ...], params: dict[str, Any],
                code: str | None = None) -> str:
    """Hash of names, order, parameters and (``code``) the formulas' code hash: models and the
    runtime refuse a mismatch. Without ``code`` it is the older names-and-parameters hash."""
    body: dict[str, Any] = {"set": set_name, "names": list(names), "params": params}
    if code is not None:
        body["code"] = code
    payload = json.dumps(body, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class FeatureMatrix:
    """Row i of ``values`` is the feature vector of bar ``keys[i]``.

    keys: DataFrame with ``symbol, ts, gap_before, is_filled``, sorted by (symbol, ts).
    values: (N, F) float32, C-contiguous; NaN marks warm-up rows whose look-back is incomplete.
    """

    keys: pl.DataFrame
    values: np.ndarray
    names: tuple[str, ...]
    set_name: str
    params: dict[str, Any] = field(default_factory=dict)
    code_hash: str | None = None  # FeatureSet.code_hash of the code that computed the values

    def __post_init__(self) -> None:
        if self.values.dtype != np.float32:
            raise TypeError(f"FeatureMatrix.values must be float32, got {self.values.dtype}")
        if not self.values.flags["C_CONTIGUOUS"]:
            raise ValueError("FeatureMatrix.values must be C-contiguous")
        if self.values.ndim != 2 or self.values.shape != (self.keys.height, len(self.names)):
            raise ValueError(
                f"values shape {self.values.shape} != (rows={self.keys.height}, "
                f"features={len(self.names)})"
            )

    @property
    def schema_hash(self) -> str:
        return schema_hash(self.set_name, self.names, self.params, code=self.code_hash)

    def symbol_slices(self) -> dict[str, slice]:
        """Contiguous row range of each symbol (keys are sorted by symbol)."""
        sym = self.keys.get_column("symbol")
        counts = sym.rle()
        out: dict[str, slice] = {}
        start = 0
        for name, n in zip(counts.struct.field("value"), counts.struct.field("len"), strict=True):
            out[name] = slice(start, start + int(n))
            start += int(n)
        return out

    def to_frame(self) -> pl.DataFrame:
        """Keys plus one float32 column per feature: the saved table."""
        frame = pl.from_arrow(self.to_arrow())
        assert isinstance(frame, pl.DataFrame)
        return frame

    def to_arrow(self) -> pa.Table:
        """The saved table as Arrow (transposed once first: copying contiguous rows is ~5x
        cheaper than gathering strided columns)."""
        return feature_table(self.keys, self.names, np.ascontiguousarray(self.values.T))

    def save(self, path: str | Path) -> Path:
        """Parquet with keys + one column per feature, and ``<path>.schema.json`` beside it."""
        path = Path(path)
        atomic_write(path, self.to_frame().write_parquet)
        write_sidecar(path, self.set_name, self.names, self.params, self.code_hash, self.keys.height)
        return path

    @staticmethod
    def writer(path: str | Path) -> FeatureFileWriter:
        """A writer that appends matrices (groups of symbols) to one file as they are computed."""
        return FeatureFileWriter(Path(path))

    @classmethod
    def load(cls, path: str | Path) -> FeatureMatrix:
        path = Path(path)
        meta = read_json(schema_path(path))
        df = pl.read_parquet(path)
        names = tuple(meta["names"])
        values = np.ascontiguousarray(df.select(names).to_numpy().astype(np.float32, copy=False))
        fm = cls(
            keys=df.drop(names), values=values, names=names, set_name=meta["set"],
            params=meta["params"], code_hash=meta.get("code_hash"),  # absent: an older sidecar
        )
        if fm.schema_hash != meta["schema_hash"]:
            raise ValueError(
                f"{path}: stored schema hash {meta['schema_hash']} != recomputed {fm.schema_hash}"
            )
        return fm


class FeatureFileWriter:
    """Appends FeatureMatrix parts, in key order, to one Parquet file as row groups, so a build
    holds one part in memory; on a clean exit the file is renamed into place and gets the
    sidecar ``FeatureMatrix.save`` writes (same file, same ``load``). Use as a context manager."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows = 0
        self._tmp = temp_path(path)
        self._writer: Any = None
        # the parts already written go to disk while later ones are computed: the closing
        # fsync then waits for the last part only (0.2 s of alpha158's full-panel build before)
        self._fd: int | None = None
        self._flusher: ThreadPoolExecutor | None = None
        self._flushing: Future[None] | None = None
        self._first: _Schema | None = None

    def append(self, fm: FeatureMatrix) -> None:
        """Write one part; every part must carry the first one's schema hash."""
        self._write(fm.to_arrow(), _Schema(fm.set_name, fm.names, dict(fm.params), fm.code_hash))

    def append_table(self, table: pa.Table, fs: FeatureSet) -> None:
        """Write one part that is already a table (``FeatureMatrix.to_arrow``) of the set ``fs``:
        the build's workers make it, so the writer's thread only writes."""
        self._write(table, _Schema(fs.name, fs.names, dict(fs.params), fs.code_hash))

    def _write(self, table: pa.Table, schema: _Schema) -> None:
        import pyarrow.parquet as pq

        if self._first is None:
            self._first = schema
        elif schema.hash != self._first.hash:
            raise ValueError(f"{self.path}: part with schema hash {schema.hash} appended to a "
                             f"file of {self._first.hash}")
        features = table.column_names[-len(schema.names):]
        if tuple(features) != schema.names:
            raise ValueError(f"{self.path}: a part's table ends in columns {features[:6]}..., "
                             f"not the features of {schema.set_name!r}")
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # float features almost never repeat: dictionary encoding them costs ~5x the write;
            # snappy: 0.6x zstd's write time for a file 1.2x the size (alpha158, full panel)
            # statistics (min/max per row group, for filtered reads) on the keys, not on 158
            # float columns nobody filters by: 15% of the write
            keys = table.column_names[:-len(schema.names)]
            self._writer = pq.ParquetWriter(self._tmp, table.schema, compression="snappy",
                                            use_dictionary=["symbol"], write_statistics=keys)
        self._writer.write_table(table)
        self.rows += table.num_rows
        if self._fd is None:
            self._fd = os.open(self._tmp, os.O_RDONLY)
            self._flusher = ThreadPoolExecutor(1, thread_name_prefix="feature-file-sync")
        if self._flushing is None or self._flushing.done():
            assert self._flusher is not None
            self._flushing = self._flusher.submit(os.fdatasync, self._fd)

    def __enter__(self) -> FeatureFileWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if self._writer is not None:
                self._writer.close()
            if self._flusher is not None:
                self._flusher.shutdown(wait=True)
            if exc_type is None and self._fd is not None:
                os.fsync(self._fd)
        finally:
            if self._fd is not None:
                os.close(self._fd)
        if exc_type is not None or self._first is None:
            self._tmp.unlink(missing_ok=True)
            if exc_type is None:
                raise ValueError(f"{self.path}: no feature rows were written")
            return
        os.replace(self._tmp, self.path)
        f = self._first
        write_sidecar(self.path, f.set_name, f.names, f.params, f.code_hash, self.rows)


@dataclass(frozen=True)
class _Schema:
    """What the sidecar records of a file's parts; every part must have the same hash."""

    set_name: str
    names: tuple[str, ...]
    params: dict[str, Any]
    code_hash: str | None

    @cached_property
    def hash(self) -> str:  # compared on every part: computed once
        return schema_hash(self.set_name, self.names, self.params, code=self.code_hash)


def feature_table(keys: pl.DataFrame, names: tuple[str, ...], columns: np.ndarray) -> pa.Table:
    """Keys, then one float32 column per feature from ``columns`` (F, N), rows C-contiguous (no
    copy); features are non-nullable (a missing value is NaN), so Parquet writes no null levels
    for them (a sixth of the write)."""
    import pyarrow as pa

    if (columns.shape != (len(names), keys.height) or columns.dtype != np.float32
            or not columns.flags.c_contiguous):
        raise ValueError(f"feature columns {columns.dtype} {columns.shape} != C-contiguous float32 "
                         f"(features={len(names)}, rows={keys.height})")
    key_table = keys.to_arrow()
    fields = [*key_table.schema, *(pa.field(n, pa.float32(), nullable=False) for n in names)]
    # from_buffers, not pa.array: that one checks for pandas objects and so imports pandas
    # (0.3 s, a tenth of a whole alpha158 build)
    rows = keys.height
    arrays = [*key_table.columns, *(pa.FloatArray.from_buffers(pa.float32(), rows, [None, pa.py_buffer(c)])
                                    for c in columns)]
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def write_sidecar(path: Path, set_name: str, names: tuple[str, ...], params: dict[str, Any],
                  code_hash: str | None, rows: int) -> None:
    """``<path>.schema.json``: what ``FeatureMatrix.load`` checks the Parquet against."""
    meta = {
        "set": set_name,
        "names": list(names),
        "params": params,
        "code_hash": code_hash,
        "schema_hash": schema_hash(set_name, names, params, code=code_hash),
        "rows": rows,
    }
    atomic_write_json(schema_path(path), meta)


def schema_path(path: Path) -> Path:
    return path.with_name(path.name + ".schema.json")
