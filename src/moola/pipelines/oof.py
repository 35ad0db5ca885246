"""The verdict recipe: K time-grouped folds x S seeds, arms scratch / pretrained-frozen /
pretrained-fine-tuned plus baselines, paired differences, and a plain-language answer to
"does pretraining help on this task?". Nothing is tuned on test folds: early stopping uses an
inner validation split carved from each fold's training windows (also overlap-grouped)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
from pydantic import Field, model_validator
from rich.console import Console

from moola.config import Config, config_hash
from moola.datasets import SampleSpans, stratified_group_kfold
from moola.datasets.normalize import Standardizer
from moola.datasets.tasks import LabeledSet, LabeledWindowsData, load_labeled
from moola.evaluation import classification_metrics, run_baselines
from moola.evaluation.comparison import PairedDifference, paired_difference, summarize_arms
from moola.models import build_model, count_parameters, preset_config
from moola.models.config import ModelConfig
from moola.pipelines._progress import frame_table, progress_bar
from moola.refs import resolve_ref
from moola.tracking import Tracker, TrackingOptions
from moola.training import (
    ClassificationObjective,
    FreezeSchedule,
    TensorData,
    TrainConfig,
    Trainer,
    balanced_class_weights,
    seed_everything,
)
from moola.training.checkpoint import atomic_write_json

Arm = Literal["scratch", "pretrained_frozen", "pretrained_finetuned"]
BASELINE_ARMS = ("majority", "logistic", "minirocket")
REPORT_METRICS = ["accuracy", "balanced_accuracy", "macro_f1", "ece"]


class OOFDataConfig(LabeledWindowsData):
    """``labels``: the labeled windows compared over folds."""


class OOFConfig(Config):
    """Arms, folds and seeds of the comparison; training settings shared by every arm."""

    name: str = "oof"
    out_dir: str = "runs"
    data: OOFDataConfig = OOFDataConfig()
    preset: str = "jade_compact"
    model: ModelConfig | None = None
    folds: int = Field(5, ge=2)
    seeds: int = Field(5, ge=1)
    arms: list[Arm] = Field(default_factory=lambda: ["scratch", "pretrained_frozen",
                                                     "pretrained_finetuned"])
    baselines: list[Literal["majority", "logistic", "minirocket"]] = Field(
        default_factory=lambda: list(BASELINE_ARMS))
    pretrained_encoder: str | None = None
    transfer_mode: Literal["full", "forward-only"] = "full"
    freeze_epochs: int = Field(5, ge=0)  # fine-tuned arm: encoder frozen this many epochs first
    encoder_lr_mult: float = Field(0.1, gt=0)  # fine-tuned arm: encoder LR = lr x this
    inner_val: float = Field(0.2, gt=0, lt=0.5)
    label_fractions: list[int] = Field(default_factory=lambda: [25, 50, 100])  # + all labels
    efficiency_seeds: int = Field(2, ge=1)
    train: TrainConfig = TrainConfig(epochs=40, batch_size=32)

    @model_validator(mode="after")
    def _needs_encoder(self) -> OOFConfig:
        if any(a != "scratch" for a in self.arms) and self.pretrained_encoder is None:
            raise ValueError("arms pretrained_* need 'pretrained_encoder' (a pretrain output dir)")
        return self


def _subset(idx: np.ndarray, y: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    """A stratified subset of ``n`` training indices (label-efficiency curve)."""
    if n is None or n >= len(idx):
        return idx
    rng = np.random.default_rng(seed)
    out = []
    for c in np.unique(y[idx]):
        members = idx[y[idx] == c]
        k = max(1, round(n * len(members) / len(idx)))
        out.append(rng.choice(members, size=min(k, len(members)), replace=False))
    return np.sort(np.concatenate(out))


def _inner_split(spans: SampleSpans, idx: np.ndarray, frac: float, seed: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Carve an inner validation set from training indices, overlap-grouped like the folds."""
    k = max(2, round(1 / frac))
    sub = SampleSpans(spans.start[idx], spans.end[idx], group=spans.group[idx],
                      label=spans.label[idx])
    try:
        folds = stratified_group_kfold(sub, sub.label, n_splits=k, seed=seed)
    except ValueError:
        return idx, idx[:0]
    f = folds[0]
    return idx[f.train], idx[f.test]


def _model_cfg(cfg: OOFConfig, n_features: int, n_classes: int) -> ModelConfig:
    return cfg.model or preset_config(cfg.preset, n_features=n_features, n_classes=n_classes)


