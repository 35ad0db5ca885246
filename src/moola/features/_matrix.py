"""FeatureMatrix: float32 features plus the keys and schema hash that travel with them."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from moola._io import atomic_write, atomic_write_json, read_json, temp_path


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
        """Keys plus one float32 column per feature: the saved table (transposed once first:
        copying contiguous rows is ~5x cheaper than gathering strided columns)."""
        columns = np.ascontiguousarray(self.values.T)  # (F, N)
        return self.keys.hstack(pl.DataFrame({n: columns[i] for i, n in enumerate(self.names)}))

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
        self._first: FeatureMatrix | None = None

    def append(self, fm: FeatureMatrix, table: Any = None) -> None:
        """Write one part; every part must carry the first one's schema hash. ``table``: the
        part as ``to_frame().to_arrow()``, made by a worker thread (the transpose then runs
        beside the other groups' compute); ``fm`` then only names the set and may hold no rows,
        so a queued part does not keep its values twice."""
        import pyarrow.parquet as pq

        if self._first is None:
            self._first = fm
        elif fm.schema_hash != self._first.schema_hash:
            raise ValueError(f"{self.path}: part with schema hash {fm.schema_hash} appended to a "
                             f"file of {self._first.schema_hash}")
        if table is None:
            table = fm.to_frame().to_arrow()
        elif table.column_names != [*fm.keys.columns, *fm.names]:
            raise ValueError(f"{self.path}: a part's table has columns {table.column_names[:6]}..., "
                             f"not the keys and features of {fm.set_name!r}")
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # float features almost never repeat: dictionary encoding them costs ~5x the write;
            # snappy: 0.6x zstd's write time for a file 1.2x the size (alpha158, full panel)
            # statistics (min/max per row group, for filtered reads) on the keys, not on 158
            # float columns nobody filters by: 15% of the write
            keys = [c for c in fm.keys.columns if c in table.column_names]
            self._writer = pq.ParquetWriter(self._tmp, table.schema, compression="snappy",
                                            use_dictionary=["symbol"], write_statistics=keys)
        self._writer.write_table(table)
        self.rows += table.num_rows

    def __enter__(self) -> FeatureFileWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self._writer is not None:
            self._writer.close()
        if exc_type is not None or self._first is None:
            self._tmp.unlink(missing_ok=True)
            if exc_type is None:
                raise ValueError(f"{self.path}: no feature rows were written")
            return
        fd = os.open(self._tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self._tmp, self.path)
        f = self._first
        write_sidecar(self.path, f.set_name, f.names, f.params, f.code_hash, self.rows)


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
