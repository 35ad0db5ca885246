"""The ranking recipe: prepare the day panel (cached), split by dates, train a ranking model on
day batches through the one Trainer, score every (date, stock) of the test dates, and judge it
beside LightGBM, ridge, an MLP and the same encoder without graph attention on the same rows.

    prepare -> model -> train -> score -> evaluate -> save       (moola rank train)
    prepare -> [arm x seed: train -> score] + baselines -> table  (moola rank compare)
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from rich.console import Console
from torch import nn

from moola._io import atomic_write, atomic_write_json, git_sha, read_json
from moola.data import Store
from moola.datasets.graphs import DayGraphs, build_day_graphs, load_sectors, returns_matrix
from moola.datasets.rank_panel import (
    DateSplit,
    RankBatchSource,
    RankPanel,
    cache_key,
    date_split,
    walk_forward_splits,
)
from moola.datasets.tasks import DataConfig, bundled_dir, resolve_store
from moola.datasets.xsection import Processors, forward_returns, label_horizon_bars
from moola.evaluation.ranking import ranking_metrics
from moola.evaluation.ranking_baselines import FlatRows, fit_ranking_baseline
from moola.features import compute_features
from moola.models import count_parameters
from moola.models.ranking import (
    RankingModel,
    RankingModelConfig,
    build_ranking_model,
    ranking_preset_config,
)
from moola.pipelines._rank_config import RankConfig, RankDataConfig
from moola.pipelines._rank_report import ArmResult
from moola.tracking import MlflowCallback, Tracker, TrackingOptions
from moola.training import (
    Callback,
    FitResult,
    Trainer,
    data_fingerprint,
    run_directory,
    save_weights,
)
from moola.training.manifest import Manifest, write_manifest
from moola.training.ranking import RankingObjective

__all__ = [
    "PreparedRank",
    "RankConfig",
    "RankDataConfig",
    "RankOutcome",
    "apply_processors",
    "flat_rows",
    "load_panel",
    "prepare",
    "process_panel",
    "run_rank_compare",
    "run_rank_evaluate",
    "run_rank_predict",
    "run_rank_train",
    "score_panel",
]

BUNDLED_SECTORS = "sp500_sectors_subset.csv"
SHARED_SECTORS = Path("..") / "shared" / "data" / "sp500_sectors.csv"
SURVIVORSHIP = ("Survivorship bias: the S&P panel's universe is the index membership near the end "
                "of the period (2017), so every backtest on it favours stocks that survived.")


# ---------------------------------------------------------------------------- prepare


@dataclass
class PreparedRank:
    """The panel, its date split, the sectors, and how long preparing them took; the day graphs
    are built on first use (``day_graphs``), by the models that read them only."""

    panel: RankPanel
    split: DateSplit
    folds: list[DateSplit]  # walk-forward folds (empty without walk_forward)
    data: RankDataConfig
    sectors: list[str]
    store_dir: Path
    cache_dir: Path | None
    timings: dict[str, float] = field(default_factory=dict)
    cache_hit: bool = False
    _graphs: DayGraphs | None = field(default=None, repr=False)

    def day_graphs(self) -> DayGraphs:
        """The graphs of ``data.graph`` on the panel's dates, built once (past returns only)."""
        if self._graphs is None:
            t0 = time.perf_counter()
            rets = _returns_on_panel(self.panel, self.store_dir, self.data)
            self._graphs = build_day_graphs(self.data.graph, rets, self.panel.symbols, self.sectors)
            self.timings["graphs_s"] = time.perf_counter() - t0
        return self._graphs


def _store_fingerprint(store: Store) -> str:
    return data_fingerprint(json.dumps(store.partitions(), sort_keys=True, default=str))


def _sectors_path(cfg: RankDataConfig) -> Path:
    if cfg.sectors is not None:
        return Path(cfg.sectors)
    return bundled_dir() / BUNDLED_SECTORS if cfg.store is None else SHARED_SECTORS


def _mask_warmup(keys: pl.DataFrame, values: np.ndarray, max_lookback: int) -> None:
    """NaN on each stock's first ``max_lookback`` rows (in place), so they are never a window's bar."""
    pos = keys.select(pl.int_range(pl.len()).over("symbol")).to_series().to_numpy()
    values[pos < max_lookback] = np.nan


FEATURE_CHUNK = 16  # feature columns processed at a time: bounds memory on a large panel


def apply_processors(configs: Sequence[Any], ts: pl.Series, values: np.ndarray, names: Sequence[str],
                     fit_rows: np.ndarray) -> tuple[np.ndarray, Processors]:
    """(N, C) float32 through the processors, fitted on the rows ``fit_rows`` (bool (N,)) only.

    Every processor works column by column, so the columns go through in chunks of
    ``FEATURE_CHUNK`` (the same result as all at once, a fraction of the memory)."""
    out = np.empty(values.shape, dtype=np.float32)
    parts = []
    keep = pl.Series(fit_rows)
    for a in range(0, len(names), FEATURE_CHUNK):
        cols = list(names[a:a + FEATURE_CHUNK])
        frame = pl.DataFrame({"ts": ts, **{c: values[:, a + j] for j, c in enumerate(cols)}})
        proc = Processors.from_configs(configs, cols).fit(frame.filter(keep))
        out[:, a:a + len(cols)] = proc.transform(frame).select(cols).to_numpy()
        parts.append(proc)
    return out, Processors.concat(parts)


