"""The pretrain recipe: unlabeled pool -> masked-autoencoder training -> an encoder directory
that declares its architecture and feature schema (``encoder.json``) and, in ``manifest.json``,
the exact time the pool and the normaliser covered, so ``--pretrained-encoder`` can refuse an
encoder that saw the periods a model is evaluated on (``moola.training.separation``)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
import torch
from pydantic import Field, field_validator, model_validator
from rich.console import Console
from safetensors.torch import save_file

from moola._io import atomic_write, atomic_write_json
from moola.config import Config, config_hash
from moola.data import Store, Timeframe, mark_gaps
from moola.datasets import (
    SampleSpans,
    Standardizer,
    WindowSet,
    assert_no_overlap,
    build_pool,
    load_labels,
)
from moola.datasets.tasks import (
    DailyWindowsData,
    DataConfig,
    calendar_positions,
    default_labels_path,
    resolve_store,
)
from moola.evaluation import plot_learning_curves
from moola.evaluation.data_report import DataReport
from moola.features import FeatureMatrix, build_features
from moola.models import ENCODER_META, ENCODER_WEIGHTS, EncoderSpec, RNNEncoder, RNNEncoderConfig
from moola.pretraining import (
    AugmentConfig,
    Augmenter,
    MaskConfig,
    MaskedAutoencoder,
    MaskedReconstructionObjective,
    Normalize,
    ViewsData,
    pretrain_model,
)
from moola.tracking import MlflowCallback, Tracker, TrackingOptions
from moola.training import (
    Callback,
    FitResult,
    TensorData,
    TrainConfig,
    Trainer,
    data_fingerprint,
    masked_mse,
    resolve_device,
    resolve_precision,
    run_directory,
    seed_everything,
)
from moola.training.manifest import LEGACY_META, Manifest, TimeRange, merge_intervals, write_manifest


class PretrainDataConfig(DailyWindowsData):
    """``labels``: the labeled windows kept OUT of the pool. ``exclusion: time`` (default) drops
    every pool window within ``embargo_bars`` bars of a labeled window on ANY symbol, so the
    encoder never sees a labeled period; ``symbol`` only those on the same symbol (transductive:
    ``train``/``oof --pretrained-encoder`` refuse such an encoder unless allow_transductive)."""

    val_fraction: float = Field(0.1, gt=0, lt=0.5)
    max_pool: int | None = Field(None, ge=100)  # subsample the pool (evenly) for quick runs
    exclusion: Literal["time", "symbol"] = "time"
    embargo_bars: int = Field(5, ge=0)  # union-calendar bars: pool vs labeled windows, pool train vs val
    pool_end: datetime | None = None  # keep only pool windows ending before this time (UTC)


class PretrainConfig(Config):
    """Masked-autoencoder pretraining of a BiLSTM encoder on the unlabeled pool."""

    name: str = "pretrain"
    out_dir: str = "runs"
    data: PretrainDataConfig = PretrainDataConfig()
    encoder: RNNEncoderConfig = RNNEncoderConfig(kind="lstm", input_size=4, hidden=128, layers=2,
                                                 bidirectional=True, dropout=0.1)
    mask: MaskConfig = MaskConfig()
    augment: AugmentConfig = AugmentConfig()
    # precision auto unless given: the masked autoencoder's validation loss is equal in bf16
    # (BENCHMARKS.md, "bf16 by default") and bf16 is 1.4-2.1x faster where the CPU has it
    train: TrainConfig = TrainConfig(epochs=20, batch_size=256, precision="auto")

    @model_validator(mode="after")
    def _precision_auto_unless_given(self) -> PretrainConfig:
        if "precision" not in self.train.model_fields_set:
            self.train = self.train.model_copy(update={"precision": "auto"})
        return self

    @field_validator("encoder")
    @classmethod
    def _per_bar_encoder(cls, v: RNNEncoderConfig) -> RNNEncoderConfig:
        if v.patch != 1:  # refused before training, not when the encoder is saved an hour later
            raise ValueError(f"encoder.patch must be 1 for pretraining (got {v.patch}): the masked "
                             "autoencoder rebuilds every bar and only per-bar encoders transfer")
        return v


def _drop_placeholder_windows(pool: WindowSet, bars: pl.DataFrame) -> WindowSet:
    """Drop windows holding a zero-volume or zero-range bar: placeholder quotes (e.g. BHF's
    pre-listing rows at $0.001) whose huge log ratios would dominate the normaliser and the
    reconstruction loss. The labeler skips the same windows."""
    bad = bars.select((pl.col("volume") <= 0) | (pl.col("high") <= pl.col("low"))).to_series()
    prefix = np.concatenate([[0], np.cumsum(bad.to_numpy().astype(np.int64))])
    keep = prefix[pool.end_rows + 1] == prefix[pool.start_rows]
    return pool.subset(np.flatnonzero(keep))


def _pool_split(spans: SampleSpans, val_fraction: float, embargo: int = 0
                ) -> tuple[np.ndarray, np.ndarray]:
    """Chronological pool split across symbols: the last ``val_fraction`` of end times validate;
    train windows ending within ``embargo`` positions of the first validation start (or after
    it) are purged, so every train window ends more than ``embargo`` before any validation
    window starts."""
    cut = np.quantile(spans.end, 1 - val_fraction)
    val = np.flatnonzero(spans.end > cut)
    if len(val) == 0:
        raise ValueError(f"the pool's {len(spans)} windows all end at one time: no validation split")
    first_val_start = spans.start[val].min()
    train = np.flatnonzero(spans.end + embargo < first_val_start)
    assert_no_overlap(spans, train, val, embargo=embargo)
    return train, val


def _coverage(pool: WindowSet, idx: np.ndarray) -> list[TimeRange]:
    """The merged time coverage (across symbols) of the pool windows ``idx``."""
    meta = pool.meta[idx]
    return merge_intervals(meta.get_column("start_ts").dt.epoch("ns").to_numpy(),
                           meta.get_column("end_ts").dt.epoch("ns").to_numpy())


def run_pretrain(cfg: PretrainConfig, *, console: Console | None = None,
                 show_progress: bool = True, resume: bool = False, overwrite: bool = False,
                 callbacks: Sequence[Callback] = (), tracking: TrackingOptions | None = None) -> Path:
    """Pool -> masked-autoencoder training -> encoder directory, recorded as one MLflow run.

    An encoder directory that already holds a run is refused unless ``resume`` or ``overwrite``
    (replaced when this run completes)."""
    final = Path(cfg.out_dir) / cfg.name
    console = console or Console()
    with run_directory(final, overwrite=overwrite, resume=resume) as work, \
            Tracker("pretrain", tracking, run_name=cfg.name) as tracker:
        tracker.set_tags({"moola.run_dir": str(final.resolve())})
        spec = _run_pretrain(cfg, tracker, work, console=console, show_progress=show_progress,
                             resume=resume, extra_callbacks=callbacks)
    console.print(f"encoder: {final} ({spec})")
    return final


@dataclass
class PoolData:
    """The unlabeled pool split in time, scaled by a normaliser fitted on its training part."""

    fm: FeatureMatrix
    pool: WindowSet
    train_idx: np.ndarray
    val_idx: np.ndarray
    x_train: np.ndarray  # (N, T, F) raw float32
    x_val: np.ndarray
    scaler: Standardizer
    labels_path: Path
    n_labels: int
    store_dir: Path
    fingerprint: str


def _run_pretrain(cfg: PretrainConfig, tracker: Tracker, out: Path, *, console: Console,
                  show_progress: bool, resume: bool, extra_callbacks: Sequence[Callback]) -> str:
    """setup (pool, split, normaliser) -> train -> evaluate -> save (encoder dir, report) into
    ``out``; returns the encoder's one-line description."""
    t0 = time.perf_counter()
    data = _setup_pool(cfg)
    resolved = _save_config(cfg, data, out, tracker)
    model, objective, trainer, fit = _train(resolved, data, out, tracker, console=console,
                                            show_progress=show_progress, resume=resume,
                                            extra_callbacks=extra_callbacks)
    metrics = _evaluate(trainer, objective, data, fit, resolved.augment.views)
    metrics["seconds"] = time.perf_counter() - t0
    spec = _save_encoder(resolved, data, model, out)
    atomic_write_json(out / "metrics.json", metrics)
    _report(out, resolved, fit.history, metrics, model, objective, data.x_val)
    tracker.log_final(out / "metrics.json")
    tracker.log_artifacts(out)
    return (f"val masked MSE {metrics['val_masked_mse']:.4f} vs "
            f"{metrics['val_masked_mse_predict_zero']:.4f} for predicting zero; "
            f"declares {spec.kind} {spec.layers}x{spec.hidden}, "
            f"{'bi' if spec.bidirectional else 'uni'}directional, input {spec.input_size}, "
            f"schema {spec.feature_schema_hash}")


