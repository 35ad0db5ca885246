"""The train recipe: setup (data -> windows -> split -> normaliser -> model), train, evaluate
against baselines on the same split, save a self-describing run directory."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
import torch
from pydantic import Field, field_validator, model_validator
from rich.console import Console
from torch import nn

from moola._io import atomic_write, atomic_write_json, read_json
from moola.config import Config, config_hash
from moola.data import REQUIRED_COLUMNS, Alignment, Store, Timeframe
from moola.datasets.tasks import (
    DataConfig,
    PreparedData,
    SplitConfig,
    prepare_data,
    resolve_store,
    symbol_ids,
)
from moola.evaluation.audit import AuditConfig
from moola.evaluation.economics import EconomicsConfig
from moola.features import get_feature_set
from moola.inference import log_proba
from moola.models import (
    ModelConfig,
    build_model,
    check_encoder_schema,
    count_parameters,
    preset_config,
    with_symbol_embedding,
)
from moola.pipelines._progress import frame_table, named_steps
from moola.refs import resolve_ref
from moola.tracking import MlflowCallback, Tracker, TrackingOptions, log_run_summary
from moola.training import (
    Callback,
    ClassificationObjective,
    DirectionObjective,
    FitResult,
    FreezeSchedule,
    Objective,
    RegressionObjective,
    TensorData,
    TrainConfig,
    Trainer,
    balanced_class_weights,
    data_fingerprint,
    run_directory,
    seed_everything,
)
from moola.training.manifest import (
    Manifest,
    TimeRange,
    periods_by_symbol,
    read_manifest,
    record_test_use,
    write_manifest,
)
from moola.training.objectives import expand_metric_names
from moola.training.separation import check_encoder_separation, evaluated_intervals

Baseline = Literal["majority", "persistence", "logistic", "lightgbm", "minirocket"]
ALL_BASELINES: tuple[Baseline, ...] = ("majority", "logistic", "minirocket")  # the default list


class RunConfig(Config):
    """Everything a run needs; written resolved (model filled in) to RUN/config.yaml."""

    name: str = Field("run", description="the run's name: its directory is OUT_DIR/NAME")
    out_dir: str = Field("runs", description=(
        "directory holding run directories (and the ingested bundled data, _bundled_NAME)"))
    data: DataConfig = DataConfig()
    preset: str | None = Field("simple_lstm", description=(
        "named model (moola models list) sized to the data's features and classes; ignored when "
        "model is set; null needs model"))
    model: ModelConfig | None = Field(None, description=(
        "the full model (ModelConfig below); when set it is used instead of preset; null: the "
        "preset fills it in, as RUN/config.yaml records"))
    symbol_embedding: bool | int = Field(False, description=(
        "pool the run's symbols in one model with a learned vector per symbol, added to the "
        "encoder output (ids: the sorted symbols, as manifest.json lists them); true: the "
        "encoder's width, N: an N-wide embedding projected to it; false: one shared model "
        "that ignores the symbol. Fills model.symbol_embedding"))
    train: TrainConfig = TrainConfig()
    baselines: list[Baseline] = Field(
        default_factory=lambda: list(ALL_BASELINES),
        description="fitted on train, scored on the test rows the model is scored on; persistence "
                    "(the last raw return labelled like the target, dead zone included) needs a "
                    "direction task")
    baseline_lags: int | None = Field(None, ge=1, description=(
        "logistic and lightgbm read the last N bars of each window (None: the whole window)"))
    economics: EconomicsConfig | None = Field(default_factory=EconomicsConfig, description=(
        "the economic check with costs for binary direction tasks (band chosen on validation, "
        "applied to test); null turns it off; ignored for other tasks"))
    audit: AuditConfig | None = Field(None, description=(
        "the plausibility audit (classification tasks): the model retrained from scratch, for the "
        "epochs the run kept, on permuted and on one-row-shifted train labels; report and "
        "metrics.json 'audit' say whether accuracy fell to chance (costs two more trainings); "
        "null skips it, and a gate 'audit: passed' then fails as not measured"))
    pretrained_encoder: str | None = Field(None, description=(
        "a moola pretrain output directory (or sweep:NAME:best) whose RNN encoder is loaded "
        "into the model; its feature schema must match data.feature_set; null: train from scratch"))
    transfer_mode: Literal["full", "forward-only"] = Field("full", description=(
        "full: same encoder architecture, every tensor must match; forward-only: a bidirectional "
        "source into a unidirectional target, layer 0's forward tensors only"))
    freeze_epochs: int = Field(0, ge=0, description=(
        "epochs the transferred encoder tensors stay frozen before they train (0: never frozen)"))
    encoder_lr_mult: float = Field(1.0, gt=0, description=(
        "transferred encoder tensors train at train.optimizer.lr x this"))
    allow_transductive: bool = Field(False, description=(
        "accept a pretrained encoder whose pretraining pool or scaler fit comes within the "
        "embargo of val/test time (otherwise refused); the report then opens with TRANSDUCTIVE"))

    @field_validator("symbol_embedding")
    @classmethod
    def _embedding_width(cls, v: bool | int) -> bool | int:
        if not isinstance(v, bool) and v < 1:
            raise ValueError(f"symbol_embedding takes true, false or a width >= 1, got {v}")
        return v

    @model_validator(mode="after")
    def _one_model(self) -> RunConfig:
        if self.preset is None and self.model is None:
            raise ValueError("set either 'preset' or 'model'")
        if "persistence" in self.baselines and self.data.task != "direction":
            raise ValueError(
                "baselines: persistence labels the last return like the target, a direction rule; "
                f"this run has data.task: {self.data.task}. Drop it from baselines or use "
                "task: direction")
        _check_names(self)
        return self

    @property
    def binary_direction(self) -> bool:
        return self.data.task == "direction" and self.data.direction == "binary"

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name


def presets_for_task(task: str) -> list[str]:
    """The presets whose head can learn ``task``: a direction task takes a direction logit or a
    classifier head; a regression task a regression head, which no preset has."""
    from moola.models import PRESETS

    heads = {"direction": ("direction", "classifier"), "regression": ("regression",)}[task]
    return [n for n in PRESETS if any(getattr(preset_config(n), h) is not None for h in heads)]


def _check_names(cfg: RunConfig) -> None:
    """Preset, feature set and task checked before any data is read: a typo or a preset that
    cannot learn the task is a config error listing the valid choices (and the nearest one)."""
    from moola._io import did_you_mean
    from moola.features import UnknownFeatureSetError
    from moola.models import PRESETS, UnknownPresetError

    try:
        get_feature_set(cfg.data.feature_set)
    except UnknownFeatureSetError as e:
        raise ValueError(f"data.feature_set: {e}") from None
    if cfg.model is not None or cfg.preset is None:
        return
    if cfg.preset not in PRESETS:
        raise ValueError(f"preset: {UnknownPresetError(cfg.preset, list(PRESETS))}")
    fit = presets_for_task(cfg.data.task)
    if cfg.preset not in fit:
        choices = (f"presets for it: {', '.join(fit)}{did_you_mean(cfg.preset, fit)}" if fit else
                   "no preset has a regression head: give a model: with regression: {horizons: [...]} "
                   "(docs/configs.md, ModelConfig)")
        raise ValueError(f"preset {cfg.preset!r} cannot learn data.task: {cfg.data.task}; {choices}")


def resolve_model(cfg: RunConfig, n_features: int, n_classes: int,
                  symbols: Sequence[str] = ()) -> ModelConfig:
    """The configured model, or the preset sized to the data (a ternary direction task gets a
    3-class classifier head; a binary one the preset's direction logit), with
    ``symbol_embedding`` a vector per symbol of ``symbols`` (the run's, sorted)."""
    model_cfg = _configured_model(cfg, n_features, n_classes)
    emb = model_cfg.symbol_embedding
    if cfg.symbol_embedding is not False:
        dim = None if cfg.symbol_embedding is True else int(cfg.symbol_embedding)
        if emb is None:
            return with_symbol_embedding(model_cfg, len(symbols), dim)
        if emb.dim != dim:
            raise ValueError(f"symbol_embedding: {cfg.symbol_embedding} and model.symbol_embedding."
                             f"dim: {emb.dim} disagree; set one of them")
    if emb is not None and emb.n_symbols != len(symbols):
        raise ValueError(f"model.symbol_embedding.n_symbols is {emb.n_symbols}, but the run has "
                         f"{len(symbols)} symbol(s) {list(symbols)}; set n_symbols: {len(symbols)} "
                         "or use symbol_embedding: true, which sizes it to the data")
    return model_cfg


def _configured_model(cfg: RunConfig, n_features: int, n_classes: int) -> ModelConfig:
    if cfg.model is not None:
        if cfg.model.direction is not None and n_classes > 2:
            raise ValueError(
                f"model.direction predicts one binary logit but the labels have {n_classes} "
                f"classes (data.direction: {cfg.data.direction}); use model.classifier with "
                f"n_classes: {n_classes}, or a preset")
        return cfg.model
    assert cfg.preset is not None
    return preset_config(cfg.preset, n_features=n_features,
                         n_classes=n_classes if n_classes else None)


def objective_type(model_cfg: ModelConfig) -> type[Objective]:
    """The objective follows the model's head: classifier, direction logit or regression."""
    if model_cfg.classifier is not None:
        return ClassificationObjective
    if model_cfg.direction is not None:
        return DirectionObjective
    if model_cfg.regression is not None:
        return RegressionObjective
    raise ValueError("model has no head the train recipe can optimise (classifier/direction/regression)")


def val_metric_names(cfg: RunConfig) -> tuple[str, ...]:
    """The keys of ``run.val`` in a train run's metrics.json (and, as ``val_*``, of its epoch
    logs), from the objective's declared names; ``{i}`` is left in where data decides it."""
    model = cfg.model if cfg.model is not None else preset_config(str(cfg.preset))
    kind = objective_type(model)
    if cfg.model is None and kind is DirectionObjective:  # a preset sized to 3+ classes: a classifier
        kind = ClassificationObjective
    # train windows carry no pointer labels, so a pointer head is never scored here
    names = tuple(n for n in kind.metric_names if not n.startswith("pointer_"))
    if cfg.model is None:
        return expand_metric_names(names)
    if model.classifier is not None:
        return expand_metric_names(names, range(model.classifier.n_classes))
    if model.regression is not None:
        return expand_metric_names(names, range(len(model.regression.horizons)))
    return expand_metric_names(names, range(2))


def make_objective(model_cfg: ModelConfig, train_cfg: TrainConfig, y_train: np.ndarray,
                   n_classes: int, class_names: Sequence[str] = ()) -> Objective:
    """The objective of the model's head (``objective_type``), weighted as the config says;
    ``class_names`` name the classes in its guards' warnings."""
    loss = train_cfg.loss
    kind = objective_type(model_cfg)
    if kind is ClassificationObjective:
        if loss.class_weights == "balanced":
            w = balanced_class_weights(y_train, n_classes)
        elif isinstance(loss.class_weights, list):
            w = torch.tensor(loss.class_weights, dtype=torch.float32)
        else:
            w = None
        return ClassificationObjective(n_classes, class_weights=w, focal_gamma=loss.focal_gamma,
                                       label_smoothing=loss.label_smoothing,
                                       pointer_weight=loss.pointer_weight, class_names=class_names)
    if kind is DirectionObjective:
        pos_weight = None
        if loss.class_weights == "balanced":
            p = float(np.mean(y_train))
            pos_weight = (1 - p) / max(p, 1e-9)
        return DirectionObjective(pos_weight=pos_weight, label_smoothing=loss.label_smoothing,
                                  class_names=class_names)
    return RegressionObjective()


@dataclass
class TrainOutcome:
    run_dir: Path
    metrics: dict
    report: Path | None
    warnings: list[str]


class ResumeConfigError(ValueError):
    """``--resume`` into a run directory whose stored config.yaml says something else."""


def run_train(cfg: RunConfig, *, console: Console | None = None, show_progress: bool = True,
              resume: bool = False, force: bool = False, overwrite: bool = False,
              callbacks: Sequence[Callback] = (), tracking: TrackingOptions | None = None) -> TrainOutcome:
    """Setup -> train -> evaluate (with baselines) -> save, recorded as one MLflow run.

    ``callbacks`` join the recipe's own (sweeps report progress, tuning reports to a pruner);
    this is the one training function behind ``train``, ``sweep`` and ``tune``. ``resume``
    continues the run directory's checkpoint and refuses one whose stored config differs from
    ``cfg`` unless ``force``. A run directory that already holds a run is refused
    (``RunExistsError``) unless ``resume`` or ``overwrite``, which replaces it when this run completes.
    """
    console = console or Console()
    final = cfg.run_dir
    # the directory first: a refusal comes before MLflow opens a run
    with run_directory(final, overwrite=overwrite, resume=resume) as work, \
            Tracker("train", tracking, run_name=cfg.name) as tracker:
        t0 = time.perf_counter()
        run = setup(cfg, tracker, console=console, callbacks=callbacks, resume=resume, force=force,
                    run_dir=work)
        trainer, fit = train(run, console=console, show_progress=show_progress, resume=resume)
        result = evaluate(run, trainer, fit, console=console, started=t0, show_progress=show_progress)
        save(run, result, tracker)
    report = None if result.report is None else final / result.report.relative_to(work)
    if report is not None:
        console.print(f"report: {report}")
    return TrainOutcome(final, result.metrics, report, fit.warnings)


# ------------------------------------------------------------------------------ setup


@dataclass
class TrainSetup:
    """What setup hands on: the resolved config, the prepared data and the built model."""

    cfg: RunConfig  # as given, with a sweep:NAME:best encoder reference resolved
    resolved: RunConfig  # the model filled in: what RUN/config.yaml holds
    run_dir: Path
    store_dir: Path
    timeframe: Timeframe
    bar_columns: list[str]
    data: PreparedData
    model_cfg: ModelConfig
    model: nn.Module
    n_params: int
    fingerprint: str
    callbacks: list[Callback]
    param_groups: list[dict] | None
    normalizer_fit: list[TimeRange]
    transductive: str | None  # the warning that leads the report, when allowed


def config_differences(stored: RunConfig, given: RunConfig) -> list[str]:
    """Dotted keys whose values differ, as ``key: stored X, given Y``. ``name`` and ``out_dir``
    only locate the directory (a moved run resumes); a preset-only config is compared without
    the ``model`` section its preset expands into."""
    where = ("name", "out_dir")
    a = {k: v for k, v in stored.flat().items() if k not in where}
    b = {k: v for k, v in given.flat().items() if k not in where}
    if given.model is None:
        a = {k: v for k, v in a.items() if not k.startswith("model.")}
        b = {k: v for k, v in b.items() if not k.startswith("model.") and k != "model"}
    keys = sorted(set(a) | set(b))
    missing = object()
    return [f"{k}: stored {a.get(k, missing)!r}, given {b.get(k, missing)!r}".replace(
        repr(missing), "(absent)") for k in keys if a.get(k, missing) != b.get(k, missing)]


def check_resume(cfg: RunConfig, run_dir: Path) -> None:
    """Refuse to resume ``run_dir`` with a config other than the one it was started with."""
    stored_path = run_dir / "config.yaml"
    if not stored_path.is_file():
        return  # nothing started there: resume starts from scratch
    diff = config_differences(RunConfig.from_yaml(stored_path), cfg)
    if diff:
        raise ResumeConfigError(
            f"{stored_path} differs from the given config at {len(diff)} key(s): "
            + "; ".join(diff) + ". Resuming would mix two runs; pass --force to resume anyway, "
            "or choose another name/out_dir")


def run_timeframe(cfg: DataConfig, store_dir: Path) -> Timeframe:
    """The timeframe the run reads: the configured one or the store's only one."""
    return Timeframe(cfg.timeframe) if cfg.timeframe else Store(store_dir).resolve_timeframe(None)


def bar_columns(store_dir: Path, timeframe: Timeframe, symbols: Sequence[str]) -> list[str]:
    """The bar columns the features read, as the run's partitions hold them."""
    store = Store(store_dir)
    parts = [p for p in store.partitions(timeframe) if p["symbol"] in set(symbols)]
    adj = any("adj_close" in pl.read_parquet_schema(store.root / p["file"]) for p in parts)
    return [*REQUIRED_COLUMNS, *(["adj_close"] if adj else [])]


def setup(cfg: RunConfig, tracker: Tracker, *, console: Console, callbacks: Sequence[Callback] = (),
          resume: bool = False, force: bool = False, run_dir: Path | None = None) -> TrainSetup:
    """Config -> data (features, windows, purged split, normaliser) -> model (and transfer).

    ``run_dir`` is where the files go (a staging directory while replacing a run); the run is
    recorded under its final place, ``cfg.run_dir``."""
    if cfg.pretrained_encoder is not None:  # sweep:NAME:best -> the directory, recorded as such
        cfg = cfg.model_copy(update={"pretrained_encoder": resolve_ref(cfg.pretrained_encoder)})
    run_dir = cfg.run_dir if run_dir is None else run_dir
    if resume and not force:
        check_resume(cfg, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    store_dir = resolve_store(cfg.data, Path(cfg.out_dir))
    enc_norm, normalizer_fit = _encoder_normalizer(cfg)
    data = prepare_data(cfg.data, store_dir, normalizer=enc_norm)
    if data.alignment is not None:  # data.align: say what one clock cost, and keep the account
        console.print("\n".join(data.alignment.summary()), highlight=False, markup=False)
        atomic_write_json(run_dir / "alignment.json", _alignment_record(data.alignment))
    if enc_norm is None and data.normalizer is not None:  # fitted here, on the training windows
        normalizer_fit = evaluated_intervals(data.meta["train"])
    transductive = None
    if cfg.pretrained_encoder is not None:  # the encoder must not have seen val/test time
        transductive = check_encoder_separation(
            cfg.pretrained_encoder, evaluated_intervals(data.meta["val"], data.meta["test"]),
            allow_transductive=cfg.allow_transductive, what="validation/test")
        if transductive:
            console.print(transductive, style="bold red", highlight=False, markup=False)
    n_features = data.x["train"].shape[2]
    model_cfg = resolve_model(cfg, n_features, len(data.classes), _symbols(data))
    resolved = cfg.model_copy(update={"model": model_cfg, "preset": cfg.preset})
    resolved.to_yaml(run_dir / "config.yaml")
    tracker.log_params(resolved.flat())
    seed_everything(cfg.train.seed)
    model = build_model(model_cfg)
    n_params = count_parameters(model)
    all_callbacks: list[Callback] = [MlflowCallback(tracker), *callbacks]
    param_groups = _transfer(cfg, model, data.schema_hash, run_dir, all_callbacks, console)
    console.print(
        f"[bold]{cfg.name}[/]: {model_cfg.name} with {n_params:,} parameters on "
        f"{len(data.y['train']):,} train / {len(data.y['val']):,} val / {len(data.y['test']):,} "
        f"test windows of {data.x['train'].shape[1]}x{n_features} "
        f"({n_params / max(len(data.y['train']), 1):,.1f} params per sample; purged "
        f"{data.split.purged}, embargoed {data.split.embargoed})"
    )
    if data.normalizer is not None:
        data.normalizer.save(run_dir / "normalizer.json")
    fingerprint = data_fingerprint(data.x["train"], data.y["train"])
    tracker.set_tags({"moola.data_fingerprint": fingerprint, "moola.feature_schema_hash": data.schema_hash,
                      "moola.feature_set": cfg.data.feature_set, "moola.run_dir": str(cfg.run_dir.resolve()),
                      "moola.config_hash": config_hash(resolved)})
    tf = run_timeframe(cfg.data, store_dir)
    return TrainSetup(cfg=cfg, resolved=resolved, run_dir=run_dir, store_dir=store_dir, timeframe=tf,
                      bar_columns=bar_columns(store_dir, tf, _symbols(data)), data=data,
                      model_cfg=model_cfg, model=model, n_params=n_params, fingerprint=fingerprint,
                      callbacks=all_callbacks, param_groups=param_groups,
                      normalizer_fit=normalizer_fit, transductive=transductive)


def _encoder_normalizer(cfg: RunConfig) -> tuple[Any, list[TimeRange]]:
    """The pretrained encoder's normaliser (it saw inputs scaled like this) and its fit range."""
    if cfg.pretrained_encoder is None:
        return None, []
    from moola.datasets import load_scaler

    check_encoder_schema(cfg.pretrained_encoder, get_feature_set(cfg.data.feature_set).schema_hash)
    enc = Path(cfg.pretrained_encoder)
    if not (enc / "normalizer.json").is_file():
        return None, []
    return load_scaler(enc / "normalizer.json"), read_manifest(enc).normalizer_fit


def _transfer(cfg: RunConfig, model: nn.Module, schema: str, run_dir: Path, callbacks: list[Callback],
              console: Console) -> list[dict] | None:
    """Load the pretrained encoder's tensors; their parameter groups (lr x encoder_lr_mult)."""
    if cfg.pretrained_encoder is None:
        return None
    from moola.models import param_groups as make_groups
    from moola.models import transfer_encoder

    report = transfer_encoder(model, cfg.pretrained_encoder, cfg.transfer_mode,
                              expected_schema_hash=schema)
    console.print(str(report), highlight=False, markup=False)
    (run_dir / "transfer_report.txt").write_text(str(report) + "\n")
    names = report.transferred_names
    lr = cfg.train.optimizer.lr
    if cfg.freeze_epochs:
        callbacks.append(FreezeSchedule(set(names), cfg.freeze_epochs))
    return make_groups(model, names, base_lr=lr, encoder_lr=lr * cfg.encoder_lr_mult)


def _alignment_record(al: Alignment) -> dict[str, Any]:
    """RUN/alignment.json: the common span, the summary lines and every symbol's account."""
    accounts = [{**vars(s), "first_ts": s.first_ts.isoformat(), "last_ts": s.last_ts.isoformat(),
                 "first_missing": [t.isoformat() for t in s.first_missing]} for s in al.symbols]
    return {"timeframe": al.timeframe.value, "start": al.start.isoformat(), "end": al.end.isoformat(),
            "common_timestamps": al.timestamps.len(), "complete": al.complete,
            "summary": al.summary(), "symbols": accounts}


def _symbols(data: PreparedData) -> list[str]:
    return sorted(set().union(*(set(m["symbol"].unique().to_list()) for m in data.meta.values())))


# ------------------------------------------------------------------------------ train


def train(run: TrainSetup, *, console: Console, show_progress: bool = True,
          resume: bool = False) -> tuple[Trainer, FitResult]:
    """Fit on train, early-stop and keep the best weights on val (resumable under ckpt/)."""
    cfg, data = run.cfg, run.data
    objective = make_objective(run.model_cfg, cfg.train, data.y["train"], len(data.classes), data.classes)
    tcfg = cfg.train.stopping_after(cfg.freeze_epochs) if cfg.pretrained_encoder else cfg.train
    trainer = Trainer(run.model, objective, tcfg, run_dir=run.run_dir, show_progress=show_progress,
                      console=console, callbacks=run.callbacks, param_groups=run.param_groups)
    fit = trainer.fit(_tensors(data, "train"), _tensors(data, "val"), resume=resume)
    return trainer, fit


def _tensors(data: PreparedData, split: str, symbols: Sequence[str] | None = None) -> TensorData:
    """x, y and symbol_id (N,) int64: each window's index in ``symbols`` (the run's sorted
    symbols; by default this data's), -1 for one not among them. Models without a symbol
    embedding ignore it; one with an embedding refuses -1."""
    names = list(symbols) if symbols else _symbols(data)
    ids = symbol_ids(data.meta[split]["symbol"], names, unknown=-1)
    return TensorData({"x": data.x[split], "y": data.y[split], "symbol_id": ids})


# --------------------------------------------------------------------------- evaluate


@dataclass
class Evaluation:
    metrics: dict
    report: Path | None
    temperature: float | None  # fitted on validation; None for regression


def evaluate(run: TrainSetup, trainer: Trainer, fit: FitResult, *, console: Console,
             started: float, show_progress: bool = True) -> Evaluation:
    """Test metrics beside the baselines on the same split, temperature fitted on val only;
    writes metrics.json (and, for classes, report.html)."""
    from moola.evaluation import (
        baseline_table,
        classification_metrics,
        save_baseline_probabilities,
        write_run_report,
    )
    from moola.evaluation.calibration import TemperatureScaler
    from moola.evaluation.run_report import split_summary

    cfg, data, run_dir = run.cfg, run.data, run.run_dir
    # scored in fp32 whatever the training precision: what Predictor serves, bit for bit
    test_loss, test_m, test_c = trainer.evaluate(_tensors(data, "test"), precision="fp32")
    # the kept model's validation loss: what sweeps and tuning select on (never a test number)
    val_loss, val_m, val_c = trainer.evaluate(_tensors(data, "val"), precision="fp32")
    run_facts: dict = {
        "val_loss": val_loss, "val": val_m,
        "test_loss": test_loss, "fit_seconds": fit.seconds, "epochs_run": len(fit.history),
        "best_epoch": None if fit.best_epoch is None else fit.best_epoch + 1,
        "warnings": fit.warnings, "n_params": run.n_params,
        "n_train": len(data.y["train"]), "n_val": len(data.y["val"]), "n_test": len(data.y["test"]),
    }
    if not data.classes:
        run_facts["seconds_total"] = time.perf_counter() - started
        metrics = {"model": test_m, "run": run_facts}
        atomic_write_json(run_dir / "metrics.json", metrics)
        return Evaluation(metrics, None, None)
    test_metrics = classification_metrics(data.y["test"], test_c["proba"], data.classes)
    # temperature scaling: fitted on the validation split only, reported beside raw
    ts = TemperatureScaler().fit(log_proba(val_c["proba"]), data.y["val"])
    cal = ts.transform(log_proba(test_c["proba"]))
    run_facts["test_calibrated"] = classification_metrics(data.y["test"], cal, data.classes)
    run_facts["temperature"] = float(ts.temperature_)
    base = fit_baselines(cfg, data, "test", console=console, show_progress=show_progress,
                         model_seconds=fit.seconds)
    save_baseline_probabilities(baselines_path(run_dir, "test"), base,
                                baseline_key(cfg, data, "test", run.fingerprint))
    console.print(frame_table(baseline_table(base, model_metrics=test_metrics),
                              title="test split: model vs baselines"))
    test_ci, vs_baselines = accuracy_intervals(cfg, data, test_c["proba"], base)
    desk: dict[str, Any] = {"test_ci": test_ci, "vs_baselines": vs_baselines}
    curves: dict[str, dict[str, list[float]]] = {}
    if cfg.economics is not None and cfg.binary_direction:
        desk["economics"], curves = economics_check(
            cfg.economics, data, ts.transform(log_proba(val_c["proba"])), cal, run.timeframe,
            stride=cfg.data.stride, horizon=cfg.data.horizon)
    if cfg.audit is not None:
        desk["audit"] = run_audit(run, fit, test_c["proba"], console=console)
        console.print(desk["audit"]["first_line"], style="bold" if desk["audit"]["passed"] else "bold red",
                      highlight=False, markup=False)
    run_facts["seconds_total"] = time.perf_counter() - started
    transductive = run.transductive
    report = write_run_report(
        run_dir, history=fit.history, metrics=test_metrics, classes=data.classes,
        y_true=data.y["test"], proba=test_c["proba"], baseline_table=base,
        title=(f"{transductive.splitlines()[0]} | " if transductive else "")
        + f"{cfg.name}: {run.model_cfg.name} on {cfg.data.feature_set} ({cfg.data.task})",
        notes=([transductive] if transductive else [])
        + (desk["audit"]["lines"] if "audit" in desk else []) + fit.warnings + trainer.messages_,
        extra={"run": run_facts, **desk}, test_ci=desk["test_ci"],
        economics=desk.get("economics"), equity_curves=curves, test_ts=data.meta["test"]["end_ts"],
        split=split_summary(data.meta, purged=data.split.purged, embargoed=data.split.embargoed,
                            asked=asked_shares(cfg.data.split)),
    )
    metrics = read_json(run_dir / "metrics.json")
    return Evaluation(metrics, report, float(ts.temperature_))


def asked_shares(split: SplitConfig) -> dict[str, float] | None:
    """The segment shares a fraction split asks for (a date split asks for none)."""
    if split.dates is not None:
        return None
    val, test = split.fractions
    return {"train": 1.0 - val - test, "val": val, "test": test}


def run_audit(run: TrainSetup, fit: FitResult, proba_test: np.ndarray, *,
              console: Console) -> dict[str, Any]:
    """The plausibility audit (moola.evaluation.audit) with this run's own training: a fresh model
    of the same config and seed, fitted for the epochs the run kept (no early stopping, so the
    validation labels play no part), on permuted and on shifted train labels.

    Shifted means the label of the same symbol's window ending ``stride`` bars later (one bar at
    stride 1), on train and test alike; rows without one (a gap, a split's end) are left out."""
    from moola.evaluation.audit import UNKNOWN, plausibility_audit

    cfg, data = run.cfg, run.data
    assert cfg.audit is not None
    epochs = fit.best_epoch + 1 if fit.best_epoch is not None else len(fit.history)
    tcfg = cfg.train.model_copy(update={"epochs": max(epochs, 1), "early_stopping": None})
    full = {part: _tensors(data, part) for part in ("train", "test")}

    def fit_predict(i_train: np.ndarray, y_train: np.ndarray, i_test: np.ndarray) -> np.ndarray:
        # the audit passes row indices as its "x": (N, 1) int64 rows of the run's train / test windows
        seed_everything(cfg.train.seed)
        model = build_model(run.model_cfg)
        objective = make_objective(run.model_cfg, cfg.train, y_train, len(data.classes), data.classes)
        trainer = Trainer(model, objective, tcfg, show_progress=False, console=console)
        train_rows = full["train"].subset(torch.from_numpy(i_train[:, 0]))
        train_rows.tensors["y"] = torch.from_numpy(np.asarray(y_train, dtype=np.int64))
        trainer.fit(train_rows)
        _, _, c = trainer.evaluate(full["test"].subset(torch.from_numpy(i_test[:, 0])))
        return np.asarray(c["proba"])

    step = run.timeframe.step * cfg.data.stride

    def shifted(part: str) -> np.ndarray:  # (N,) the label of the window ending `stride` bars later
        m = data.meta[part].select("symbol", "end_ts").with_columns(y=pl.Series(data.y[part]))
        later = m.select("symbol", ts=(pl.col("end_ts") - step).cast(m["end_ts"].dtype), y_next="y")
        joined = m.join(later, left_on=["symbol", "end_ts"], right_on=["symbol", "ts"], how="left",
                        maintain_order="left")
        return joined["y_next"].fill_null(UNKNOWN).to_numpy().astype(np.int64)

    acfg = cfg.audit.model_copy(update={"horizon": horizon_rows(cfg.data.horizon, cfg.data.stride)})
    console.print(f"audit: retraining {run.model_cfg.name} for {tcfg.epochs} epoch(s) on permuted and "
                  "on shifted labels", highlight=False, markup=False)
    n_train, n_test = len(data.y["train"]), len(data.y["test"])
    result = plausibility_audit(
        fit_predict, np.arange(n_train, dtype=np.int64)[:, None], data.y["train"],
        np.arange(n_test, dtype=np.int64)[:, None], data.y["test"],
        y_train_shifted=shifted("train"), y_test_shifted=shifted("test"), proba_test=proba_test,
        cfg=acfg, seed=cfg.train.seed)
    return {**result.to_dict(), "lines": result.lines(), "retrained_epochs": tcfg.epochs,
            "how": "fresh model, same config and seed, trained for the kept epochs without early "
                   "stopping; shifted = the label of the same symbol's next row"}


def fit_baselines(cfg: RunConfig, data: PreparedData, part: str, *, console: Console | None = None,
                  show_progress: bool = False, model_seconds: float | None = None) -> list[Any]:
    """``cfg.baselines`` fitted on train and scored on ``part``'s rows (persistence reads the
    windows' raw last-bar returns), one at a time under a bar naming the one fitting; a baseline
    that took longer than the model's fit (``model_seconds``) says so on the console."""
    from moola.evaluation import run_baselines

    persistence = "persistence" in cfg.baselines
    with named_steps(f"baselines on {part} ({len(data.y[part]):,} windows)", len(cfg.baselines),
                     enabled=show_progress, console=console) as step:
        out = run_baselines(data.x["train"], data.y["train"], data.x[part], data.y[part], data.classes,
                            which=tuple(cfg.baselines), seed=cfg.train.seed, lags=cfg.baseline_lags,
                            last_return_train=data.last_return["train"] if persistence else None,
                            last_return_test=data.last_return[part] if persistence else None,
                            dead_zone=cfg.data.dead_zone_bps * 1e-4, on_start=step)
    if console is not None and model_seconds is not None:
        for b in out:
            if b.fit_seconds > model_seconds:
                console.print(f"baseline {b.name} took {b.fit_seconds:.1f} s to fit and score, longer "
                              f"than the model's {model_seconds:.1f} s fit", highlight=False, markup=False)
    return out


def baseline_key(cfg: RunConfig, data: PreparedData, part: str, train_fingerprint: str) -> dict[str, Any]:
    """What a stored baseline result depends on: the training windows (``train_fingerprint``,
    hashed once per run), the scored rows and the baseline settings (a later evaluate reuses the
    stored probabilities only when all match)."""
    rows = train_fingerprint if part == "train" else data_fingerprint(data.x[part], data.y[part])
    return {"split": part, "train": train_fingerprint, "rows": rows, "baselines": list(cfg.baselines),
            "baseline_lags": cfg.baseline_lags, "seed": cfg.train.seed,
            "dead_zone_bps": cfg.data.dead_zone_bps}


def baselines_path(run_dir: Path, part: str) -> Path:
    """``RUN/baselines_<part>.parquet`` (+ ``.json``): the baselines' probabilities on that split."""
    return run_dir / f"baselines_{part}.parquet"


def horizon_rows(horizon: int, stride: int) -> int:
    """Consecutive rows whose labels share bars: ``ceil(horizon / stride)``."""
    return max(1, -(-horizon // stride))


def accuracy_intervals(cfg: RunConfig, data: PreparedData, proba: np.ndarray,
                       base: Sequence[Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Block-bootstrap 95% CIs on the test rows: the model's accuracy, and its paired accuracy
    difference from the best baseline (highest test accuracy) on the same resampled blocks
    (``test_ci``); and the difference from every baseline, as the promotion gates' ``beats:``
    read it (``vs_baselines``: {name: metric, diff, ci_low, ci_high, ci_method}).
    Block length ``max(ceil(n^(1/3)), ceil(horizon / stride))`` rows (resampling.py)."""
    from moola.evaluation.resampling import accuracy_ci, paired_difference_ci

    y = data.y["test"]
    h = horizon_rows(cfg.data.horizon, cfg.data.stride)
    pred = np.asarray(proba).argmax(axis=1)  # (N,)
    out: dict[str, Any] = {"accuracy": accuracy_ci(y, pred, horizon=h).to_dict(),
                           "method": "moving-block bootstrap, percentile interval",
                           "horizon_rows": h}
    diffs = {b.name: paired_difference_ci(y, pred, b.proba_test.argmax(axis=1), horizon=h).to_dict()
             for b in base}
    vs = {name: {"metric": "accuracy", "diff": d["estimate"], "ci_low": d["low"], "ci_high": d["high"],
                 "ci_method": f"{d['method']} block bootstrap ({d['block_length']}-row blocks, "
                              f"{d['level']:.0%})"} for name, d in diffs.items()}
    if base:
        best = max(base, key=lambda b: float(b.metrics["accuracy"]))
        out["best_baseline"] = best.name
        out["baseline_accuracy"] = accuracy_ci(y, best.proba_test.argmax(axis=1), horizon=h).to_dict()
        out["difference"] = diffs[best.name]
    return out, vs


def economics_check(ecfg: EconomicsConfig, data: PreparedData, cal_val: np.ndarray,
                    cal_test: np.ndarray, timeframe: Timeframe, *, stride: int,
                    horizon: int) -> tuple[dict[str, Any], dict[str, dict[str, list[float]]]]:
    """Per symbol: the band chosen on its validation rows (calibrated P(up)), applied to its test
    rows, beside buy-and-hold on the same periods; ``mean`` averages the symbols' numbers.
    Also returns each symbol's test equity curves (model, buy_and_hold) for the report."""
    from moola.evaluation.economics import CostConfig, annual_bars, backtest, buy_and_hold, choose_band

    no_costs = CostConfig(fee_bps=0.0, slippage_bps=0.0)

    hold = horizon_rows(horizon, stride)
    per_year = annual_bars(timeframe.value, trading_days=365 if timeframe.is_intraday else 252)
    kw: dict[str, Any] = {"hold_rows": hold, "stride": stride, "bars_per_year": per_year}
    per_symbol: dict[str, Any] = {}
    curves: dict[str, dict[str, list[float]]] = {}
    for sym in sorted(set(data.meta["test"]["symbol"].to_list())):
        rows = {}
        for part in ("val", "test"):  # this symbol's rows, in time order
            m = data.meta[part].with_row_index("i").filter(pl.col("symbol") == sym).sort("end_ts")
            rows[part] = m["i"].to_numpy()
        if rows["val"].size == 0:
            continue
        band, _ = choose_band(cal_val[rows["val"], 1], data.forward_return["val"][rows["val"]], ecfg, **kw)
        r_test = data.forward_return["test"][rows["test"]]
        strat = backtest(cal_test[rows["test"], 1], r_test, band, mode=ecfg.mode, costs=ecfg.costs, **kw)
        bh = buy_and_hold(r_test, costs=ecfg.costs, **kw)
        # always in the market on the model's side (band 0), with and without costs: where the
        # chosen band stays flat, this shows what the model's accuracy earns and what costs take
        always = {name: backtest(cal_test[rows["test"], 1], r_test, 0.0, mode=ecfg.mode, costs=c,
                                 **kw).summary()
                  for name, c in (("always_in", ecfg.costs), ("always_in_gross", no_costs))}
        per_symbol[sym] = {"band": band, "model": strat.summary(), "buy_and_hold": bh.summary(), **always}
        curves[sym] = {"model": strat.equity.tolist(), "buy_and_hold": bh.equity.tolist()}
    keys = ("net_return", "sharpe", "turnover", "max_drawdown")
    mean = {who: {k: float(np.mean([v[who][k] for v in per_symbol.values()])) for k in keys}
            for who in ("model", "buy_and_hold", "always_in", "always_in_gross")} if per_symbol else {}
    # headline numbers (the mean over symbols), as the promotion gate `net_sharpe` reads them
    head = {f"net_{k}" if k == "sharpe" else k: v for k, v in mean.get("model", {}).items()}
    return ({**head, "config": ecfg.model_dump(), "hold_rows": hold,
             "periods_per_year": per_year / (hold * stride),
             "band_chosen_on": "validation (calibrated probabilities)", "symbols": per_symbol,
             "mean": mean}, curves)


# ------------------------------------------------------------------------------- save


def label_definition(cfg: DataConfig) -> str:
    """The label in words, for the manifest."""
    ret = (f"log return from the close of the window's last bar to the close {cfg.horizon} "
           f"bar(s) later (adj_close when the bars have it)")
    if cfg.task != "direction":
        return ret
    dz = f"{cfg.dead_zone_bps:g} bp (1e-4) of log return"
    if cfg.direction == "ternary":
        return f"r = the {ret}; 1 ('flat') when |r| < {dz}, else 2 ('up') when r > 0, else 0 ('down')"
    if cfg.dead_zone_bps:
        return f"1 ('up') when the {ret} is > 0, else 0 ('down'); windows with |r| < {dz} dropped"
    if cfg.zero_return == "drop":
        return f"1 ('up') when the {ret} is > 0, 0 ('down') when < 0; windows with r = 0 dropped"
    if cfg.zero_return == "up":
        return f"1 ('up') when the {ret} is >= 0, else 0 ('down')"
    return f"1 ('up') when the {ret} is > 0, else 0 ('down'; a zero return is 'down')"


def run_manifest(run: TrainSetup, temperature: float | None) -> Manifest:
    """Everything a Predictor needs to rebuild the inputs, and what the model saw."""
    cfg, data = run.cfg, run.data
    return Manifest(
        kind="train_run", feature_set=cfg.data.feature_set, feature_names=list(data.feature_names),
        feature_schema_hash=data.schema_hash, window=cfg.data.window, horizon=cfg.data.horizon,
        timeframe=run.timeframe.value, symbols=_symbols(data), bar_columns=run.bar_columns,
        aligned=cfg.data.align,
        task=cfg.data.task, classes=list(data.classes), label=label_definition(cfg.data),
        normalizer=None if data.normalizer is None else data.normalizer.to_dict(),
        temperature=temperature,
        periods={k: periods_by_symbol(data.meta[k]) for k in ("train", "val", "test")},
        normalizer_fit=run.normalizer_fit, embargo_bars=cfg.data.embargo_bars,
        allow_transductive=cfg.allow_transductive, data_fingerprint=run.fingerprint,
        store=str(run.store_dir), n_params=run.n_params, n_train=len(data.y["train"]),
    )


def save(run: TrainSetup, result: Evaluation, tracker: Tracker) -> None:
    """manifest.json last (weights, config, normaliser and metrics are already written), then
    the final metrics and the directory to MLflow."""
    write_manifest(run.run_dir, run_manifest(run, result.temperature))
    record_test_use(run.run_dir, "train")  # evaluate() scored the test split
    tracker.log_final(run.run_dir / "metrics.json")
    log_run_summary(tracker, run.run_dir)  # headline test metric vs best baseline; dataset input
    tracker.log_artifacts(run.run_dir)


# --------------------------------------------------------------------- moola evaluate


def run_evaluate(run_dir: str | Path, *, store: str | None = None, split: str = "test",
                 console: Console | None = None, timeframe: str | None = None,
                 symbols: Sequence[str] | None = None, show_progress: bool = True) -> dict:
    """Re-evaluate a saved run on its data (or another store with the same feature schema;
    ``timeframe``/``symbols`` narrow what it reads).

    Writes ``evaluation_<split>.json`` and, per part, ``evaluation_<part>_rows.parquet``: the
    probabilities it scored, one row per window (``symbol, ts`` of its last bar, ``y``,
    ``raw_proba_<class>`` as scored, ``proba_<class>`` with the run's temperature), the same
    columns ``moola predict`` writes; and for classes ``evaluation_<part>/report.html``, the run
    report's layout (verdict box first) for this evaluation.
    """
    from moola.datasets import load_scaler
    from moola.evaluation import baseline_table, classification_metrics
    from moola.inference import check_feature_schema, prediction_frame
    from moola.training import from_checkpoint

    console = console or Console()
    run_dir = Path(run_dir)
    cfg = RunConfig.from_yaml(run_dir / "config.yaml")
    data_update: dict[str, Any] = {"store": store} if store is not None else {}
    if timeframe is not None:
        data_update["timeframe"] = timeframe
    if symbols is not None:
        data_update["symbols"] = list(symbols)
    if data_update:
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update=data_update)})
    manifest = read_manifest(run_dir)
    check_feature_schema(manifest, get_feature_set(cfg.data.feature_set), run_dir)
    norm_path = run_dir / "normalizer.json"
    normalizer = load_scaler(norm_path) if norm_path.is_file() else None
    data = prepare_data(cfg.data, resolve_store(cfg.data, Path(cfg.out_dir)), normalizer=normalizer)
    model = from_checkpoint(run_dir)
    assert cfg.model is not None
    objective = make_objective(cfg.model, cfg.train, data.y["train"], len(data.classes), data.classes)
    trainer = Trainer(model, objective, cfg.train.model_copy(update={"early_stopping": None}),
                      show_progress=False, console=console)
    parts = ("train", "val", "test") if split == "all" else (split,)
    train_fp = data_fingerprint(data.x["train"], data.y["train"]) if data.classes else ""  # once
    out: dict = {}
    for part in parts:
        n = len(data.y[part])
        loss, m, c = trainer.evaluate(_tensors(data, part, manifest.symbols), batch_size=eval_batch_size(
            n, max(cfg.train.batch_size, 256)), precision="fp32")  # as Predictor serves it
        meta = data.meta[part]
        rows = prediction_frame(meta["symbol"], meta["end_ts"], c["proba"] if data.classes else c["pred"],
                                classes=data.classes, temperature=manifest.temperature)
        y = c["y"] if data.classes else c["y"][:, 0]
        atomic_write(run_dir / f"evaluation_{part}_rows.parquet",
                     rows.insert_column(2, pl.Series("y", y)).write_parquet)
        entry: dict = {"loss": loss}
        if data.classes:
            entry["metrics"] = classification_metrics(data.y[part], c["proba"], data.classes)
            base = _evaluation_baselines(run_dir, cfg, data, part, train_fp, console=console,
                                         show_progress=show_progress)
            table = baseline_table(base, model_metrics=entry["metrics"])
            console.print(f"[bold]{part}[/]")
            console.print(frame_table(table))
            entry["baselines"] = {b.name: b.metrics for b in base}
            entry["report"] = str(_evaluation_report(run_dir, part, cfg, data, c["proba"], entry["metrics"],
                                                     base, console))
        else:
            entry["metrics"] = m
        out[part] = entry
    atomic_write_json(run_dir / f"evaluation_{split}.json", out)
    console.print(f"wrote {run_dir / f'evaluation_{split}.json'} and "
                  + ", ".join(f"evaluation_{p}_rows.parquet" for p in parts)
                  + "".join(f"; {p} report: {out[p]['report']}" for p in parts if "report" in out[p]),
                  highlight=False)
    if "test" in parts:
        record_test_use(run_dir, "evaluate")
    return out


def _evaluation_baselines(run_dir: Path, cfg: RunConfig, data: PreparedData, part: str,
                          train_fingerprint: str, *, console: Console, show_progress: bool) -> list[Any]:
    """The run's stored baselines for ``part`` when the data and settings are the same (no refit),
    else fitted now (under a progress bar) and stored for the next evaluate."""
    from moola.evaluation import load_baseline_probabilities, save_baseline_probabilities

    key = baseline_key(cfg, data, part, train_fingerprint)
    path = baselines_path(run_dir, part)
    base, why = load_baseline_probabilities(path, key, data.y[part], data.classes)
    if base is not None:
        console.print(f"baselines on {part}: reused the run's ({', '.join(b.name for b in base)}; same "
                      f"training windows and {part} rows, fingerprints {key['train']}/{key['rows']})",
                      highlight=False, markup=False)
        return base
    console.print(f"baselines on {part}: fitting ({why})", highlight=False, markup=False)
    metrics_path = run_dir / "metrics.json"  # older runs may lack run.fit_seconds: then no comparison
    facts = read_json(metrics_path).get("run") if metrics_path.is_file() else None
    base = fit_baselines(cfg, data, part, console=console, show_progress=show_progress,
                         model_seconds=facts.get("fit_seconds") if isinstance(facts, dict) else None)
    save_baseline_probabilities(path, base, key)
    return base


def _evaluation_report(run_dir: Path, part: str, cfg: RunConfig, data: PreparedData, proba: np.ndarray,
                       metrics: dict[str, Any], base: Sequence[Any], console: Console) -> Path:
    """``RUN/evaluation_<part>/report.html``: the verdict against the baselines on these rows first,
    with the run's own learning curves; the verdict's lines are printed too."""
    from moola.evaluation import write_run_report
    from moola.training import read_history

    out = run_dir / f"evaluation_{part}"
    report = write_run_report(
        out, history=read_history(run_dir), metrics=metrics, classes=data.classes, y_true=data.y[part],
        proba=proba, baseline_table=base, title=f"{cfg.name}: evaluation on the {part} split "
        f"({len(data.y[part]):,} windows of {cfg.data.feature_set}, {cfg.data.task})")
    for line in read_json(out / "metrics.json")["verdict"]["lines"]:
        console.print(line, style="bold", highlight=False, markup=False)
    return report


def eval_batch_size(n: int, batch_size: int) -> int:
    """``batch_size``, grown until no batch holds fewer than MIN_BATCH rows (a 1-3 row matmul
    takes another CPU kernel with other last bits; the Predictor pads its short batches), so
    the scored probabilities and ``moola predict``'s are the same numbers."""
    from moola.inference import MIN_BATCH

    while n > batch_size and 0 < n % batch_size < MIN_BATCH:
        batch_size += 1
    return batch_size


def config_reference() -> str:
    """The text of docs/configs.md, generated from the config classes."""
    from moola.config import schema_markdown

    return (
        "# Run config reference (`moola train --config FILE.yaml [key=value ...]`)\n\n"
        "Every key is typed; unknown keys are errors, and a bad file lists every problem at once,\n"
        "naming the keys. Overrides use dotted keys with YAML values: `train.epochs=5`,\n"
        "`train.optimizer.lr=3e-4`, `baselines=[majority,logistic]`. The run directory receives\n"
        "the resolved config (preset expanded into `model`) as `config.yaml`; `moola train\n"
        "--config RUN/config.yaml` reproduces the run. Example:\n"
        "[configs/train_demo.yaml](../configs/train_demo.yaml).\n\n"
        "`moola train` computes its features itself, `data.feature_set` from the store's bars, by\n"
        "the code path serving uses too; a `moola features build` file is for inspection and other\n"
        "tools, and train does not read it.\n\n"
        "Generated from the config classes by `moola.pipelines.train.config_reference()`; a test\n"
        "keeps this file current.\n\n"
        "## RunConfig\n\n" + schema_markdown(RunConfig)
        + "\n## ModelConfig (`model:`; or name a `preset:` and it is filled in)\n\n"
        + schema_markdown(ModelConfig)
        + "\n## EconomicsConfig (`economics:`; binary direction tasks, `economics: null` turns it off)\n\n"
        + schema_markdown(EconomicsConfig)
    )