def process_panel(keys: pl.DataFrame, values: np.ndarray, names: Sequence[str], raw: np.ndarray,
                  horizons: Sequence[int], window: int, *, feature_processors: Sequence[Any],
                  label_processors: Sequence[Any], fit_range: tuple[Any, Any], max_lookback: int,
                  meta: dict[str, Any]) -> RankPanel:
    """Features -> processors fitted on the ``fit_range`` dates only -> per-date label
    normalisation; warm-up rows (a stock's first ``max_lookback``) stay NaN so they are never a
    window's bar. ``raw`` (N, H) forward returns stay as they are for evaluation."""
    ts = keys.get_column("ts")
    in_fit = ts.dt.date().is_between(fit_range[0], fit_range[1]).to_numpy()
    feats, fproc = apply_processors(feature_processors, ts, values, names, in_fit)
    _mask_warmup(keys, feats, max_lookback)
    ret_cols = [f"ret_{h}" for h in horizons]
    labels, lproc = apply_processors(label_processors, ts, raw, ret_cols, in_fit)
    meta = {**meta, "feature_processors": fproc.to_dict(), "label_processors": lproc.to_dict(),
            "processor_fit": [str(fit_range[0]), str(fit_range[1])]}
    return RankPanel(keys=keys, features=np.ascontiguousarray(feats), feature_names=tuple(names),
                     labels=labels, labels_raw=np.ascontiguousarray(raw, dtype=np.float32),
                     horizons=tuple(horizons), window=window, meta=meta)


def _processed(cfg: RankDataConfig, bars: pl.DataFrame) -> RankPanel:
    """The configured feature set and forward returns of ``bars``, through ``process_panel``."""
    fs = cfg.features()
    fm = compute_features(bars, fs, timeframe="1d")
    rets = forward_returns(bars, cfg.horizons, entry=cfg.entry)
    if not rets.select("symbol", "ts").equals(fm.keys.select("symbol", "ts")):
        raise RuntimeError("forward_returns rows are not aligned with the feature rows")
    raw = rets.select([f"ret_{h}" for h in cfg.horizons]).to_numpy().astype(np.float32)
    meta = {
        "feature_set": fs.name, "feature_params": dict(fs.params), "feature_code_hash": fs.code_hash,
        "feature_schema_hash": fs.schema_hash, "entry": cfg.entry,
        "label_bars": {str(h): label_horizon_bars(h, cfg.entry) for h in cfg.horizons},
    }
    return process_panel(fm.keys, fm.values, list(fm.names), raw, cfg.horizons, cfg.window,
                         feature_processors=cfg.feature_processors,
                         label_processors=cfg.label_processors, fit_range=cfg.split.train,
                         max_lookback=fs.max_lookback, meta=meta)


def _panel_key(cfg: RankDataConfig, store: Store) -> str:
    return cache_key({
        "store": _store_fingerprint(store), "symbols": cfg.symbols,
        "features": cfg.features().schema_hash, "window": cfg.window,
        "horizons": cfg.horizons, "entry": cfg.entry,
        "fproc": [p.model_dump() for p in cfg.feature_processors],
        "lproc": [p.model_dump() for p in cfg.label_processors],
        "fit": [str(d) for d in cfg.split.train],
    })


def load_panel(cfg: RankDataConfig, *, cache_root: Path, console: Console | None = None
               ) -> tuple[RankPanel, Path, Path | None, dict[str, float], bool]:
    """The prepared panel from its cache when the key matches, else computed (and cached)."""
    store_dir = resolve_store(DataConfig(store=cfg.store, bundled="sp500_daily"), cache_root)
    store = Store(store_dir)
    key = _panel_key(cfg, store)
    cache = None if cfg.cache_dir is None else Path(cfg.cache_dir) / key
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if cache is not None and (RankPanel.cached_meta(cache) or {}).get("key") == key:
        panel = RankPanel.load(cache)
        timings["panel_load_warm_s"] = time.perf_counter() - t0
        return panel, store_dir, cache, timings, True
    bars = store.read("1d", cfg.symbols)
    timings["read_bars_s"] = time.perf_counter() - t0
    panel = _processed(cfg, bars)
    panel.meta["key"] = key
    panel.meta["store"] = str(store_dir)
    timings["panel_build_cold_s"] = time.perf_counter() - t0
    if cache is not None:
        panel.save(cache)
        panel = RankPanel.load(cache)  # train from the memory map, like a warm run
        timings["panel_save_s"] = time.perf_counter() - t0 - timings["panel_build_cold_s"]
    if console is not None:
        console.print(f"prepared panel: {panel.keys.height:,} rows x {panel.n_features} features "
                      f"in {timings['panel_build_cold_s']:.1f} s"
                      + (f" (cached in {cache})" if cache else ""))
    return panel, store_dir, cache, timings, False


