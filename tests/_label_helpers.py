"""Shared by the labeling-page tests: a small store cut from the bundled prices, a JSON client for
the page's API, and the check that a labels file loads with ``LabeledWindows``."""

from __future__ import annotations

import http.client
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import polars as pl

from moola.data import Store, ingest
from moola.datasets import LabeledWindows, load_labels
from moola.datasets.patterns import CLASSES, prepare_bars
from moola.features import build_features

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "data" / "bundled" / "sp500_subset.parquet"
SYMBOLS = ("AAPL", "MSFT", "PG")  # three symbols: ~20 candidate windows, a store in well under a second
WINDOW = 105


def build_store(root: Path) -> Path:
    """A store of three bundled symbols' daily bars (real prices, as the rule labeler reads)."""
    src = root / "subset.parquet"
    pl.read_parquet(BUNDLED).filter(pl.col("symbol").is_in(SYMBOLS)).write_parquet(src)
    ingest([src], Store(root / "store"))
    return root / "store"


def call(port: int, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """One request to the page's server; (status, decoded JSON or text)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    hdrs = {"Content-Type": "application/json"} if data is not None else {}
    hdrs.update(headers or {})
    try:
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        text = resp.read().decode()
        is_json = (resp.getheader("Content-Type") or "").startswith("application/json")
        return resp.status, json.loads(text) if is_json else text
    finally:
        conn.close()


@lru_cache(maxsize=4)
def _matrix(store: Path) -> Any:
    return build_features(prepare_bars(Store(store)), "ohlc4")


def load_written(out: Path, store: Path) -> LabeledWindows:
    """The labels file as training reads it; strict, so any bad row fails the test."""
    fm = _matrix(store)
    labels = load_labels(out, classes=list(CLASSES))
    return LabeledWindows.from_labels(fm, labels, WINDOW, classes=list(CLASSES), strict=True)
