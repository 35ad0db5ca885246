"""The verdict recipe: K time-blocked folds x S seeds, arms scratch / pretrained-frozen /
pretrained-fine-tuned plus baselines, paired differences over folds, and a plain-language
answer to "does pretraining help on this task?".

Folds are walk-forward time blocks by default (no fold trains on data later than its test
block), purged per symbol and embargoed by ``embargo_bars`` on the bar calendar
(:func:`moola.datasets.splits.purged_time_folds`). Nothing is tuned on test folds: early
stopping uses the last time block of each fold's training windows, purged and embargoed the
same way. Statistics take the fold as the unit (seeds averaged within a fold first, baselines
once per training set) and correct each family of comparisons with Holm
(:mod:`moola.evaluation.comparison`)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from rich.console import Console

from moola._io import atomic_write_json
from moola.config import config_hash
from moola.datasets.normalize import Standardizer
from moola.datasets.splits import Fold, SampleSpans, purged_time_folds
from moola.datasets.tasks import LabeledSet, load_labeled
from moola.evaluation import classification_metrics, run_baselines
from moola.evaluation.comparison import (
    VERDICT_METRIC,
    PairedDifference,
    fold_means,
    paired_difference,
    summarize_arms,
    with_holm,
)
from moola.models import build_model, check_encoder_schema, count_parameters, preset_config
from moola.models.config import ModelConfig
from moola.pipelines._oof_config import BASELINE_ARMS, Arm, Baseline, OOFConfig, OOFDataConfig
from moola.pipelines._oof_report import smallest_fold, write_oof_report
from moola.pipelines._progress import frame_table, progress_bar
from moola.refs import resolve_ref
from moola.tracking import Tracker, TrackingOptions, log_run_summary
from moola.training import (
    ClassificationObjective,
    FreezeSchedule,
    TensorData,
    Trainer,
    balanced_class_weights,
    run_directory,
    seed_everything,
)

__all__ = [
    "BASELINE_ARMS",
    "Arm",
    "Baseline",
    "LabeledSet",
    "OOFConfig",
    "OOFDataConfig",
    "bar_spans",
    "compare_arms",
    "efficiency_counts",
    "fold_layout",
    "load_labeled",
    "oof_folds",
    "pretraining_verdict",
    "run_oof",
]

REPORT_METRICS = ["accuracy", "balanced_accuracy", "macro_f1", "ece"]
PRIMARY = VERDICT_METRIC  # accuracy and macro-F1 are secondary
TESTED_METRICS = ("balanced_accuracy", "accuracy", "macro_f1")
POINTER_TOLERANCE_BARS = 2.0  # a pretrained arm locating the pattern this much worse has not helped


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


def _inner_split(spans: SampleSpans, idx: np.ndarray, frac: float, embargo: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The inner validation set for early stopping: the last time block (about ``frac`` of the
    training windows ``idx``), purged and embargoed from the rest exactly like the folds.
    Empty (no early stopping) when the windows are too few to cut."""
    sub = SampleSpans(spans.start[idx], spans.end[idx],
                      group=None if spans.group is None else spans.group[idx])
    n_val = max(1, round(frac * len(idx)))
    try:
        (f,) = purged_time_folds(sub, 1, scheme="walk_forward", embargo=embargo,
                                 min_train=max(1, len(idx) - n_val))
    except ValueError:
        return idx, idx[:0]
    return idx[f.train], idx[f.test]


def bar_spans(data: LabeledSet) -> SampleSpans:
    """The labeled windows' spans as positions on the union bar calendar, so that purge and
    ``embargo_bars`` count bars (trading days), not nanoseconds."""
    cal = data.calendar
    if cal is None:
        raise ValueError("the labeled set carries no bar calendar: load it with load_labeled")
    start = np.searchsorted(cal, data.spans.start)
    end = np.searchsorted(cal, data.spans.end)
    off = np.flatnonzero((start >= cal.size) | (end >= cal.size)
                         | (cal[np.minimum(start, cal.size - 1)] != data.spans.start)
                         | (cal[np.minimum(end, cal.size - 1)] != data.spans.end))
    if off.size:
        raise ValueError(f"labeled window {int(off[0])} (file row "
                         f"{data.meta['file_row'][int(off[0])]}) starts or ends off the bar calendar")
    return SampleSpans(start, end, group=data.spans.group, label=data.spans.label)