def _purge_bars(cfg: RankDataConfig) -> int:
    return max(label_horizon_bars(h, cfg.entry) for h in cfg.horizons)


def prepare(cfg: RankDataConfig, *, cache_root: Path, console: Console | None = None) -> PreparedRank:
    """Panel (cached), date split, walk-forward folds and the sectors."""
    panel, store_dir, cache, timings, hit = load_panel(cfg, cache_root=cache_root, console=console)
    dates = panel.dates
    purge = _purge_bars(cfg)
    split = date_split(dates, train=cfg.split.train, val=cfg.split.val, test=cfg.split.test,
                       purge=purge, embargo=cfg.split.embargo_days)
    folds: list[DateSplit] = []
    wf = cfg.split.walk_forward
    if wf is not None:
        folds = walk_forward_splits(dates, first_test=wf.first_test, step=wf.step, val_days=wf.val_days,
                                    purge=purge, embargo=cfg.split.embargo_days, mode=wf.mode,
                                    train_days=wf.train_days, end=cfg.split.test[1])
    sectors, _ = load_sectors(_sectors_path(cfg), panel.symbols)
    return PreparedRank(panel, split, folds, cfg, sectors, store_dir, cache, timings, hit)


def _returns_on_panel(panel: RankPanel, store_dir: Path, cfg: RankDataConfig) -> np.ndarray:
    """(D, S) daily log returns of adj_close on the panel's dates (past data for the graphs)."""
    bars = Store(store_dir).read("1d", cfg.symbols).select("symbol", "ts", "close", "adj_close")
    calendar = pl.Series("ts", panel.dates).cast(pl.Datetime("ns")).dt.replace_time_zone("UTC")
    out: np.ndarray = returns_matrix(bars, panel.symbols, calendar)
    return out


# ------------------------------------------------------------------------------ model


def resolve_model(cfg: RankConfig, n_features: int) -> RankingModelConfig:
    """The configured model, or the preset sized to the features and horizons (a lags-layout
    preset such as gats_like keeps its fields per step; the panel must hold fields x lags)."""
    if cfg.model is not None:
        model = cfg.model
    else:
        assert cfg.preset is not None
        model = ranking_preset_config(cfg.preset, horizons=tuple(cfg.data.horizons))
        if model.input_layout == "window":
            model = ranking_preset_config(cfg.preset, n_features=n_features,
                                          horizons=tuple(cfg.data.horizons))
    if model.input_layout == "lags":
        fields = int(model.lag_fields or 0)
        if cfg.data.window != 1 or n_features % fields:
            raise ValueError(f"model {model.name!r} reads the lags layout ({fields} fields x lags in one "
                             f"bar): set data.window: 1 and a feature set of {fields} x lags columns "
                             f"(alpha360); got window {cfg.data.window}, {n_features} features")
    elif model.n_features != n_features:
        raise ValueError(f"model.encoder.input_size is {model.n_features} but data.feature_set "
                         f"{cfg.data.feature_set} has {n_features} features")
    return model


def _check_graph(model_cfg: RankingModelConfig, data: RankDataConfig) -> None:
    wants, data_kind = model_cfg.gat.graph, data.graph.kind
    if model_cfg.gat.layers > 0 and wants != "dense" and data_kind != wants:
        raise ValueError(f"model.gat.graph is {wants!r} but data.graph.kind is {data_kind!r}; set "
                         "data.graph.kind to the model's graph (dense, knn, sector, knn+sector)")
    if model_cfg.gat.layers > 0 and model_cfg.gat.edge_dim and not data.graph.edge_attrs:
        raise ValueError(f"model.gat.edge_dim is {model_cfg.gat.edge_dim} but the data has no edge "
                         "attributes (data.graph.edge_attrs: true builds them)")


# ------------------------------------------------------------------------------ train


def sources(cfg: RankConfig, prep: PreparedRank, split: DateSplit, model_cfg: RankingModelConfig
            ) -> tuple[RankBatchSource, RankBatchSource, RankBatchSource]:
    """Train/val/test day sources; graphs are attached only when the model reads them."""
    graphs = prep.day_graphs() if model_cfg.reads_graph else None
    workers = cfg.num_workers if prep.cache_dir is not None else 0

    def make(days: np.ndarray) -> RankBatchSource:
        return RankBatchSource(prep.panel, days, graphs=graphs, num_workers=workers,
                               cache_dir=prep.cache_dir)

    return make(split.train), make(split.val), make(split.test)


