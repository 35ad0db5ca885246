"""Data pipelines: ingest, validate and feature builds as the CLI and the demo run them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from moola._io import atomic_write_json
from moola.data import (
    FetchResult,
    Format,
    IngestResult,
    Policy,
    Store,
    Timeframe,
    ValidationReport,
    fetch_ohlcv,
    ingest,
    list_input_files,
    mark_gaps,
    parse_columns_mapping,
    validate_bars,
)
from moola.pipelines._progress import progress_bar

if TYPE_CHECKING:
    from moola.features import FeatureMatrix


def run_ingest(
    paths: Sequence[str | Path],
    store_dir: str | Path,
    *,
    fmt: str = "auto",
    symbol: str | None = None,
    timeframe: str | None = None,
    columns: str | None = None,
    policy: Sequence[str] = (),
    show_progress: bool = True,
    delimiter: str | None = None,
) -> IngestResult:
    """Read, validate and merge files into the store, with a progress bar over files."""
    files = list_input_files(paths)
    pol = Policy.from_overrides(policy)
    with progress_bar("reading", total=len(files), enabled=show_progress) as advance:
        return ingest(
            paths, Store(store_dir), fmt=Format(fmt), symbol=symbol,
            timeframe=Timeframe(timeframe) if timeframe else None,
            columns=parse_columns_mapping(columns), policy=pol,
            on_file=lambda _p: advance(1), delimiter=delimiter,
        )


@dataclass(frozen=True)
class StoreValidation:
    reports: dict[Timeframe, ValidationReport]
    json_path: Path


def run_validate(
    store_dir: str | Path, *, json_out: str | Path | None = None, policy: Sequence[str] = ()
) -> StoreValidation:
    """Re-check every timeframe in the store; rejects recorded at ingest count as findings."""
    store = Store(store_dir)
    pol = Policy.from_overrides(policy)
    reports = {}
    for tf in store.timeframes():
        reports[tf] = validate_bars(store.read(tf), tf, store.read_rejects(tf), pol)
    out = Path(json_out) if json_out else Path(store_dir) / "validation.json"
    payload = {tf.value: r.to_dict() for tf, r in reports.items()}
    atomic_write_json(out, payload)
    return StoreValidation(reports=reports, json_path=out)


def load_bars(store_dir: str | Path, timeframe: str | None = None,
              symbols: list[str] | None = None) -> tuple[pl.DataFrame, Timeframe]:
    """Bars of one timeframe with ``gap_before`` marked (calendar = the store's own dates)."""
    store = Store(store_dir)
    tf = Timeframe(timeframe) if timeframe else store.resolve_timeframe(None)
    bars = store.read(tf, symbols)
    return mark_gaps(bars, tf), tf


def run_features_build(
    store_dir: str | Path, set_name: str, out: str | Path, *,
    timeframe: str | None = None, symbols: list[str] | None = None, align: str | None = None,
) -> FeatureMatrix:
    """Compute a feature set over the store and save it with its schema hash beside it.

    ``align`` (sets with that parameter, alpha158): ``bars`` or ``calendar``; None keeps the
    set's default."""
    from moola.features import build_features, get_feature_set

    params = {}
    if align is not None:
        if "align" not in get_feature_set(set_name).params:
            raise ValueError(f"feature set {set_name!r} has no align parameter (alpha158 has); "
                             f"its parameters: {sorted(get_feature_set(set_name).params) or 'none'}")
        params["align"] = align
    bars, _ = load_bars(store_dir, timeframe, symbols)
    fm = build_features(bars, set_name, **params)
    fm.save(out)
    return fm


def run_fetch(
    exchange: str, symbol: str, store_dir: str | Path, *, timeframe: str,
    since: datetime | None, until: datetime | None, limit: int = 1000,
    show_progress: bool = True,
) -> FetchResult:
    """ccxt download into the store, resuming after the last stored bar."""
    with progress_bar(f"fetching {symbol}", total=None, enabled=show_progress) as advance:
        return fetch_ohlcv(
            exchange, symbol, Timeframe(timeframe), Store(store_dir), since=since, until=until,
            limit=limit, progress=lambda n, _total: advance(n),
        )
