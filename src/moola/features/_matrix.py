"""FeatureMatrix: float32 features plus the keys and schema hash that travel with them."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from moola._io import atomic_write, atomic_write_json, read_json


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

    def save(self, path: str | Path) -> Path:
        """Parquet with keys + one column per feature, and ``<path>.schema.json`` beside it."""
        path = Path(path)
        cols = {n: self.values[:, i] for i, n in enumerate(self.names)}
        df = self.keys.hstack(pl.DataFrame(cols))
        atomic_write(path, df.write_parquet)
        meta = {
            "set": self.set_name,
            "names": list(self.names),
            "params": self.params,
            "code_hash": self.code_hash,
            "schema_hash": self.schema_hash,
            "rows": self.keys.height,
        }
        atomic_write_json(schema_path(path), meta)
        return path

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


def schema_path(path: Path) -> Path:
    return path.with_name(path.name + ".schema.json")