def train_model(cfg: RankConfig, prep: PreparedRank, split: DateSplit, model_cfg: RankingModelConfig,
                *, seed: int, run_dir: Path | None, console: Console, show_progress: bool,
                callbacks: Sequence[Callback] = ()) -> tuple[RankingModel, Trainer, FitResult]:
    """One arm, one seed: build, fit with early stopping on validation RankIC, keep the best."""
    _check_graph(model_cfg, cfg.data)
    torch.manual_seed(seed)
    model = build_ranking_model(model_cfg)
    objective = RankingObjective(cfg.data.horizons, cfg.loss, monitor_horizon=cfg.monitor_horizon)
    train_src, val_src, _ = sources(cfg, prep, split, model_cfg)
    tcfg = cfg.train.model_copy(update={"seed": seed})
    trainer = Trainer(model, objective, tcfg, run_dir=run_dir, callbacks=callbacks,
                      show_progress=show_progress, console=console)
    fit = trainer.fit(train_src, val_src)
    return model, trainer, fit


@dataclass
class FitScores:
    """One arm and seed trained on every fold (one fold without walk-forward): the last fold's
    model, each fold's fit, and the out-of-sample scores of all folds together."""

    model: RankingModel
    fits: list[FitResult]
    val_scores: pl.DataFrame
    test_scores: pl.DataFrame

    @property
    def fit(self) -> FitResult:
        return self.fits[-1]


def fit_and_score(cfg: RankConfig, prep: PreparedRank, model_cfg: RankingModelConfig, *, seed: int,
                  run_dir: Path | None, console: Console, show_progress: bool,
                  callbacks: Sequence[Callback] = ()) -> FitScores:
    """Train on each split of ``folds(prep)`` from scratch and score its val and test dates;
    walk-forward folds test on consecutive blocks, so their test scores never overlap."""
    device = _device(cfg)
    bd = cfg.train.eval_batch_size or cfg.train.batch_size
    splits = folds(prep)
    fits, vals, tests = [], [], []
    model: RankingModel | None = None
    for k, split in enumerate(splits):
        if len(splits) > 1:
            console.print(f"walk-forward fold {k + 1}/{len(splits)}: {split.describe(prep.panel.dates)}")
        last = k == len(splits) - 1
        model, _, fit = train_model(cfg, prep, split, model_cfg, seed=seed,
                                    run_dir=run_dir if last else None, console=console,
                                    show_progress=show_progress, callbacks=callbacks)
        _, val_src, test_src = sources(cfg, prep, split, model_cfg)
        vals.append(score_panel(model, val_src, batch_days=bd, device=device))
        tests.append(score_panel(model, test_src, batch_days=bd, device=device))
        fits.append(fit)
    assert model is not None
    return FitScores(model, fits, pl.concat(vals), pl.concat(tests))


def folds(prep: PreparedRank) -> list[DateSplit]:
    """The walk-forward folds when configured, else the one date split."""
    return prep.folds or [prep.split]


@torch.no_grad()
def score_panel(model: nn.Module, source: RankBatchSource, *, batch_days: int, device: torch.device
                ) -> pl.DataFrame:
    """Scores of every present (date, stock) of ``source``: day, symbol, score_h*, ret_h*."""
    model.eval()
    model.to(device)
    panel = source.panel
    H = len(panel.horizons)
    parts: list[dict[str, np.ndarray]] = []
    order = torch.arange(len(source))
    for batch in source.to(device).batches(order, batch_days):
        out = model(batch)["ranking"].float()  # (B, S, H)
        mask = batch["mask"]
        d, s = mask.nonzero(as_tuple=True)
        parts.append({"day": batch["day"][d].cpu().numpy(), "symbol": s.cpu().numpy(),
                      "score": out[d, s].cpu().numpy().reshape(-1, H),
                      "ret": batch["y_raw"][d, s].float().cpu().numpy().reshape(-1, H)})
    return _score_frame(panel, parts)


def _score_frame(panel: RankPanel, parts: list[dict[str, np.ndarray]]) -> pl.DataFrame:
    H = panel.horizons
    if not parts:
        cols: dict[str, Any] = {"day": [], "symbol": []}
        return pl.DataFrame(cols)
    cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    dates = pl.Series(panel.dates[cat["day"]]).cast(pl.Datetime("ns")).dt.date()
    syms = np.asarray(panel.symbols, dtype=object)[cat["symbol"]]
    frame = pl.DataFrame({"day": cat["day"], "date": dates, "symbol": pl.Series(syms, dtype=pl.String)})
    for j, h in enumerate(H):
        frame = frame.with_columns(pl.Series(f"score_{h}", cat["score"][:, j].astype(np.float64)),
                                   pl.Series(f"ret_{h}", cat["ret"][:, j].astype(np.float64)))
    return frame.sort("day", "symbol")


def flat_rows(panel: RankPanel, days: np.ndarray) -> FlatRows:
    """The present (date, stock) rows of ``days`` with the features of their last bar: the
    tabular baselines' rows, exactly those a ranking model scores."""
    end = panel.day_panel.end_rows[days]  # (D', S)
    d, s = np.nonzero(end >= 0)
    rows = end[d, s]
    return FlatRows(X=np.ascontiguousarray(panel.features[rows]), y=panel.labels[rows],
                    y_raw=panel.labels_raw[rows], day=days[d].astype(np.int64), symbol=s.astype(np.int64))