def fold_normalizer(cfg: OOFConfig, x_train: np.ndarray) -> Standardizer:
    """With a pretrained encoder every arm uses the encoder's normaliser (fitted on the unlabeled
    pool), so arms differ only in their weights; otherwise one fitted on the fold's training
    windows."""
    if cfg.pretrained_encoder is not None:
        from moola.datasets import load_scaler

        path = Path(cfg.pretrained_encoder) / "normalizer.json"
        if path.is_file():
            return load_scaler(path)  # type: ignore[return-value]
    return Standardizer().fit(x_train)


def _check_encoder_schema(encoder_dir: str, schema_hash: str) -> None:
    """Refuse an encoder pretrained on other features before anything runs: every arm and
    baseline applies its normaliser, which would otherwise fail first with a bare feature-count
    error (or, for a set of the same width, run the scratch cells before the refusal)."""
    from moola.models.transfer import IncompatibleEncoderError, read_encoder_dir

    spec, _ = read_encoder_dir(encoder_dir)
    if spec.feature_schema_hash is not None and spec.feature_schema_hash != schema_hash:
        raise IncompatibleEncoderError(
            f"encoder from {encoder_dir} does not fit this data: feature schema hash: source "
            f"{spec.feature_schema_hash} (feature set {spec.feature_set}) != expected {schema_hash}: "
            f"the encoder and its normaliser were pretrained on other features")


def _train_cell(cfg: OOFConfig, arm: str, data: LabeledSet, tr: np.ndarray, va: np.ndarray,
                te: np.ndarray, seed: int, console: Console) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Train one arm on one fold with one seed; return test proba, pointer preds, transfer note."""
    norm = fold_normalizer(cfg, data.x[tr])
    xs = {k: np.ascontiguousarray(norm.transform(data.x[i]), dtype=np.float32)
          for k, i in (("tr", tr), ("va", va), ("te", te))}
    seed_everything(seed)
    mcfg = _model_cfg(cfg, data.x.shape[2], len(data.classes))
    model = build_model(mcfg)
    note = ""
    callbacks = []
    param_groups = None
    tcfg = cfg.train.model_copy(update={"seed": seed})
    if arm != "scratch":
        from moola.models.transfer import param_groups as encoder_param_groups
        from moola.models.transfer import transfer_encoder

        assert cfg.pretrained_encoder is not None
        report = transfer_encoder(model, cfg.pretrained_encoder, cfg.transfer_mode,
                                  expected_schema_hash=data.schema_hash)
        note = str(report)
        names = set(report.transferred_names)
        if arm == "pretrained_frozen":
            for n, p in model.named_parameters():
                if n in names:
                    p.requires_grad_(False)
        else:
            param_groups = encoder_param_groups(model, names, base_lr=tcfg.optimizer.lr,
                                                encoder_lr=tcfg.optimizer.lr * cfg.encoder_lr_mult)
            if cfg.freeze_epochs:
                callbacks.append(FreezeSchedule(names, cfg.freeze_epochs))
    if tcfg.early_stopping is not None and len(va) == 0:
        tcfg = tcfg.model_copy(update={"early_stopping": None})
    w = balanced_class_weights(data.y[tr], len(data.classes)) \
        if tcfg.loss.class_weights == "balanced" else None
    obj = ClassificationObjective(len(data.classes), class_weights=w,
                                  focal_gamma=tcfg.loss.focal_gamma,
                                  label_smoothing=tcfg.loss.label_smoothing,
                                  pointer_weight=tcfg.loss.pointer_weight)

    def td(x: np.ndarray, i: np.ndarray) -> TensorData:
        t = {"x": x, "y": data.y[i]}
        if data.pointers is not None and mcfg.pointer is not None:
            t["pointers"] = data.pointers[i]
        return TensorData(t)

    trainer = Trainer(model, obj, tcfg, callbacks=callbacks, param_groups=param_groups,
                      show_progress=False, console=console)
    trainer.log = lambda _m: None  # type: ignore[method-assign]  # cells are summarised instead
    trainer.fit(td(xs["tr"], tr), td(xs["va"], va) if len(va) else None)
    _, _, col = trainer.evaluate(td(xs["te"], te))
    return col["proba"], col.get("ptr_pred"), note


def run_oof(cfg: OOFConfig, *, console: Console | None = None, show_progress: bool = True,
            tracking: TrackingOptions | None = None) -> Path:
    """All arms x folds x seeds (+ label-efficiency), then the comparison report; one MLflow run
    whose metrics are each arm's means (metrics.json)."""
    with Tracker("oof", tracking, run_name=cfg.name) as tracker:
        return _run_oof(cfg, tracker, console=console, show_progress=show_progress)