def oof_folds(cfg: OOFConfig, spans: SampleSpans) -> list[Fold]:
    """The outer folds of the verdict (time blocks; see :func:`purged_time_folds`)."""
    return purged_time_folds(spans, cfg.folds, scheme=cfg.fold_scheme, embargo=cfg.embargo_bars,
                             min_train=cfg.min_train if cfg.fold_scheme == "walk_forward" else None)


def fold_layout(data: LabeledSet, spans: SampleSpans, folds: list[Fold], cfg: OOFConfig
                ) -> pl.DataFrame:
    """Per fold: test period, sizes, purge/embargo counts, inner split and class counts."""
    end = data.meta["end_ts"]
    rows = []
    for k, f in enumerate(folds):
        tr, va = _inner_split(spans, f.train, cfg.inner_val, cfg.embargo_bars)
        row = {"fold": k, "test_from": str(end[f.test].min())[:10], "test_to": str(end[f.test].max())[:10],
               "train_to": str(end[f.train].max())[:10], "n_train": len(f.train), "purged": f.purged,
               "embargoed": f.embargoed, "inner_train": len(tr), "inner_val": len(va),
               "n_test": len(f.test)}
        for i, c in enumerate(data.classes):
            row[f"train_{c}"] = int((data.y[f.train] == i).sum())
            row[f"test_{c}"] = int((data.y[f.test] == i).sum())
        rows.append(row)
    return pl.DataFrame(rows)


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
            return load_scaler(path)
    return Standardizer().fit(x_train)


def _train_cell(cfg: OOFConfig, arm: str, data: LabeledSet, tr: np.ndarray, va: np.ndarray,
                te: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray | None, str]:
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
                tcfg = tcfg.stopping_after(cfg.freeze_epochs)
    if tcfg.early_stopping is not None and len(va) == 0:
        tcfg = tcfg.model_copy(update={"early_stopping": None})
    w = balanced_class_weights(data.y[tr], len(data.classes)) \
        if tcfg.loss.class_weights == "balanced" else None
    obj = ClassificationObjective(len(data.classes), class_weights=w,
                                  focal_gamma=tcfg.loss.focal_gamma,
                                  label_smoothing=tcfg.loss.label_smoothing,
                                  pointer_weight=tcfg.loss.pointer_weight,
                                  class_names=[str(c) for c in data.classes])

    def td(x: np.ndarray, i: np.ndarray) -> TensorData:
        t = {"x": x, "y": data.y[i]}
        if data.pointers is not None and mcfg.pointer is not None:
            t["pointers"] = data.pointers[i]
        return TensorData(t)

    # a cell's own lines (early stopping, per-epoch collapse) would flood the console hundreds of
    # times over: cells are summarised instead (collapse per cell in scores.parquet and the report)
    trainer = Trainer(model, obj, tcfg, callbacks=callbacks, param_groups=param_groups,
                      show_progress=False, console=Console(quiet=True))
    trainer.fit(td(xs["tr"], tr), td(xs["va"], va) if len(va) else None)
    _, _, col = trainer.evaluate(td(xs["te"], te))
    return col["proba"], col.get("ptr_pred"), note


def run_oof(cfg: OOFConfig, *, console: Console | None = None, show_progress: bool = True,
            tracking: TrackingOptions | None = None, overwrite: bool = False) -> Path:
    """All arms x folds x seeds (+ label-efficiency), then the comparison report; one MLflow run
    whose metrics are each arm's means (metrics.json). A directory that already holds a run is
    refused unless ``overwrite`` (replaced when this run completes)."""
    console = console or Console()
    final = Path(cfg.out_dir) / cfg.name
    with run_directory(final, overwrite=overwrite) as work, \
            Tracker("oof", tracking, run_name=cfg.name) as tracker:
        tracker.set_tags({"moola.run_dir": str(final.resolve())})
        report = _run_oof(cfg, tracker, work, console=console, show_progress=show_progress)
    console.print(f"report: {final / report.relative_to(work)}")
    return final


@dataclass
class OOFSetup:
    """Everything the cells share: resolved config, labeled windows, folds and their layout."""

    cfg: OOFConfig
    out: Path
    data: LabeledSet
    spans: SampleSpans
    folds: list[Fold]
    layout: pl.DataFrame
    n_params: int
    counts: np.ndarray
    fractions: list[int | None]
    dropped: list[int]  # configured label counts not fewer than the smallest fold's training part
    transductive: str | None