def baseline_scores(panel: RankPanel, model: Any, rows: FlatRows) -> pl.DataFrame:
    """A fitted tabular baseline's scores on ``rows``, in ``score_panel``'s layout."""
    pred = model.predict(rows.X)  # (n, H)
    return _score_frame(panel, [{"day": rows.day, "symbol": rows.symbol, "score": pred, "ret": rows.y_raw}])


# --------------------------------------------------------------------------- evaluate


def evaluate_scores(scores: pl.DataFrame, cfg: RankConfig, *, n_trials: int) -> dict[str, dict[str, Any]]:
    """Per horizon: IC, RankIC, ICIR, long-short after costs, hit rate, deflated Sharpe."""
    out: dict[str, dict[str, Any]] = {}
    for h in cfg.data.horizons:
        frame = scores.select("date", "symbol", pl.col(f"score_{h}").alias("score"),
                              pl.col(f"ret_{h}").alias("ret"))
        ls = cfg.long_short.model_copy(update={"horizon": h})
        out[str(h)] = ranking_metrics(frame, horizon=h, cfg=ls, n_trials=n_trials)
    return out


# ------------------------------------------------------------------------------- save


def rank_manifest(cfg: RankConfig, prep: PreparedRank, model_cfg: RankingModelConfig, n_params: int
                  ) -> Manifest:
    """What rebuilds the inputs of this run and what the model saw."""
    panel = prep.panel
    return Manifest(
        kind="rank_run", feature_set=cfg.data.feature_set, feature_names=list(panel.feature_names),
        feature_schema_hash=str(panel.meta["feature_schema_hash"]), window=cfg.data.window,
        horizon=max(cfg.data.horizons), timeframe="1d", symbols=list(panel.symbols),
        bar_columns=["open", "high", "low", "close", "adj_close", "volume"], task="ranking",
        label=(f"forward returns of adj_close over {cfg.data.horizons} trading days, entry "
               f"{cfg.data.entry}; trained on {[p.kind for p in cfg.data.label_processors]} per date"),
        normalizer={"features": panel.meta["feature_processors"], "labels": panel.meta["label_processors"]},
        embargo_bars=cfg.data.split.embargo_days, data_fingerprint=str(panel.meta["key"]),
        store=str(prep.store_dir), n_params=n_params, n_train=int(prep.split.train.size),
        git_sha=git_sha(), torch_version=torch.__version__,
        extra={"horizons": cfg.data.horizons, "split": prep.split.describe(panel.dates),
               "graph": cfg.data.graph.model_dump(), "model_name": model_cfg.name,
               "survivorship": SURVIVORSHIP},
    )


@dataclass
class RankOutcome:
    run_dir: Path
    metrics: dict[str, Any]
    report: Path | None


def run_rank_train(cfg: RankConfig, *, console: Console | None = None, show_progress: bool = True,
                   callbacks: Sequence[Callback] = (), tracking: TrackingOptions | None = None,
                   report: bool = True, overwrite: bool = False) -> RankOutcome:
    """prepare -> model -> train -> score val and test -> evaluate -> save, one MLflow run.

    A run directory that already holds a run is refused unless ``overwrite`` (replaced when this
    run completes)."""
    console = console or Console()
    final = cfg.run_dir
    with run_directory(final, overwrite=overwrite) as run_dir:
        metrics, test_scores, history = _rank_train(cfg, run_dir, console=console,
                                                    show_progress=show_progress, callbacks=callbacks,
                                                    tracking=tracking, final=final)
        out_report = None
        if report:
            from moola.pipelines._rank_report import write_run_report

            out_report = write_run_report(run_dir, cfg, test_scores, metrics, history)
    _print_summary(console, metrics["test"], cfg.name)
    moved = None if out_report is None else final / out_report.relative_to(run_dir)
    return RankOutcome(final, metrics, moved)