def _run_oof(cfg: OOFConfig, tracker: Tracker, *, console: Console | None, show_progress: bool) -> Path:
    from moola.pipelines.oof_report import write_oof_report

    console = console or Console()
    t0 = time.perf_counter()
    if cfg.pretrained_encoder is not None:  # sweep:NAME:best -> the directory, recorded as such
        cfg = cfg.model_copy(update={"pretrained_encoder": resolve_ref(cfg.pretrained_encoder)})
    out = Path(cfg.out_dir) / cfg.name
    out.mkdir(parents=True, exist_ok=True)
    cfg.to_yaml(out / "config.yaml")
    tracker.log_params(cfg.flat())
    tracker.set_tags({"moola.run_dir": str(out.resolve()), "moola.config_hash": config_hash(cfg)})
    data = load_labeled(cfg.data, Path(cfg.out_dir))
    if cfg.pretrained_encoder is not None:
        _check_encoder_schema(cfg.pretrained_encoder, data.schema_hash)
    n = len(data.y)
    mcfg = _model_cfg(cfg, data.x.shape[2], len(data.classes))
    n_params = count_parameters(build_model(mcfg))
    counts = np.bincount(data.y, minlength=len(data.classes))
    console.print(
        f"[bold]{cfg.name}[/]: {n} labeled windows ("
        + ", ".join(f"{c} {k}" for c, k in zip(data.classes, counts, strict=True))
        + f"); {mcfg.name} has {n_params:,} parameters = {n_params / max(n, 1):,.0f} per labeled "
        f"window ({n_params / max(n * (cfg.folds - 1) / cfg.folds, 1):,.0f} per training window)"
    )
    folds = stratified_group_kfold(data.spans, data.y, n_splits=cfg.folds, seed=0)
    fractions: list[int | None] = [f for f in cfg.label_fractions if f < n] + [None]
    jobs = []
    for frac in fractions:
        n_seeds = cfg.seeds if frac is None else min(cfg.seeds, cfg.efficiency_seeds)
        for seed in range(n_seeds):
            for k in range(cfg.folds):
                for arm in cfg.arms:
                    jobs.append((frac, seed, k, arm))
    pred_rows: list[pl.DataFrame] = []
    score_rows: list[dict] = []
    notes: set[str] = set()
    with progress_bar("oof cells", total=len(jobs), enabled=show_progress) as advance:
        for frac, seed, k, arm in jobs:
            f = folds[k]
            train_idx = _subset(f.train, data.y, frac, seed)
            tr, va = _inner_split(data.spans, train_idx, cfg.inner_val, seed)
            te = f.test
            proba, ptr, note = _train_cell(cfg, arm, data, tr, va, te, 1000 * seed + k, console)
            if note:
                notes.add(note)
            _record(pred_rows, score_rows, data, arm, k, seed, frac, te, proba, ptr)
            advance(1)
        # baselines: deterministic given the fold; one score per fold, paired with every seed
        for frac in fractions:
            n_seeds = cfg.seeds if frac is None else min(cfg.seeds, cfg.efficiency_seeds)
            for k, f in enumerate(folds):
                train_idx = _subset(f.train, data.y, frac, 0)
                norm = fold_normalizer(cfg, data.x[train_idx])
                xtr = norm.transform(data.x[train_idx]).astype(np.float32)
                xte = norm.transform(data.x[f.test]).astype(np.float32)
                for b in run_baselines(xtr, data.y[train_idx], xte, data.y[f.test], data.classes,
                                       which=tuple(cfg.baselines), seed=0):
                    for seed in range(n_seeds):
                        _record(pred_rows, score_rows, data, b.name, k, seed, frac, f.test,
                                b.proba_test, None)
    preds = pl.concat(pred_rows, how="diagonal_relaxed")
    scores = pl.DataFrame(score_rows)
    preds.write_parquet(out / "oof_predictions.parquet")
    scores.write_parquet(out / "scores.parquet")
    full = scores.filter(pl.col("labels") == "all")
    summary = summarize_arms(full, [m for m in [*REPORT_METRICS, "pointer_mae", "pointer_hit3"]
                                    if m in full.columns])
    console.print(frame_table(summary, title="per arm, all labels (mean, std over fold x seed)"))
    diffs: list[PairedDifference] = []
    for arm in cfg.arms:
        for ref in ("scratch", *cfg.baselines):
            if arm != ref:
                for m in ("accuracy", "balanced_accuracy", "macro_f1"):
                    diffs.append(paired_difference(full, arm, ref, m))
    verdict = pretraining_verdict(diffs, cfg.arms)
    console.print(f"[bold]verdict:[/] {verdict}")
    collapse = full.filter(pl.col("collapse") != "").select("arm", "fold", "seed", "collapse")
    report = write_oof_report(
        out, cfg=cfg, data_counts=dict(zip(data.classes, counts.tolist(), strict=True)),
        n_params=n_params, summary=summary, scores=scores, diffs=diffs, verdict=verdict,
        collapse=collapse, transfer_notes=sorted(notes), seconds=time.perf_counter() - t0,
    )
    atomic_write_json(out / "verdict.json", {
        "verdict": verdict,
        "differences": [d.__dict__ | {"significant": d.significant} for d in diffs],
        "n_labeled": n, "n_params": n_params, "folds": cfg.folds, "seeds": cfg.seeds,
        "seconds": time.perf_counter() - t0,
    })
    arm_means: dict[str, dict[str, float]] = {}
    for row in summary.iter_rows(named=True):
        arm_means[str(row["arm"])] = {k[: -len("_mean")]: float(v) for k, v in row.items()
                                      if k.endswith("_mean") and v is not None}
    atomic_write_json(out / "metrics.json", {"arms": arm_means, "n_labeled": n,
                                             "seconds": time.perf_counter() - t0})
    tracker.set_tags({"moola.feature_schema_hash": data.schema_hash, "moola.verdict": verdict[:5000]})
    tracker.log_final(out / "metrics.json")
    tracker.log_artifacts(out)
    console.print(f"report: {report}")
    return out