@dataclass
class OOFResults:
    """Per-cell scores reduced to the fold unit, the Holm-corrected comparisons and the verdict."""

    preds: pl.DataFrame
    scores: pl.DataFrame
    per_fold: pl.DataFrame
    summary: pl.DataFrame
    diffs: list[PairedDifference]
    efficiency: list[PairedDifference]
    best_baseline: str | None
    verdict: str
    collapse: pl.DataFrame
    notes: list[str]


def _run_oof(cfg: OOFConfig, tracker: Tracker, out: Path, *, console: Console, show_progress: bool
             ) -> Path:
    """setup (labels, encoder checks, folds) -> train (every cell) -> evaluate -> save into
    ``out``; returns the report's path."""
    t0 = time.perf_counter()
    run = _setup(cfg, tracker, out, console)
    pred_rows, score_rows, notes = _train_cells(run, show_progress=show_progress)
    results = _evaluate(run, pred_rows, score_rows, notes, console)
    return _save(run, results, tracker, t0)


def _setup(cfg: OOFConfig, tracker: Tracker, out: Path, console: Console) -> OOFSetup:
    if cfg.pretrained_encoder is not None:  # sweep:NAME:best -> the directory, recorded as such
        cfg = cfg.model_copy(update={"pretrained_encoder": resolve_ref(cfg.pretrained_encoder)})
    cfg.to_yaml(out / "config.yaml")
    tracker.log_params(cfg.flat())
    tracker.set_tags({"moola.config_hash": config_hash(cfg)})
    data = load_labeled(cfg.data, Path(cfg.out_dir))
    transductive = None
    if cfg.pretrained_encoder is not None:
        from moola.datasets.tasks import default_labels_path
        from moola.training.separation import check_encoder_separation, evaluated_intervals

        check_encoder_schema(cfg.pretrained_encoder, data.schema_hash)
        # every labeled window is a test window in some fold: the encoder must not have seen them
        transductive = check_encoder_separation(
            cfg.pretrained_encoder, evaluated_intervals(data.meta),
            allow_transductive=cfg.allow_transductive, what="labeled (test-fold)",
            labels=cfg.data.labels or str(default_labels_path()))
        if transductive:
            console.print(transductive, style="bold red", highlight=False, markup=False)
    n = len(data.y)
    mcfg = _model_cfg(cfg, data.x.shape[2], len(data.classes))
    n_params = count_parameters(build_model(mcfg))
    counts = np.bincount(data.y, minlength=len(data.classes))
    spans = bar_spans(data)
    folds = oof_folds(cfg, spans)
    layout = fold_layout(data, spans, folds, cfg)
    n_train = float(np.mean(layout["n_train"].to_numpy()))
    console.print(
        f"[bold]{cfg.name}[/]: {n} labeled windows ("
        + ", ".join(f"{c} {k}" for c, k in zip(data.classes, counts, strict=True))
        + f"); {mcfg.name} has {n_params:,} parameters = {n_params / max(n, 1):,.0f} per labeled "
        f"window ({n_params / max(n_train, 1):,.0f} per training window of a fold, on average)"
    )
    console.print(frame_table(layout.select("fold", "test_from", "test_to", "n_train", "purged",
                                            "embargoed", "inner_val", "n_test", *[
                                                f"test_{c}" for c in data.classes]),
                              title=f"{cfg.folds} {cfg.fold_scheme} folds, embargo "
                                    f"{cfg.embargo_bars} bars"))
    fractions, dropped = efficiency_counts(cfg.label_fractions, layout)
    if dropped:
        k, smallest = smallest_fold(layout)
        console.print(
            f"label efficiency: dropped {', '.join(map(str, dropped))} labels: not fewer than the "
            f"smallest fold's training part ({smallest} windows, fold {k}): that fold cannot draw "
            "so many, and its point would silently be all its windows", highlight=False)
    return OOFSetup(cfg, out, data, spans, folds, layout, n_params, counts, fractions, dropped,
                    transductive)


def efficiency_counts(label_counts: Sequence[int], layout: pl.DataFrame
                      ) -> tuple[list[int | None], list[int]]:
    """The label counts every fold can really subsample (fewer than the smallest fold's training
    part) plus ``None`` (all labels), and the configured counts dropped for not being so."""
    _, smallest = smallest_fold(layout)
    kept: list[int | None] = [c for c in label_counts if c < smallest]
    return [*kept, None], [c for c in label_counts if c >= smallest]