def _rank_train(cfg: RankConfig, run_dir: Path, *, console: Console, show_progress: bool,
                callbacks: Sequence[Callback], tracking: TrackingOptions | None, final: Path
                ) -> tuple[dict[str, Any], pl.DataFrame, list[dict[str, float]]]:
    """The MLflow-recorded part of ``run_rank_train``, written into ``run_dir``."""
    with Tracker("rank", tracking, run_name=cfg.name) as tracker:
        tracker.set_tags({"moola.run_dir": str(final.resolve())})
        t0 = time.perf_counter()
        prep = prepare(cfg.data, cache_root=Path(cfg.out_dir), console=console)
        model_cfg = resolve_model(cfg, prep.panel.n_features)
        resolved = cfg.model_copy(update={"model": model_cfg})
        tracker.log_params(resolved.flat())
        res = fit_and_score(cfg, prep, model_cfg, seed=cfg.train.seed, run_dir=run_dir, console=console,
                            show_progress=show_progress, callbacks=[MlflowCallback(tracker), *callbacks])
        model, fit, val_scores, test_scores = res.model, res.fit, res.val_scores, res.test_scores
        n_params = count_parameters(model)
        n_trials = cfg.n_trials or 1
        test_metrics = evaluate_scores(test_scores, cfg, n_trials=n_trials)
        val_metrics = evaluate_scores(val_scores, cfg, n_trials=n_trials)
        monitor = str(cfg.monitor_horizon or cfg.data.horizons[0])
        metrics: dict[str, Any] = {
            "val_rank_ic": val_metrics[monitor]["rank_ic_mean"],
            "val": val_metrics, "test": test_metrics,
            "best_epoch": fit.best_epoch, "epochs_run": len(fit.history), "fit_seconds": fit.seconds,
            "n_params": n_params, "timings": prep.timings, "cache_hit": prep.cache_hit,
            "split": prep.split.describe(prep.panel.dates), "survivorship": SURVIVORSHIP,
            "folds": [f.describe(prep.panel.dates) for f in prep.folds],
            "warnings": [w for f in res.fits for w in f.warnings], "seconds": time.perf_counter() - t0,
        }
        resolved.to_yaml(run_dir / "config.yaml")
        atomic_write(run_dir / "scores_test.parquet", test_scores.write_parquet)
        atomic_write(run_dir / "scores_val.parquet", val_scores.write_parquet)
        atomic_write_json(run_dir / "metrics.json", metrics)
        save_weights(model, run_dir / "weights.safetensors")
        write_manifest(run_dir, rank_manifest(cfg, prep, model_cfg, n_params))
        tracker.log_final(run_dir / "metrics.json")
        tracker.log_artifacts(run_dir)
    return metrics, test_scores, fit.history


def _print_summary(console: Console, test: dict[str, dict[str, Any]], name: str) -> None:
    for h, m in test.items():
        console.print(f"{name} h={h}: IC {m['ic_mean']:+.4f}  RankIC {m['rank_ic_mean']:+.4f}  "
                      f"ICIR {m['icir']:+.3f}  long-short Sharpe {m['ls_sharpe']:+.2f} (after costs)")


def fit_baseline_scores(name: str, prep: PreparedRank, split: DateSplit, horizons: Sequence[int], *,
                        seed: int) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Fit a tabular baseline on the split's train rows, select on val, score test."""
    panel = prep.panel
    fitted = fit_ranking_baseline(name, flat_rows(panel, split.train), flat_rows(panel, split.val),
                                  horizons, seed=seed)
    return baseline_scores(panel, fitted, flat_rows(panel, split.test)), {**fitted.params,
                                                                           "seconds": fitted.seconds}


# ---------------------------------------------------------------------------- compare


def _arm_models(cfg: RankConfig, model_cfg: RankingModelConfig) -> list[tuple[str, RankingModelConfig]]:
    """The graph model and, when asked for, the same encoder without graph attention."""
    arms = [(model_cfg.name, model_cfg)]
    if "temporal_only" in cfg.baselines and model_cfg.gat.layers > 0:
        ablation = model_cfg.model_copy(update={
            "name": "temporal_only", "gat": model_cfg.gat.model_copy(update={"layers": 0})})
        arms.append(("temporal_only", ablation))
    return arms


def run_rank_compare(cfg: RankConfig, *, console: Console | None = None, show_progress: bool = True,
                     tracking: TrackingOptions | None = None, overwrite: bool = False) -> RankOutcome:
    """Every arm on the same panel, split and rows: neural arms over ``cfg.seeds``, LightGBM and
    ridge once (deterministic), the MLP over the seeds; a table of mean +- std per horizon, paired
    daily-RankIC verdicts against LightGBM and against the no-graph encoder, and the report.
    A directory that already holds a comparison is refused unless ``overwrite``."""
    console = console or Console()
    final = cfg.run_dir
    with run_directory(final, overwrite=overwrite) as out_dir:
        summary, report = _rank_compare(cfg, out_dir, console=console, show_progress=show_progress,
                                        tracking=tracking)
    return RankOutcome(final, summary, final / report.relative_to(out_dir))