def _setup_pool(cfg: PretrainConfig) -> PoolData:
    """Bars -> features -> every window clear of the labeled periods -> chronological split."""
    d = cfg.data
    store_dir = resolve_store(DataConfig(store=d.store, bundled=d.bundled), Path(cfg.out_dir))
    tf = Timeframe(d.timeframe)
    bars = mark_gaps(Store(store_dir).read(tf), tf)
    fm = build_features(bars, d.feature_set)
    labels_path = Path(d.labels) if d.labels else default_labels_path()
    labels = load_labels(labels_path)
    pool = build_pool(fm, labels, window=d.window, min_pool=0, exclusion=d.exclusion,
                      embargo_bars=d.embargo_bars)
    pool = _drop_placeholder_windows(pool, bars)
    if d.pool_end is not None:
        end = d.pool_end.replace(tzinfo=UTC) if d.pool_end.tzinfo is None else d.pool_end
        pool = pool.subset(np.flatnonzero(
            pool.meta.get_column("end_ts").dt.epoch("ns").to_numpy() < int(end.timestamp() * 1e9)))
    if len(pool) < 2:
        raise ValueError(
            f"the pool holds {len(pool)} windows once the {labels.height} labeled windows of "
            f"{labels_path} ({d.exclusion} exclusion, embargo {d.embargo_bars} bars) and "
            f"data.pool_end={d.pool_end} are applied: nothing to pretrain on")
    if d.max_pool is not None and len(pool) > d.max_pool:
        pool = pool.subset(np.linspace(0, len(pool) - 1, d.max_pool).round().astype(np.int64))
    pos = calendar_positions(fm.keys["ts"].dt.epoch("ns").to_numpy())
    spans = SampleSpans(pos[pool.start_rows], pos[pool.end_rows], group=pool.symbol_codes())
    tr, va = _pool_split(spans, d.val_fraction, d.embargo_bars)
    x_tr = pool.batch(tr)  # (N, T, F) raw float32
    x_va = pool.batch(va)
    scaler = Standardizer().fit(x_tr)
    return PoolData(fm, pool, tr, va, x_tr, x_va, scaler, labels_path, labels.height, store_dir,
                    data_fingerprint(x_tr))