def _train_cells(run: OOFSetup, *, show_progress: bool
                 ) -> tuple[list[pl.DataFrame], list[dict], set[str]]:
    """Every (label fraction, seed, fold, arm) cell, then the deterministic baselines."""
    cfg, data, folds = run.cfg, run.data, run.folds
    jobs = []
    for frac in run.fractions:
        n_seeds = cfg.seeds if frac is None else cfg.efficiency_seeds
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
            tr, va = _inner_split(run.spans, train_idx, cfg.inner_val, cfg.embargo_bars)
            te = f.test
            proba, ptr, note = _train_cell(cfg, arm, data, tr, va, te, 1000 * seed + k)
            if note:
                notes.add(note)
            _record(pred_rows, score_rows, data, arm, k, seed, frac, len(tr), te, proba, ptr)
            advance(1)
        # baselines are deterministic given their training set: once per fold with all labels,
        # once per (fold, label subset) on the efficiency curve, never once per model seed
        for frac in run.fractions:
            for seed in range(1 if frac is None else cfg.efficiency_seeds):
                for k, f in enumerate(folds):
                    train_idx = _subset(f.train, data.y, frac, seed)
                    norm = fold_normalizer(cfg, data.x[train_idx])
                    xtr = norm.transform(data.x[train_idx]).astype(np.float32)
                    xte = norm.transform(data.x[f.test]).astype(np.float32)
                    for b in run_baselines(xtr, data.y[train_idx], xte, data.y[f.test],
                                           data.classes, which=tuple(cfg.baselines), seed=0):
                        _record(pred_rows, score_rows, data, b.name, k, seed, frac,
                                len(train_idx), f.test, b.proba_test, None)
    return pred_rows, score_rows, notes


def _evaluate(run: OOFSetup, pred_rows: list[pl.DataFrame], score_rows: list[dict], notes: set[str],
              console: Console) -> OOFResults:
    """Seeds averaged within folds, arms summarised, paired fold differences, the verdict."""
    cfg = run.cfg
    preds = pl.concat(pred_rows, how="diagonal_relaxed")
    scores = pl.DataFrame(score_rows)
    metrics = [m for m in [*REPORT_METRICS, "pointer_mae", "pointer_hit3"] if m in scores.columns]
    per_fold = fold_means(scores, [*metrics, "n_train"])  # n_train: the seeds' mean training windows
    full = per_fold.filter(pl.col("labels") == "all")
    summary = summarize_arms(full, metrics)
    console.print(frame_table(summary, title="per arm, all labels (mean, std over folds of the "
                                             "seed-averaged fold scores)"))
    diffs, efficiency, best_baseline = compare_arms(cfg, per_fold, run.fractions)
    verdict = pretraining_verdict(diffs, cfg.arms, best_baseline, n_folds=len(run.folds),
                                  scheme=cfg.fold_scheme)
    console.print(f"[bold]verdict:[/] {verdict}")
    collapse = scores.filter((pl.col("labels") == "all") & (pl.col("collapse") != "")).select(
        "arm", "fold", "seed", "collapse")
    return OOFResults(preds, scores, per_fold, summary, diffs, efficiency, best_baseline, verdict,
                      collapse, sorted(notes))