def _rank_compare(cfg: RankConfig, out_dir: Path, *, console: Console, show_progress: bool,
                  tracking: TrackingOptions | None) -> tuple[dict[str, Any], Path]:
    """The body of ``run_rank_compare``, written into ``out_dir``."""
    from moola.pipelines._rank_report import comparison_table, paired_verdicts, write_compare_report

    t0 = time.perf_counter()
    prep = prepare(cfg.data, cache_root=Path(cfg.out_dir), console=console)
    model_cfg = resolve_model(cfg, prep.panel.n_features)
    cfg.model_copy(update={"model": model_cfg}).to_yaml(out_dir / "config.yaml")
    horizons = cfg.data.horizons
    neural = _arm_models(cfg, model_cfg)
    tabular = [b for b in cfg.baselines if b in ("lightgbm", "ridge", "mlp")]
    n_trials = cfg.n_trials or (len(neural) + len(tabular))
    device = torch.device("cpu") if cfg.train.device == "cpu" else _device(cfg)
    bd = cfg.train.eval_batch_size or cfg.train.batch_size
    arms: list[ArmResult] = []
    attention: np.ndarray | None = None
    with Tracker("rank-compare", tracking, run_name=cfg.name) as tracker:
        # tabular arms first (minutes), then the neural arms seed by seed, so a comparison cut
        # short still holds every arm at its first seeds (cells/ and scores/ fill as it goes)
        for name in tabular:
            seeds = cfg.seeds if name == "mlp" else cfg.seeds[:1]
            arm = ArmResult(name, "tabular", [], [], [], [])
            for seed in seeds:
                console.print(f"[bold]{name}[/] seed {seed}")
                parts = [fit_baseline_scores(name, prep, split, horizons, seed=seed) for split in folds(prep)]
                scores = pl.concat([p[0] for p in parts])
                params = {**parts[-1][1], "seconds": sum(float(p[1]["seconds"]) for p in parts)}
                arm.seeds.append(seed)
                arm.scores.append(scores)
                arm.metrics.append(evaluate_scores(scores, cfg, n_trials=n_trials))
                arm.seconds.append(float(params.pop("seconds")))
                _save_cell(out_dir, name, seed, scores, arm.metrics[-1], arm.seconds[-1])
                arm.params = params
            arms.append(arm)
        nets = {name: ArmResult(name, "neural", [], [], [], [], {"best_epochs": []}) for name, _ in neural}
        for seed in cfg.seeds:
            for net_name, mcfg in neural:
                arm = nets[net_name]
                console.print(f"[bold]{net_name}[/] seed {seed}")
                res = fit_and_score(cfg, prep, mcfg, seed=seed, run_dir=None, console=console,
                                    show_progress=show_progress)
                model, fit, scores = res.model, res.fit, res.test_scores
                _, _, test_src = sources(cfg, prep, folds(prep)[-1], mcfg)
                arm.seeds.append(seed)
                arm.scores.append(scores)
                arm.metrics.append(evaluate_scores(scores, cfg, n_trials=n_trials))
                arm.seconds.append(fit.seconds)
                _save_cell(out_dir, net_name, seed, scores, arm.metrics[-1], fit.seconds)
                arm.params = {"n_params": count_parameters(model),
                              "best_epochs": [*arm.params["best_epochs"], fit.best_epoch]}
                if attention is None and mcfg.gat.layers > 0:
                    attention = mean_attention(model, test_src, batch_days=bd, device=device)
        arms = [*nets.values(), *arms]
        table = comparison_table(arms, horizons)
        verdicts = paired_verdicts(arms, horizons, model=model_cfg.name)
        summary = {
            "model": model_cfg.name, "horizons": horizons, "n_trials": n_trials,
            "split": prep.split.describe(prep.panel.dates), "timings": prep.timings,
            "folds": [f.describe(prep.panel.dates) for f in prep.folds],
            "cache_hit": prep.cache_hit, "panel": {"rows": prep.panel.keys.height,
                                                   "symbols": len(prep.panel.symbols),
                                                   "dates": len(prep.panel.dates),
                                                   "features": prep.panel.n_features},
            "table": table.to_dicts(), "verdicts": verdicts, "survivorship": SURVIVORSHIP,
            "arms": {a.name: {"seeds": a.seeds, "seconds": a.seconds, "params": a.params,
                              "metrics": a.metrics} for a in arms},
            "seconds": time.perf_counter() - t0,
        }
        atomic_write_json(out_dir / "comparison.json", summary)
        atomic_write(out_dir / "comparison.csv", table.write_csv)
        tracker.log_final(out_dir / "comparison.json")
        report = write_compare_report(out_dir, cfg, arms, table, verdicts, summary, attention,
                                      prep.sectors, prep.panel.symbols)
        tracker.log_artifacts(out_dir)
    for line in verdicts["lines"]:
        console.print(line, highlight=False)
    return summary, report


def _save_cell(out_dir: Path, arm: str, seed: int, scores: pl.DataFrame, metrics: dict[str, Any],
               seconds: float) -> None:
    """One arm x seed as soon as it is done: scores and metrics (a stopped comparison keeps them)."""
    atomic_write(out_dir / "scores" / f"{arm}_seed{seed}.parquet", scores.write_parquet)
    atomic_write_json(out_dir / "cells" / f"{arm}_seed{seed}.json",
                      {"arm": arm, "seed": seed, "seconds": seconds, "test": metrics})


def _device(cfg: RankConfig) -> torch.device:
    from moola.training import resolve_device

    return resolve_device(cfg.train.device)


@torch.no_grad()
def mean_attention(model: RankingModel, source: RankBatchSource, *, batch_days: int,
                   device: torch.device) -> np.ndarray:
    """(S, S) last-layer attention averaged over the source's days (absent pairs count as 0)."""
    model.eval()
    model.to(device)
    S = source.panel.day_panel.n_symbols
    total = np.zeros((S, S), dtype=np.float64)
    n = 0
    for batch in source.to(device).batches(torch.arange(len(source)), batch_days):
        a = model.attention(batch).float()  # (B, S, S)
        total += a.sum(0).cpu().numpy()
        n += a.shape[0]
    return total / max(n, 1)