def _save_config(cfg: PretrainConfig, data: PoolData, out: Path, tracker: Tracker) -> PretrainConfig:
    """The resolved config (encoder width = the feature count, precision auto -> what this
    device runs) and the normaliser, logged."""
    enc_cfg = cfg.encoder.model_copy(update={"input_size": data.fm.values.shape[1]})
    precision = resolve_precision(cfg.train.precision, resolve_device(cfg.train.device))
    train = cfg.train.model_copy(update={"precision": precision})
    resolved = cfg.model_copy(update={"encoder": enc_cfg, "train": train})
    data.scaler.save(out / "normalizer.json")
    resolved.to_yaml(out / "config.yaml")
    tracker.log_params(resolved.flat())
    tracker.set_tags({"moola.feature_schema_hash": data.fm.schema_hash,
                      "moola.feature_set": cfg.data.feature_set,
                      "moola.data_fingerprint": data.fingerprint,
                      "moola.config_hash": config_hash(resolved)})
    return resolved


def _train(cfg: PretrainConfig, data: PoolData, out: Path, tracker: Tracker, *, console: Console,
           show_progress: bool, resume: bool, extra_callbacks: Sequence[Callback]
           ) -> tuple[MaskedAutoencoder, MaskedReconstructionObjective, Trainer, FitResult]:
    d, enc_cfg = cfg.data, cfg.encoder
    seed_everything(cfg.train.seed)
    model = pretrain_model(enc_cfg, n_features=data.fm.values.shape[1])
    n_params = sum(p.numel() for p in model.parameters())
    console.print(
        f"[bold]{cfg.name}[/]: masked autoencoder ({enc_cfg.kind} {enc_cfg.layers}x{enc_cfg.hidden}"
        f"{' bidirectional' if enc_cfg.bidirectional else ''}, {n_params:,} parameters) on "
        f"{len(data.train_idx):,} pool windows x {cfg.augment.views} view(s) per epoch, "
        f"{len(data.val_idx):,} validation windows; {cfg.train.precision}; "
        f"mask {cfg.mask.strategy} {cfg.mask.ratio:.0%}; "
        f"pool excludes every window within {d.embargo_bars} bars of the {data.n_labels} labeled "
        f"windows of {data.labels_path.name} "
        + ("on any symbol" if d.exclusion == "time" else "on the same symbol (TRANSDUCTIVE)")
    )
    objective = MaskedReconstructionObjective(cfg.mask, Augmenter(cfg.augment, data.fm.names),
                                              Normalize.from_scaler(data.scaler))
    train_data = ViewsData(TensorData({"x": data.x_train}), cfg.augment.views)
    trainer = Trainer(model, objective, cfg.train, run_dir=out, show_progress=show_progress,
                      console=console, callbacks=[MlflowCallback(tracker), *extra_callbacks])
    fit = trainer.fit(train_data, TensorData({"x": data.x_val}), resume=resume)
    return model, objective, trainer, fit