def _save(run: OOFSetup, res: OOFResults, tracker: Tracker, t0: float) -> Path:
    """Tables, report, folds.json, verdict.json and metrics.json; logged to the tracker."""
    cfg, data, out, folds = run.cfg, run.data, run.out, run.folds
    n = len(data.y)
    res.preds.write_parquet(out / "oof_predictions.parquet")
    res.scores.write_parquet(out / "scores.parquet")
    res.per_fold.write_parquet(out / "fold_scores.parquet")
    report = write_oof_report(
        out, cfg=cfg, data_counts=dict(zip(data.classes, run.counts.tolist(), strict=True)),
        n_params=run.n_params, summary=res.summary, per_fold=res.per_fold, layout=run.layout,
        diffs=res.diffs, efficiency=res.efficiency, best_baseline=res.best_baseline,
        verdict=res.verdict, collapse=res.collapse, transfer_notes=res.notes,
        seconds=time.perf_counter() - t0, transductive=run.transductive, dropped_counts=run.dropped,
    )
    atomic_write_json(out / "folds.json", {
        "scheme": cfg.fold_scheme, "embargo_bars": cfg.embargo_bars, "min_train": cfg.min_train,
        "folds": [f.to_dict() | {"layout": row} for f, row in
                  zip(folds, run.layout.iter_rows(named=True), strict=True)],
    })

    def _rec(d: PairedDifference) -> dict:
        return dataclasses.asdict(d) | {"significant": d.significant, "min_p": d.min_p}

    atomic_write_json(out / "verdict.json", {
        "verdict": res.verdict, "transductive": run.transductive, "primary_metric": PRIMARY,
        "best_baseline": res.best_baseline, "fold_scheme": cfg.fold_scheme,
        "embargo_bars": cfg.embargo_bars,
        "differences": [_rec(d) for d in res.diffs], "efficiency": [_rec(d) for d in res.efficiency],
        "n_labeled": n, "n_tested": int(sum(len(f.test) for f in folds)), "n_params": run.n_params,
        "folds": cfg.folds, "seeds": cfg.seeds, "efficiency_seeds": cfg.efficiency_seeds,
        "label_counts": [f for f in run.fractions if f is not None], "label_counts_dropped": run.dropped,
        "seconds": time.perf_counter() - t0,
    })
    arm_means: dict[str, dict[str, float]] = {}
    for row in res.summary.iter_rows(named=True):
        arm_means[str(row["arm"])] = {k[: -len("_mean")]: float(v) for k, v in row.items()
                                      if k.endswith("_mean") and v is not None}
    atomic_write_json(out / "metrics.json", {"arms": arm_means, "n_labeled": n,
                                             "seconds": time.perf_counter() - t0})
    tracker.set_tags({"moola.feature_schema_hash": data.schema_hash,
                      "moola.verdict": res.verdict[:5000]})
    tracker.log_final(out / "metrics.json")
    log_run_summary(tracker, out)  # headline: the best model arm vs the best baseline arm
    tracker.log_artifacts(out)
    return report


