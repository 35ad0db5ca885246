"""``Predictor``: a run directory rebuilt into the function bars -> probabilities it was trained
to be, and nothing else: same feature set (schema hash checked), same window, same normaliser
statistics, same weights (safetensors), same calibration temperature."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from scipy.special import softmax

from moola.data import REQUIRED_COLUMNS, Store, Timeframe, align_symbols, infer_timeframe, mark_gaps
from moola.datasets.normalize import scaler_from_dict
from moola.datasets.tasks import symbol_ids
from moola.datasets.windows import WindowSet
from moola.features import FeatureMatrix, FeatureSet, compute_features, get_feature_set, serve_features
from moola.inference._serving import ENGINES, SMALL_BATCH, Engine, build_engine
from moola.models import ModelConfig
from moola.training.checkpoint import from_checkpoint, read_config
from moola.training.manifest import Manifest, read_manifest

# A matmul over 1-3 rows takes another CPU kernel than a larger one, and its last bits differ;
# short final batches are padded to this many rows so every window goes through the same path
# (tests/test_min_batch.py checks, on the machine it runs on, that this many rows already give
# a large batch's bits). Where kernels switch is the CPU's: 4 rows sufficed on an AVX2 Xeon,
# an AVX-512 (bf16/fp16) Xeon needed 16; 16 holds on both. Each padded row costs tick time.
MIN_BATCH = 16
BarsSource = pl.DataFrame | Store | str | Path


class IncompatibleBarsError(ValueError):
    """Bars (or this moola's feature code) that are not what the model was trained on."""


def log_proba(proba: np.ndarray) -> np.ndarray:
    """log p, clipped at 1e-12: the logits the run's temperature was fitted on."""
    return np.log(np.clip(proba, 1e-12, 1))


def calibrated(raw: np.ndarray, temperature: float) -> np.ndarray:
    """(N, C) ``softmax(log p / T)``, exactly as the train recipe's TemperatureScaler applies it."""
    return softmax(log_proba(raw).astype(np.float64) / temperature, axis=1)


def head_values(out: Mapping[str, torch.Tensor], model_cfg: ModelConfig) -> np.ndarray:
    """(B, C) class probabilities or (B, H) regression scores from the head the recipe trains
    (classifier, else direction, else regression), computed as the objectives collect them."""
    if model_cfg.classifier is not None:
        return torch.softmax(out["logits"].float(), -1).detach().cpu().numpy()
    if model_cfg.direction is not None:
        p = torch.sigmoid(out["direction"].float()).detach().cpu().numpy()
        return np.stack([1 - p, p], 1)
    if model_cfg.regression is not None:
        return out["regression"].detach().float().cpu().numpy()
    raise ValueError(f"model {model_cfg.name!r} has no classifier, direction or regression head to serve")


def prediction_frame(symbol: pl.Series, ts: pl.Series, values: np.ndarray, *, classes: Sequence[str],
                     temperature: float | None) -> pl.DataFrame:
    """One row per window: ``symbol, ts`` (its last bar), then per class ``proba_<c>``
    (temperature-scaled; the raw value when the run has no temperature) and ``raw_proba_<c>``
    (the model's own probability), or ``score`` (``score_<i>`` for several horizons)."""
    cols: dict[str, pl.Series] = {"symbol": symbol.alias("symbol"), "ts": ts.alias("ts")}
    if classes:
        cal = values if temperature is None else calibrated(values, temperature)
        for k, c in enumerate(classes):
            cols[f"proba_{c}"] = pl.Series(f"proba_{c}", cal[:, k])
        for k, c in enumerate(classes):
            cols[f"raw_proba_{c}"] = pl.Series(f"raw_proba_{c}", values[:, k])
    elif values.shape[1] == 1:
        cols["score"] = pl.Series("score", values[:, 0])
    else:
        for k in range(values.shape[1]):
            cols[f"score_{k}"] = pl.Series(f"score_{k}", values[:, k])
    return pl.DataFrame(cols)


def check_feature_schema(manifest: Manifest, fs: FeatureSet, source: str | Path) -> None:
    """Refuse when this moola's feature set is not the one the run was trained on.

    Directories migrated from ``meta.json`` carry the older hash of names and parameters only;
    they are checked against that (their formulas' code cannot be checked).
    """
    want = manifest.feature_schema_hash
    if want is None:
        return
    migrated = "migrated_from" in manifest.extra
    have = fs.legacy_schema_hash if migrated else fs.schema_hash
    if have == want:
        return
    names = list(fs.names)
    why = ("the names or their order differ" if names != manifest.feature_names
           else "same names and parameters, so the feature code (formulas) changed since training")
    raise IncompatibleBarsError(
        f"{source}: model was trained on {len(manifest.feature_names)} features "
        f"{manifest.feature_names} of {manifest.feature_set} (feature schema {want}), but this "
        f"moola's {fs.name} gives {len(names)} features {names} (feature schema {have}): {why}")


class Predictor:
    """A trained run ready to serve.

    scikit-learn style: ``__init__`` stores options; :meth:`from_dir` (a classmethod) loads the
    learned state, whose attributes end in ``_``. ``required_bars`` is how many bars per symbol
    one prediction needs (the feature set's look-back plus the window): a stream keeps that many.
    ``engine``: the fastest engine single windows may be served by (``onnxruntime``,
    ``torchscript``, ``eager``); one that fails to build or to match the eager model is passed
    over with a warning on the ``moola.inference`` logger.
    """

    run_dir_: Path
    manifest_: Manifest
    feature_set_: FeatureSet
    model_config_: ModelConfig
    model_: torch.nn.Module
    normalizer_: Any  # a fitted Standardizer or RobustScaler, or None
    temperature_: float | None
    classes_: list[str]
    window_: int
    timeframe_: Timeframe | None
    serving_engine_: Engine | None = None  # built on the first small call (serving_engine)

    def __init__(self, *, device: str = "cpu", batch_size: int = 256, engine: str = "onnxruntime") -> None:
        if engine not in ENGINES:
            raise ValueError(f"unknown serving engine {engine!r}; valid engines: {', '.join(ENGINES)}")
        self.device = device
        self.batch_size = batch_size
        self.engine = engine

    @classmethod
    def from_dir(cls, run_dir: str | Path, *, device: str = "cpu", batch_size: int = 256,
                 engine: str = "onnxruntime") -> Predictor:
        """Rebuild a ``moola train`` run directory (``manifest.json``, or an old ``meta.json``).
        ``engine``: the fastest single-window engine to try (``eager``: the eager model only)."""
        self = cls(device=device, batch_size=batch_size, engine=engine)
        run_dir = Path(run_dir)
        m = read_manifest(run_dir)
        if m.window is None:
            raise ValueError(f"{run_dir}: the manifest records no window length; cannot cut windows")
        fs = get_feature_set(m.feature_set)
        check_feature_schema(m, fs, run_dir)
        model_cfg = ModelConfig.from_dict(read_config(run_dir)["model"], source=str(run_dir / "config.yaml"))
        if m.feature_names and model_cfg.n_features != len(m.feature_names):
            raise ValueError(f"{run_dir}: the model takes {model_cfg.n_features} features per bar but "
                             f"the manifest lists {len(m.feature_names)}: {m.feature_names}")
        self.run_dir_ = run_dir
        self.manifest_ = m
        self.feature_set_ = fs
        self.model_config_ = model_cfg
        self.model_ = from_checkpoint(run_dir, map_location=device)
        self.normalizer_ = None if m.normalizer is None else scaler_from_dict(m.normalizer)
        self.temperature_ = m.temperature if m.classes else None
        self.classes_ = list(m.classes)
        self.window_ = int(m.window)
        self.timeframe_ = None if m.timeframe is None else Timeframe(m.timeframe)
        self.serving_engine_ = None
        return self

    @property
    def required_bars(self) -> int:
        """Bars per symbol for one prediction: look-back (warm-up) + window."""
        return self.feature_set_.max_lookback + self.window_

    # ------------------------------------------------------------------------ inputs
    def load_bars(self, source: BarsSource, *, symbols: Sequence[str] | None = None
                  ) -> tuple[pl.DataFrame, Timeframe]:
        """Bars and their timeframe from a store (the run's timeframe and, by default, its
        symbols) or a DataFrame (timeframe from the bar spacing, checked against the run's)."""
        if isinstance(source, pl.DataFrame):
            bars = source if symbols is None else source.filter(pl.col("symbol").is_in(list(symbols)))
            self._check_columns(bars.columns, "bars", adjusted=False)
            bars = bars.sort("symbol", "ts")
            tf = infer_timeframe(bars)
            if self.timeframe_ is not None and tf != self.timeframe_:
                raise IncompatibleBarsError(
                    f"model was trained on {self.timeframe_.value} bars, the bars given are "
                    f"{tf.value} (median spacing)")
            self._check_columns(bars.columns, "bars")
            return bars, tf
        store = source if isinstance(source, Store) else Store(source)
        held = store.timeframes()
        tf = self.timeframe_ if self.timeframe_ is not None else store.resolve_timeframe(None)
        if tf not in held:
            raise IncompatibleBarsError(f"{store.root}: model was trained on {tf.value} bars; the "
                                        f"store holds {[t.value for t in held]}")
        syms = list(symbols) if symbols is not None else (self.manifest_.symbols or None)
        bars = store.read(tf, syms)
        self._check_columns(bars.columns, str(store.root))
        return bars, tf

    def _check_columns(self, columns: Sequence[str], where: str, *, adjusted: bool = True) -> None:
        """The canonical bar columns, and (``adjusted``) adj_close present exactly when it was
        in training."""
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise IncompatibleBarsError(f"{where}: bars lack columns {missing} (have {list(columns)})")
        trained = self.manifest_.bar_columns
        if adjusted and trained and ("adj_close" in trained) != ("adj_close" in columns):
            state = "with" if "adj_close" in trained else "without"
            raise IncompatibleBarsError(
                f"{where}: model was trained on bars {state} adj_close (columns {trained}), the bars "
                f"give {list(columns)}: prices would be adjusted differently from training")

    def features(self, bars: pl.DataFrame, timeframe: Timeframe, *, serving: bool = False) -> FeatureMatrix:
        """The run's feature set on ``bars``, gaps marked as in training; an aligned run's bars
        are first cut to the timestamps all their symbols share, as training cut them.
        ``serving``: the same values through the small-frame path (``serve_features``)."""
        if self.manifest_.aligned:
            bars = align_symbols(bars, timeframe).bars
        compute = serve_features if serving else compute_features
        return compute(mark_gaps(bars, timeframe), self.feature_set_)

    # ---------------------------------------------------------------------- predict
    def predict_windows(self, ws: WindowSet, idx: np.ndarray | None = None) -> np.ndarray:
        """(N, C) raw probabilities or (N, H) scores of the windows ``idx`` (all when None).
        A model with a symbol embedding also reads each window's symbol, as its index in the
        run's symbols (a symbol the run was not trained on is an error naming it).

        Up to :data:`SMALL_BATCH` windows (a serving tick) go one at a time through the serving
        engine (:meth:`serving_engine`), equal to the eager model to ``ENGINE_ATOL`` but not bit
        for bit; more go through the eager model in batches padded to ``MIN_BATCH``, bit for
        bit what evaluation computes whatever else shares their batch."""
        idx = np.arange(len(ws)) if idx is None else np.asarray(idx, dtype=np.int64)
        ids = None
        if self.model_config_.symbol_embedding is not None:  # (len(ws),) int64
            ids = symbol_ids(ws.meta["symbol"], list(self.manifest_.symbols))
        if self.model_.training:  # eval() walks every submodule: not once per serving tick
            self.model_.eval()
        if 0 < len(idx) <= SMALL_BATCH and self.engine != "eager":
            x, sid = self._inputs(ws, idx, ids)
            engine = self.serving_engine((x, sid))
            if engine.name != "eager":
                return np.concatenate([engine.run(x[i:i + 1], None if sid is None else sid[i:i + 1])
                                       for i in range(len(x))])
        parts = [self._eager(*self._inputs(ws, idx[a:a + self.batch_size], ids))
                 for a in range(0, len(idx), self.batch_size)]
        width = len(self.classes_) or len(self.model_config_.regression.horizons
                                          if self.model_config_.regression else [1])
        return np.concatenate(parts) if parts else np.zeros((0, width), dtype=np.float32)

    def serving_engine(self, windows: tuple[np.ndarray, np.ndarray | None] | None = None) -> Engine:
        """The engine single windows are served by, built on first use from ``engine`` on and
        checked against the eager model on ``windows`` (normalised (N, T, F) windows and their
        symbol ids: the first call's own) and on seeded ones; see :func:`build_engine`. A
        server calls it at start-up, so its first tick does not pay the export (0.05-0.8 s).
        Off the CPU the eager model serves (the engines are CPU runtimes)."""
        if self.serving_engine_ is None:
            n_sym = len(self.manifest_.symbols)
            if windows is None:
                windows = (np.zeros((0, self.window_, self.model_config_.n_features), np.float32),
                           None if self.model_config_.symbol_embedding is None else np.zeros(0, np.int64))
            self.serving_engine_ = build_engine(
                self.model_, self.model_config_, window=self.window_, n_symbols=n_sym, eager=self._eager,
                windows=windows, prefer=self.engine if self.device == "cpu" else "eager",
                source=str(self.run_dir_))
        return self.serving_engine_

    def _inputs(self, ws: WindowSet, chunk: np.ndarray, ids: np.ndarray | None
                ) -> tuple[np.ndarray, np.ndarray | None]:
        """The windows ``chunk`` normalised, (B, T, F) float32 contiguous, and their symbol ids."""
        x = ws.batch(chunk)  # (B, T, F) float32
        if self.normalizer_ is not None:
            x = self.normalizer_.transform(x)
        return np.ascontiguousarray(x, dtype=np.float32), None if ids is None else ids[chunk]

    def _eager(self, x: np.ndarray, ids: np.ndarray | None) -> np.ndarray:
        """(B, C) head values of normalised windows through the eager model in one batch, padded
        with copies of the last window to ``MIN_BATCH`` rows (outputs dropped): a big batch's kernels."""
        n = len(x)
        if n < MIN_BATCH:
            x = np.concatenate([x, np.repeat(x[-1:], MIN_BATCH - n, axis=0)])
            ids = None if ids is None else np.concatenate([ids, np.repeat(ids[-1:], MIN_BATCH - n)])
        batch = {"x": torch.from_numpy(x).to(self.device)}
        if ids is not None:
            batch["symbol_id"] = torch.from_numpy(ids).to(self.device)  # (B,)
        with torch.no_grad():
            out = self.model_(batch)
        return head_values(out, self.model_config_)[:n]

    def predict_frame(self, bars: BarsSource, *, symbols: Sequence[str] | None = None,
                      since: datetime | None = None) -> pl.DataFrame:
        """Per (symbol, ts) predictions for every complete window of ``bars`` (ending at or
        after ``since``): ``proba_<class>`` / ``raw_proba_<class>``, or ``score``."""
        frame, tf = self.load_bars(bars, symbols=symbols)
        ws = WindowSet.from_matrix(self.features(frame, tf), self.window_)  # horizon 0, stride 1
        if len(ws) == 0:
            longest = max(frame.group_by("symbol").len()["len"].to_list(), default=0)
            raise ValueError(f"no complete window: a prediction needs {self.required_bars} "
                             f"consecutive bars of a symbol without gaps; the longest symbol has {longest}")
        meta = ws.meta
        keep = np.ones(len(ws), dtype=bool)
        if since is not None:
            keep = (meta["end_ts"] >= since).to_numpy()
        idx = np.flatnonzero(keep)
        values = self.predict_windows(ws, idx)
        sel = pl.Series(idx)
        return prediction_frame(meta["symbol"].gather(sel), meta["end_ts"].gather(sel), values,
                                classes=self.classes_, temperature=self.temperature_)

    def __repr__(self) -> str:
        if not hasattr(self, "manifest_"):
            return f"Predictor(device={self.device!r})"
        m = self.manifest_
        return (f"Predictor({self.run_dir_}: {self.model_config_.name} on {self.window_}-bar "
                f"{m.feature_set} windows, {m.timeframe}, task {m.task}, T={self.temperature_})")
