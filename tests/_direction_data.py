"""The bundled BTC/USD 1-minute bars as a direction task, with the raw returns the evaluation
building blocks need beside the normalised windows: each window's last-bar return (persistence)
and its label's forward return (economics, the leak of the audit tests)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from moola.datasets.tasks import (
    DataConfig,
    PreparedData,
    forward_log_return,
    load_features,
    prepare_data,
    resolve_store,
)
from moola.evaluation import last_bar_return

SPLITS = ("train", "val", "test")


@dataclass
class MinuteTask:
    cfg: DataConfig
    store: Path
    data: PreparedData
    last_return: dict[str, np.ndarray]  # split -> (N,) log(close_e / close_(e-1))
    forward_return: dict[str, np.ndarray]  # split -> (N,) log(close_(e+h) / close_e), the label's return


def btc_minute(cache_root: Path, *, window: int = 10, horizon: int = 1) -> MinuteTask:
    cfg = DataConfig(bundled="btcusd_1m", window=window, horizon=horizon, stride=1, feature_set="ohlc4")
    store = resolve_store(cfg, cache_root)
    data = prepare_data(cfg, store)
    _, bars, _ = load_features(cfg, store)
    fwd = bars.select("symbol", "ts").with_columns(r=pl.Series(forward_log_return(bars, horizon)))
    forward = {}
    for k in SPLITS:
        joined = data.meta[k].join(fwd, left_on=["symbol", "end_ts"], right_on=["symbol", "ts"],
                                   how="left", maintain_order="left")["r"]
        assert joined.null_count() == 0
        forward[k] = joined.to_numpy().astype(np.float64)
    last = {k: last_bar_return(bars, data.meta[k]) for k in SPLITS}
    return MinuteTask(cfg, store, data, last, forward)