def _record(pred_rows: list[pl.DataFrame], score_rows: list[dict], data: LabeledSet, arm: str,
            fold: int, seed: int, frac: int | None, n_train: int, te: np.ndarray,
            proba: np.ndarray, ptr: np.ndarray | None) -> None:
    y = data.y[te]
    m = classification_metrics(y, proba, data.classes)
    row = {
        "arm": arm, "fold": fold, "seed": seed, "labels": "all" if frac is None else str(frac),
        "n_train": n_train, "n_test": len(te), "accuracy": m["accuracy"],
        "balanced_accuracy": m["balanced_accuracy"],
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


def compare_arms(cfg: OOFConfig, per_fold: pl.DataFrame, fractions: list[int | None]
                 ) -> tuple[list[PairedDifference], list[PairedDifference], str | None]:
    """The verdict's comparisons (all labels) and the label-efficiency curve's, each metric's
    family Holm-corrected; and the best baseline (highest mean fold score on the primary
    metric: the strongest reference the model arms must beat)."""
    full = per_fold.filter(pl.col("labels") == "all")
    present = [b for b in cfg.baselines if full.filter(pl.col("arm") == b).height]
    best = max(present, key=lambda b: float(np.mean(full.filter(pl.col("arm") == b)[PRIMARY]
                                                    .to_numpy())), default=None)
    pre: list[str] = [a for a in cfg.arms if a != "scratch"]
    pairs: list[tuple[str, str]] = [(a, "scratch") for a in pre if "scratch" in cfg.arms]
    if best is not None:
        pairs += [(a, best) for a in cfg.arms]
    diffs: list[PairedDifference] = []
    for m in TESTED_METRICS:
        diffs += with_holm([paired_difference(full, a, r, m) for a, r in pairs],
                           f"verdict: {m}, all labels")
    if "pointer_mae" in full.columns and "scratch" in cfg.arms and full["pointer_mae"].drop_nulls().len():
        # how well each arm locates the pattern (bars of error, lower is better), vs scratch
        diffs += with_holm([paired_difference(full, a, "scratch", "pointer_mae") for a in pre],
                           "verdict: pointer_mae, all labels")
    eff_pairs: list[tuple[str, str]] = [(a, "scratch") for a in pre if "scratch" in cfg.arms]
    if best is not None and "scratch" in cfg.arms:
        eff_pairs.append(("scratch", best))
    efficiency = with_holm(
        [paired_difference(per_fold, a, r, PRIMARY, labels=str(f))
         for f in fractions if f is not None for a, r in eff_pairs],
        f"label efficiency: {PRIMARY}, {', '.join(str(f) for f in fractions if f is not None)} labels")
    return diffs, efficiency, best


def pretraining_verdict(diffs: Sequence[PairedDifference], arms: Sequence[str],
                        best_baseline: str | None,
                        *, n_folds: int, scheme: str = "walk_forward") -> str:
    """First line: does a pretrained arm beat scratch and the best baseline (Holm-adjusted,
    primary metric, all labels) without locating the pattern worse than scratch (pointer error,
    when the task has pointers)? Then one line per pretrained arm with the numbers."""
    pre = [a for a in arms if a != "scratch"]
    if not pre:
        return "no pretrained arm was run; nothing to conclude about pretraining"

    def find(arm: str, ref: str | None) -> PairedDifference | None:
        return next((d for d in diffs if d.arm == arm and d.reference == ref
                     and d.metric == PRIMARY and d.labels == "all"), None)

    def beats(d: PairedDifference | None) -> bool:
        return d is not None and d.folds > 0 and d.significant and d.mean > 0

    def short(d: PairedDifference | None, ref: str) -> str:
        if d is None or d.folds == 0:
            return f"vs {ref}: not compared"
        ph = "n/a" if d.p_holm is None else f"{d.p_holm:.3g}"
        return (f"vs {ref} {d.mean:+.3f} (95% {d.ci_method} CI {d.ci_low:+.3f} .. "
                f"{d.ci_high:+.3f}, Holm p={ph})")

    def pointer(arm: str) -> PairedDifference | None:
        return next((d for d in diffs if d.arm == arm and d.reference == "scratch"
                     and d.metric == "pointer_mae" and d.labels == "all" and d.folds > 0), None)

    def locates_worse(arm: str) -> bool:
        """Mean pointer error over folds more than the tolerance above scratch's (few folds cannot
        make 40 bars significant, and a consistent half bar is not worth a NO)."""
        d = pointer(arm)
        return d is not None and d.mean > POINTER_TOLERANCE_BARS

    metric = PRIMARY.replace("_", " ")
    refs = "scratch" + (f" and the best baseline ({best_baseline})" if best_baseline else "")
    scoring = [a for a in pre if beats(find(a, "scratch"))
               and (best_baseline is None or beats(find(a, best_baseline)))]
    winners = [a for a in scoring if not locates_worse(a)]
    mislocating = [a for a in scoring if locates_worse(a)]
    worse = [a for a in pre if (d := find(a, "scratch")) is not None and d.significant and d.mean < 0]
    if winners:
        head = (f"YES: {', '.join(a.replace('_', ' ') for a in winners)} beats {refs} on "
                f"{metric} at Holm-adjusted p < 0.05 over {n_folds} {scheme} folds")
    else:
        head = (f"NO: no pretrained arm beats {refs} on {metric} at Holm-adjusted p < 0.05 over "
                f"{n_folds} {scheme} folds")
    if mislocating:
        head += (f"; {', '.join(a.replace('_', ' ') for a in mislocating)} beats {refs} on {metric} "
                 f"but locates the pattern worse than scratch (mean pointer error more than "
                 f"{POINTER_TOLERANCE_BARS:g} bars higher): not counted as help")
    if worse:
        head += f"; {', '.join(a.replace('_', ' ') for a in worse)} is significantly WORSE than scratch"
    lines = [head]
    for a in pre:
        parts = [short(find(a, "scratch"), "scratch")]
        if best_baseline:
            parts.append(short(find(a, best_baseline), best_baseline))
        if (d := pointer(a)) is not None:
            ph = "n/a" if d.p_holm is None else f"{d.p_holm:.3g}"
            parts.append(f"pointer error vs scratch {d.mean:+.1f} bars (95% {d.ci_method} CI "
                         f"{d.ci_low:+.1f} .. {d.ci_high:+.1f}, Holm p={ph})")
        lines.append(f"{a.replace('_', ' ')}: " + "; ".join(parts))
    fam = [d for d in diffs if d.metric == PRIMARY and d.labels == "all"]
    if fam:
        floor = min(1.0, len(fam) * fam[0].min_p)
        if floor >= 0.05:
            lines.append(f"with {n_folds} folds the smallest attainable p is {fam[0].min_p:.3g} "
                         f"({floor:.3g} after Holm over {len(fam)} comparisons): this design "
                         f"cannot show a difference at 0.05, whatever the data; use more folds")
    return "\n".join(lines)