# -------------------------------------------------------------------- evaluate / predict


def load_run(run_dir: str | Path) -> tuple[RankConfig, RankingModel]:
    """The run's config and its model with the saved weights (strict load)."""
    from moola.training import load_weights

    run_dir = Path(run_dir)
    cfg = RankConfig.from_yaml(run_dir / "config.yaml")
    if cfg.model is None:
        raise ValueError(f"{run_dir / 'config.yaml'} holds no resolved model (not written by "
                         "moola rank train)")
    model = build_ranking_model(cfg.model)
    load_weights(model, run_dir / "weights.safetensors")
    return cfg, model.eval()


def run_rank_evaluate(run_dir: str | Path, *, split: str = "test", console: Console | None = None
                      ) -> dict[str, dict[str, Any]]:
    """Re-score a run on its val or test dates from the cached panel; a test look is recorded."""
    from moola.training.manifest import record_test_use

    if split not in ("val", "test"):
        raise ValueError(f"--split {split!r}: choose val or test")
    console = console or Console()
    run_dir = Path(run_dir)
    cfg, model = load_run(run_dir)
    assert cfg.model is not None
    if cfg.data.split.walk_forward is not None:  # each fold's weights are gone; its scores are kept
        scores = pl.read_parquet(run_dir / f"scores_{split}.parquet")
        console.print(f"walk-forward run: metrics recomputed from {run_dir / f'scores_{split}.parquet'} "
                      "(every fold's out-of-sample scores; only the last fold's weights are saved)")
    else:
        prep = prepare(cfg.data, cache_root=Path(cfg.out_dir), console=console)
        _, val_src, test_src = sources(cfg, prep, prep.split, cfg.model)
        scores = score_panel(model, test_src if split == "test" else val_src,
                             batch_days=cfg.train.eval_batch_size or cfg.train.batch_size,
                             device=_device(cfg))
    metrics = evaluate_scores(scores, cfg, n_trials=cfg.n_trials or 1)
    atomic_write_json(run_dir / f"metrics_{split}.json", metrics)
    if split == "test":
        record_test_use(run_dir, "evaluate")
    _print_summary(console, metrics, cfg.name)
    return metrics


def run_rank_predict(run_dir: str | Path, out: str | Path, *, store: str | None = None,
                     start: str | None = None, console: Console | None = None) -> Path:
    """Per-(date, symbol) scores of a run on a store's bars: the run's features, its fitted
    processors (transform only, nothing refitted) and, for graph models, graphs from these bars."""
    from moola.datasets.xsection import Processors as _P

    console = console or Console()
    run_dir = Path(run_dir)
    cfg, model = load_run(run_dir)
    assert cfg.model is not None
    data = cfg.data if store is None else cfg.data.model_copy(update={"store": store})
    store_dir = resolve_store(DataConfig(store=data.store, bundled="sp500_daily"), Path(cfg.out_dir))
    manifest = read_json(run_dir / "manifest.json")
    bars = Store(store_dir).read("1d", data.symbols)
    fs = data.features()
    if fs.schema_hash != manifest["feature_schema_hash"]:
        raise ValueError(f"{run_dir}: trained on feature schema {manifest['feature_schema_hash']}, this "
                         f"code computes {data.feature_set} as {fs.schema_hash}; retrain the run")
    fm = compute_features(bars, fs, timeframe="1d")
    names = list(fm.names)
    frame = pl.DataFrame({"ts": fm.keys.get_column("ts"), "symbol": fm.keys.get_column("symbol")}).hstack(
        pl.DataFrame(fm.values, schema=names, orient="row"))
    fproc = _P.from_dict(manifest["normalizer"]["features"])
    values = np.ascontiguousarray(fproc.transform(frame).select(names).to_numpy(), dtype=np.float32)
    _mask_warmup(fm.keys, values, fs.max_lookback)
    H = len(data.horizons)
    nan = np.full((fm.keys.height, H), np.nan, dtype=np.float32)
    panel = RankPanel(keys=fm.keys, features=values, feature_names=tuple(names), labels=nan,
                      labels_raw=nan.copy(), horizons=tuple(data.horizons), window=data.window,
                      meta={"feature_set": fs.name})
    days = np.arange(len(panel.dates))
    if start is not None:
        days = days[panel.dates >= np.datetime64(start, "ns").astype(np.int64)]
    graphs = None
    if cfg.model.reads_graph:
        sectors, _ = load_sectors(_sectors_path(data), panel.symbols)
        graphs = build_day_graphs(data.graph, _returns_on_panel(panel, store_dir, data), panel.symbols,
                                  sectors)
    src = RankBatchSource(panel, days, graphs=graphs)
    scores = score_panel(model, src, batch_days=cfg.train.eval_batch_size or cfg.train.batch_size,
                         device=_device(cfg))
    scores = scores.drop([c for c in scores.columns if c.startswith("ret_")] + ["day"])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, scores.write_parquet)
    console.print(f"{scores.height:,} scores over {scores.get_column('date').n_unique()} dates")
    return out