def _record(pred_rows: list[pl.DataFrame], score_rows: list[dict], data: LabeledSet, arm: str,
            fold: int, seed: int, frac: int | None, te: np.ndarray, proba: np.ndarray,
            ptr: np.ndarray | None) -> None:
    y = data.y[te]
    m = classification_metrics(y, proba, data.classes)
    row = {
        "arm": arm, "fold": fold, "seed": seed, "labels": "all" if frac is None else str(frac),
        "n_test": len(te), "accuracy": m["accuracy"], "balanced_accuracy": m["balanced_accuracy"],
        "macro_f1": m["macro_f1"], "ece": m["ece"],
        "collapse": ",".join(map(str, m.get("class_collapse") or [])),
    }
    for c in data.classes:
        row[f"recall_{c}"] = m["per_class"][c]["recall"]
    if ptr is not None and data.pointers is not None:
        err = np.abs(ptr - data.pointers[te])
        row["pointer_mae"] = float(err.mean())
        row["pointer_hit3"] = float((err <= 3).all(1).mean())
    score_rows.append(row)
    df = pl.DataFrame({
        "arm": arm, "fold": fold, "seed": seed, "labels": row["labels"],
        "symbol": data.meta["symbol"][te], "end_ts": data.meta["end_ts"][te],
        "y_true": y, "pred": proba.argmax(1),
        **{f"proba_{c}": proba[:, i] for i, c in enumerate(data.classes)},
    })
    if ptr is not None:
        df = df.with_columns(pointer_start_pred=ptr[:, 0], pointer_end_pred=ptr[:, 1])
    pred_rows.append(df)


def pretraining_verdict(diffs: list[PairedDifference], arms: list[str]) -> str:
    """One plain sentence per pretrained arm vs scratch on balanced accuracy, with the numbers."""
    parts = []
    for arm in arms:
        if arm == "scratch":
            continue
        d = next((x for x in diffs if x.arm == arm and x.reference == "scratch"
                  and x.metric == "balanced_accuracy"), None)
        if d is None or d.n == 0:
            continue
        if d.significant and d.mean > 0:
            word = "HELPS"
        elif d.significant and d.mean < 0:
            word = "HURTS"
        else:
            word = "shows NO significant effect"
        parts.append(f"{arm.replace('_', ' ')} {word}: {d.sentence()}")
    if not parts:
        return "no pretrained arm was run; nothing to conclude about pretraining"
    return " | ".join(parts)