def _evaluate(trainer: Trainer, objective: MaskedReconstructionObjective, data: PoolData,
              fit: FitResult, views: int) -> dict[str, Any]:
    """Validation masked MSE of the kept model beside the trivial reconstruction (zeros)."""
    val_loss, val_m, _ = trainer.evaluate(TensorData({"x": data.x_val}))
    vb = objective.prepare({"x": torch.from_numpy(data.x_val)}, training=False)
    zero = float(masked_mse(torch.zeros_like(vb["target"]), vb["target"], vb["mask"]))
    return {"val_masked_mse": val_m.get("masked_mse"), "val_loss": val_loss,
            "val_masked_mse_predict_zero": zero,  # the trivial reconstruction to beat
            "val_improvement_ci": _improvement_ci(trainer.model, vb),
            "best_epoch": None if fit.best_epoch is None else fit.best_epoch + 1,
            "epochs_run": len(fit.history), "train_windows": len(data.train_idx),
            "val_windows": len(data.val_idx), "views": views, "warnings": fit.warnings}


def _improvement_ci(model: torch.nn.Module, vb: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Per validation window (time order): predicting zero's masked MSE minus the model's; the
    mean with a moving-block bootstrap 95% CI (overlapping windows are not independent)."""
    from moola.evaluation.resampling import block_bootstrap_ci

    model.eval()
    diffs: list[float] = []
    with torch.no_grad():
        for i in range(0, vb["x"].shape[0], 256):
            part = {k: v[i:i + 256] for k, v in vb.items()}
            rec = model(part)["reconstruction"].float()  # (B, T, F)
            tgt, mask = part["target"], part["mask"]
            for j in range(rec.shape[0]):
                t, m = tgt[j:j + 1], mask[j:j + 1]
                diffs.append(float(masked_mse(torch.zeros_like(t), t, m) - masked_mse(rec[j:j + 1], t, m)))
    d = np.asarray(diffs)
    ci = block_bootstrap_ci(d)
    return {"mean": float(d.mean()), "low": ci.low, "high": ci.high, "windows": int(d.size),
            "block_length": ci.block_length, "method": "moving-block bootstrap, percentile interval"}


def _save_encoder(cfg: PretrainConfig, data: PoolData, model: MaskedAutoencoder, out: Path) -> EncoderSpec:
    """encoder.safetensors + encoder.json (architecture) + manifest.json (what it saw, when)."""
    d = cfg.data
    if not isinstance(model.encoder, RNNEncoder):
        raise TypeError(f"pretraining exports RNN encoders only, got {type(model.encoder).__name__}")
    spec = EncoderSpec.from_encoder(model.encoder, feature_set=d.feature_set,
                                    feature_schema_hash=data.fm.schema_hash, window=d.window)
    state = {k: v.detach().contiguous().cpu() for k, v in model.encoder_state_dict().items()}
    atomic_write(out / ENCODER_WEIGHTS, lambda tmp: save_file(state, str(tmp)))
    atomic_write_json(out / ENCODER_META, spec.to_dict())
    pool, tr = data.pool, data.train_idx
    used = np.concatenate([tr, data.val_idx])
    (out / LEGACY_META).unlink(missing_ok=True)  # a rerun into an old encoder dir: one truth
    write_manifest(out, Manifest(
        kind="encoder", feature_set=d.feature_set, feature_names=list(data.fm.names),
        feature_schema_hash=data.fm.schema_hash, window=d.window, timeframe=d.timeframe,
        symbols=sorted(set(pool.meta[used].get_column("symbol").cast(pl.String).to_list())),
        normalizer=data.scaler.to_dict(), pool_intervals=_coverage(pool, used),
        normalizer_fit=_coverage(pool, tr), embargo_bars=d.embargo_bars,
        labels_excluded=str(data.labels_path), pool_exclusion=d.exclusion,
        data_fingerprint=data.fingerprint, store=str(data.store_dir),
        n_params=sum(p.numel() for p in model.parameters()), n_train=len(tr),
        extra={"pool_windows": len(pool), "pool_windows_used": len(used),
               "val_windows": len(data.val_idx),
               "pool_end": None if d.pool_end is None else d.pool_end.isoformat()},
    ))
    return spec


def _report(out: Path, cfg: PretrainConfig, history: list[dict], metrics: dict,
            model: torch.nn.Module, objective: MaskedReconstructionObjective,
            x_va: np.ndarray) -> None:
    import matplotlib.pyplot as plt

    rep = DataReport(out, title=f"pretraining: {cfg.name}")
    ci, mse = metrics["val_improvement_ci"], metrics["val_masked_mse"]
    zero = metrics["val_masked_mse_predict_zero"]
    better, pct = ci["low"] > 0, 100 * (zero - mse) / zero
    rep.verdict_box([
        f"{'The encoder reconstructs' if better else 'NOT SHOWN: the encoder does not reconstruct'} masked "
        f"steps {'better than' if better else 'beyond noise better than'} predicting zero on "
        f"{ci['windows']:,} validation windows: masked MSE {mse:.4f} vs {zero:.4f} "
        f"({abs(pct):.1f}% {'lower' if pct >= 0 else 'higher'}; per-window difference "
        f"{ci['mean']:+.4f}, 95% CI "
        f"[{ci['low']:+.4f}, {ci['high']:+.4f}], {ci['block_length']}-window blocks).",
        "Whether it helps a classifier is the OOF comparison's question (moola oof), not this page's."],
        loud=not better)
    rep.table(pl.DataFrame([{k: v for k, v in metrics.items() if not isinstance(v, list | dict)}]),
              caption="pretraining summary")
    rep.figure(plot_learning_curves(history), "learning_curves",
               "masked reconstruction loss (masked positions only) per epoch")
    # one validation window: input, mask and reconstruction of the close channel
    batch = objective.prepare({"x": torch.from_numpy(x_va[:1])}, training=False)
    model.eval()
    with torch.no_grad():
        rec = model(batch)["reconstruction"][0].numpy()
    tgt = batch["target"][0].numpy()
    mask = batch["mask"][0].numpy().astype(bool)
    fig, ax = plt.subplots(figsize=(10, 3))
    ax.plot(tgt[:, -1], lw=1, label="target (normalised close log-ratio)")
    ax.plot(rec[:, -1], lw=1, label="reconstruction")
    for t in np.flatnonzero(mask):
        ax.axvspan(t - 0.5, t + 0.5, color="orange", alpha=0.25)
    ax.set_title("a validation window: masked steps shaded")
    ax.legend(fontsize=8)
    rep.figure(fig, "reconstruction", "reconstruction of a validation window (masked steps shaded)")
    rep.write("report.html")
