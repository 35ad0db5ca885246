"""Shared helpers for the training tests: small sets of REAL windows, seeded models, configs.

* ``ohlc_windows``: 105-bar windows of log(OHLC / previous close) from the bundled S&P 500
  daily bars, labelled by the sign of the next bar's close-to-close return, with pointers =
  (argmax, argmin) of the close inside the window.
* ``direction_windows``: 105-bar windows of the first 31 ``crypto39`` features of the bundled
  BTCUSD 1-minute bars (z-scored per feature), labelled by the sign of the next bar's return.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from _real_data import load_crypto, load_daily
from moola.features import build_features
from moola.models import build_model, preset_config
from moola.training import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
WINDOW = 105
DIRECTION_FEATURES = 31
CLASSIFIER_PRESETS = ("simple_lstm", "jade", "jade_compact")
DIRECTION_PRESETS = ("direction_lstm", "direction_transformer")
ALL_PRESETS = CLASSIFIER_PRESETS + DIRECTION_PRESETS


def _symbol_windows(symbol: str, n: int, offset: int) -> tuple[list, list, list]:
    """``n`` non-overlapping windows of one symbol (a flat next bar is skipped: no direction)."""
    df = load_daily((symbol,))
    o, h, lo, c = (df[k].to_numpy() for k in ("open", "high", "low", "close"))
    x_all = np.log(np.stack([o[1:], h[1:], lo[1:], c[1:]], axis=1) / c[:-1, None])  # (N-1, 4)
    close = c[1:]
    nxt = np.log(c[2:] / c[1:-1])  # return of the bar after row i of x_all
    xs, ys, ptrs = [], [], []
    start = offset
    while len(xs) < n:
        end = start + WINDOW  # exclusive
        if end > len(nxt):
            raise ValueError(f"{symbol}: not enough bars for {n} windows")
        r = nxt[end - 1]
        if r != 0.0:
            xs.append(x_all[start:end])
            ys.append(int(r > 0))
            win = close[start:end]
            ptrs.append((int(np.argmax(win)), int(np.argmin(win))))
            start = end
        else:
            start += 1
    return xs, ys, ptrs


@lru_cache(maxsize=8)
def _ohlc_windows(n: int, symbols: tuple[str, ...], offset: int) -> dict[str, np.ndarray]:
    per = -(-n // len(symbols))
    xs, ys, ptrs = [], [], []
    for sym in symbols:
        a, b, c = _symbol_windows(sym, per, offset)
        xs += a
        ys += b
        ptrs += c
    x = np.stack(xs[:n])
    # standardise per feature over the set (daily log ratios are ~1e-2: an LSTM sees ~0)
    x = (x - x.mean((0, 1))) / x.std((0, 1))
    x = np.ascontiguousarray(x, dtype=np.float32)
    assert np.isfinite(x).all()
    return {"x": x, "y": np.asarray(ys[:n], dtype=np.int64),
            "pointers": np.asarray(ptrs[:n], dtype=np.int64)}


TRAIN_SYMBOLS = ("AAPL", "AMZN", "JPM", "XOM", "JNJ", "PG", "WMT", "IBM")


def ohlc_windows(n: int = 32, *, symbols: tuple[str, ...] = TRAIN_SYMBOLS,
                 offset: int = 0, pointers: bool = False) -> dict[str, np.ndarray]:
    """``n`` real non-overlapping (105, 4) windows (spread over ``symbols``) with next-bar
    direction labels (and optionally close argmax/argmin pointers)."""
    d = _ohlc_windows(n, tuple(symbols), offset)
    out = {"x": d["x"].copy(), "y": d["y"].copy()}
    if pointers:
        out["pointers"] = d["pointers"].copy()
    return out


@lru_cache(maxsize=1)
def _crypto_features() -> tuple[np.ndarray, np.ndarray]:
    """(N, 31) z-scored crypto39 features after their warm-up, and the matching closes."""
    bars = load_crypto(12000)
    fm = build_features(bars, "crypto39")
    v = np.asarray(fm.values[:, :DIRECTION_FEATURES], dtype=np.float64)
    ok = np.isfinite(v).all(1)
    first = int(np.argmax(ok))
    assert ok[first:].all(), "crypto39 features must be finite after their warm-up"
    v = v[first:]
    v = (v - v.mean(0)) / np.where(v.std(0) > 0, v.std(0), 1.0)
    close = bars["close"].to_numpy()[first:]
    return v, close


@lru_cache(maxsize=4)
def _direction_windows(n: int, stride: int, offset: int) -> dict[str, np.ndarray]:
    v, close = _crypto_features()
    xs, ys = [], []
    start = offset
    while len(xs) < n:
        end = start + WINDOW
        if end >= len(v):
            raise ValueError("not enough BTC bars")
        r = np.log(close[end] / close[end - 1])
        if r != 0.0:
            xs.append(v[start:end])
            ys.append(int(r > 0))
        start += stride
    return {"x": np.ascontiguousarray(np.stack(xs), dtype=np.float32),
            "y": np.asarray(ys, dtype=np.int64)}


def direction_windows(n: int = 32, *, stride: int = WINDOW, offset: int = 0) -> dict[str, np.ndarray]:
    """``n`` real (105, 31) crypto feature windows (non-overlapping by default) with next-bar
    direction labels."""
    d = _direction_windows(n, stride, offset)
    return {k: v.copy() for k, v in d.items()}


def windows_for(preset: str, n: int = 32) -> dict[str, np.ndarray]:
    if preset in DIRECTION_PRESETS:
        return direction_windows(n)
    return ohlc_windows(n, pointers=preset in ("jade", "jade_compact"))


def seeded_model(preset: str, seed: int = 0, n_features: int | None = None) -> nn.Module:
    if n_features is None:
        n_features = DIRECTION_FEATURES if preset in DIRECTION_PRESETS else 4
    torch.manual_seed(seed)
    return build_model(preset_config(preset, n_features=n_features))


def quiet_config(**kw: Any) -> TrainConfig:
    """A TrainConfig on CPU, one torch thread, no early stopping; sections may be dicts."""
    base: dict[str, Any] = {"device": "cpu", "early_stopping": None, "epochs": 2, "batch_size": 16,
                            "num_threads": 1}
    base.update(kw)
    return TrainConfig.from_dict(base)


def state_digest(model_or_state: nn.Module | dict[str, torch.Tensor]) -> str:
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def states_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)
