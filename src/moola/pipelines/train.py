"""The train recipe: setup (data -> windows -> split -> normaliser -> model), train, evaluate
against baselines on the same split, save a self-describing run directory."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from rich.console import Console

from moola.config import Config, config_hash
from moola.datasets.tasks import (
    DataConfig,
    prepare_data,
    resolve_store,
)
from moola.models import ModelConfig, build_model, count_parameters, preset_config
from moola.pipelines._progress import frame_table
from moola.refs import resolve_ref
from moola.tracking import MlflowCallback, Tracker, TrackingOptions
from moola.training import (
    Callback,
    ClassificationObjective,
    DirectionObjective,
    FreezeSchedule,
    Objective,
    RegressionObjective,
    TensorData,
    TrainConfig,
    Trainer,
    balanced_class_weights,
    data_fingerprint,
    seed_everything,
    write_meta,
)
from moola.training.checkpoint import atomic_write_json


class RunConfig(Config):
    """Everything a run needs; written resolved (model filled in) to RUN/config.yaml."""

    name: str = "run"
    out_dir: str = "runs"
    data: DataConfig = DataConfig()
    preset: str | None = "simple_lstm"
    model: ModelConfig | None = None
    train: TrainConfig = TrainConfig()
    baselines: list[Literal["majority", "logistic", "minirocket"]] = Field(
        default_factory=lambda: ["majority", "logistic", "minirocket"])
    pretrained_encoder: str | None = None  # a `moola pretrain` output directory
    transfer_mode: Literal["full", "forward-only"] = "full"
    freeze_epochs: int = Field(0, ge=0)  # keep transferred tensors frozen this many epochs
    encoder_lr_mult: float = Field(1.0, gt=0)  # transferred tensors train at lr x this

    @model_validator(mode="after")
    def _one_model(self) -> RunConfig:
        if self.preset is None and self.model is None:
            raise ValueError("set either 'preset' or 'model'")
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name


def check_encoder_schema(encoder_dir: str | Path, feature_set: str) -> None:
    """Refuse an encoder pretrained on other features before anything is scaled or trained."""
    from moola.features import get_feature_set, schema_hash
    from moola.models import IncompatibleEncoderError, read_encoder_dir

    spec, _ = read_encoder_dir(encoder_dir)
    fs = get_feature_set(feature_set)
    want = schema_hash(fs.name, tuple(fs.names), dict(fs.params))
    if spec.feature_schema_hash is not None and spec.feature_schema_hash != want:
        raise IncompatibleEncoderError(
            f"encoder {encoder_dir} was pretrained on feature schema {spec.feature_schema_hash} "
            f"({spec.feature_set}) but this run uses {want} ({feature_set}): features differ"
        )


def resolve_model(cfg: RunConfig, n_features: int, n_classes: int) -> ModelConfig:
    if cfg.model is not None:
        return cfg.model
    assert cfg.preset is not None
    return preset_config(cfg.preset, n_features=n_features,
                         n_classes=n_classes if n_classes else None)


def make_objective(model_cfg: ModelConfig, train_cfg: TrainConfig, y_train: np.ndarray,
                   n_classes: int) -> Objective:
    """The objective follows the model's head: classifier, direction logit or regression."""
    loss = train_cfg.loss
    if model_cfg.classifier is not None:
        if loss.class_weights == "balanced":
            w = balanced_class_weights(y_train, n_classes)
        elif isinstance(loss.class_weights, list):
            w = torch.tensor(loss.class_weights, dtype=torch.float32)
        else:
            w = None
        return ClassificationObjective(n_classes, class_weights=w, focal_gamma=loss.focal_gamma,
                                       label_smoothing=loss.label_smoothing,
                                       pointer_weight=loss.pointer_weight)
    if model_cfg.direction is not None:
        pos_weight = None
        if loss.class_weights == "balanced":
            p = float(np.mean(y_train))
            pos_weight = (1 - p) / max(p, 1e-9)
        return DirectionObjective(pos_weight=pos_weight, label_smoothing=loss.label_smoothing)
    if model_cfg.regression is not None:
        return RegressionObjective()
    raise ValueError("model has no head the train recipe can optimise (classifier/direction/regression)")


@dataclass
class TrainOutcome:
    run_dir: Path
    metrics: dict
    report: Path | None
    warnings: list[str]


def run_train(cfg: RunConfig, *, console: Console | None = None, show_progress: bool = True,
              resume: bool = False, callbacks: Sequence[Callback] = (),
              tracking: TrackingOptions | None = None) -> TrainOutcome:
    """Setup -> train -> evaluate (with baselines) -> save, recorded as one MLflow run.

    ``callbacks`` join the recipe's own (sweeps report progress, tuning reports to a pruner);
    this is the one training function behind ``train``, ``sweep`` and ``tune``.
    """
    with Tracker("train", tracking, run_name=cfg.name) as tracker:
        return _run_train(cfg, tracker, console=console, show_progress=show_progress, resume=resume,
                          extra_callbacks=callbacks)


def _run_train(cfg: RunConfig, tracker: Tracker, *, console: Console | None, show_progress: bool,
               resume: bool, extra_callbacks: Sequence[Callback]) -> TrainOutcome:
    from moola.evaluation import baseline_table, classification_metrics, run_baselines, write_run_report
    from moola.evaluation.calibration import TemperatureScaler

    console = console or Console()
    t0 = time.perf_counter()
    if cfg.pretrained_encoder is not None:  # sweep:NAME:best -> the directory, recorded as such
        cfg = cfg.model_copy(update={"pretrained_encoder": resolve_ref(cfg.pretrained_encoder)})
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    store_dir = resolve_store(cfg.data, Path(cfg.out_dir))
    enc_norm = None
    if cfg.pretrained_encoder is not None:
        check_encoder_schema(cfg.pretrained_encoder, cfg.data.feature_set)
        if (Path(cfg.pretrained_encoder) / "normalizer.json").is_file():
            from moola.datasets import load_scaler

            # the encoder saw inputs scaled like this during pretraining
            enc_norm = load_scaler(Path(cfg.pretrained_encoder) / "normalizer.json")
    data = prepare_data(cfg.data, store_dir, normalizer=enc_norm)  # type: ignore[arg-type]
    n_features = data.x["train"].shape[2]
    n_classes = len(data.classes)
    model_cfg = resolve_model(cfg, n_features, n_classes)
    resolved = cfg.model_copy(update={"model": model_cfg, "preset": cfg.preset})
    resolved.to_yaml(run_dir / "config.yaml")
    tracker.log_params(resolved.flat())
    seed_everything(cfg.train.seed)
    model = build_model(model_cfg)
    n_params = count_parameters(model)
    callbacks: list[Callback] = [MlflowCallback(tracker), *extra_callbacks]
    param_groups = None
    if cfg.pretrained_encoder is not None:
        from moola.models import param_groups as make_groups
        from moola.models import transfer_encoder

        report = transfer_encoder(model, cfg.pretrained_encoder, cfg.transfer_mode,
                                  expected_schema_hash=data.schema_hash)
        console.print(str(report), highlight=False, markup=False)
        (run_dir / "transfer_report.txt").write_text(str(report) + "\n")
        names = report.transferred_names
        lr = cfg.train.optimizer.lr
        param_groups = make_groups(model, names, base_lr=lr, encoder_lr=lr * cfg.encoder_lr_mult)
        if cfg.freeze_epochs:
            callbacks.append(FreezeSchedule(set(names), cfg.freeze_epochs))
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
                      "moola.feature_set": cfg.data.feature_set, "moola.run_dir": str(run_dir.resolve()),
                      "moola.config_hash": config_hash(resolved)})
    write_meta(
        run_dir,
        feature_set=cfg.data.feature_set,
        feature_names=list(data.feature_names),
        feature_schema_hash=data.schema_hash,
        data_fingerprint=fingerprint,
        store=str(store_dir),
        classes=data.classes,
        n_params=n_params,
        n_train=len(data.y["train"]),
    )
    objective = make_objective(model_cfg, cfg.train, data.y["train"], n_classes)
    tensors = {k: TensorData({"x": data.x[k], "y": data.y[k]}) for k in ("train", "val", "test")}
    trainer = Trainer(model, objective, cfg.train, run_dir=run_dir, show_progress=show_progress,
                      console=console, callbacks=callbacks, param_groups=param_groups)
    fit = trainer.fit(tensors["train"], tensors["val"], resume=resume)

    test_loss, test_m, test_c = trainer.evaluate(tensors["test"])
    # the kept model's validation loss: what sweeps and tuning select on (never a test number)
    val_loss, val_m, val_c = trainer.evaluate(tensors["val"])
    run_facts: dict = {
        "val_loss": val_loss, "val": val_m,
        "test_loss": test_loss, "fit_seconds": fit.seconds, "epochs_run": len(fit.history),
        "best_epoch": None if fit.best_epoch is None else fit.best_epoch + 1,
        "warnings": fit.warnings, "n_params": n_params,
        "n_train": len(data.y["train"]), "n_val": len(data.y["val"]), "n_test": len(data.y["test"]),
    }
    report = None
    if n_classes:
        test_metrics = classification_metrics(data.y["test"], test_c["proba"], data.classes)
        # temperature scaling: fitted on the validation split only, reported beside raw
        ts = TemperatureScaler().fit(np.log(np.clip(val_c["proba"], 1e-12, 1)), data.y["val"])
        cal = ts.transform(np.log(np.clip(test_c["proba"], 1e-12, 1)))
        run_facts["test_calibrated"] = classification_metrics(data.y["test"], cal, data.classes)
        run_facts["temperature"] = float(ts.temperature_)
        base = run_baselines(data.x["train"], data.y["train"], data.x["test"], data.y["test"],
                             data.classes, which=tuple(cfg.baselines), seed=cfg.train.seed)
        console.print(frame_table(baseline_table(base, model_metrics=test_metrics),
                                  title="test split: model vs baselines"))
        run_facts["seconds_total"] = time.perf_counter() - t0
        report = write_run_report(
            run_dir, history=fit.history, metrics=test_metrics, classes=data.classes,
            y_true=data.y["test"], proba=test_c["proba"], baseline_table=base,
            title=f"{cfg.name}: {model_cfg.name} on {cfg.data.feature_set} ({cfg.data.task})",
            notes=fit.warnings + trainer.messages, extra={"run": run_facts},
        )
        console.print(f"report: {report}")
        metrics = json.loads((run_dir / "metrics.json").read_text())
    else:
        run_facts["seconds_total"] = time.perf_counter() - t0
        metrics = {"model": test_m, "run": run_facts}
        atomic_write_json(run_dir / "metrics.json", metrics)
    tracker.log_final(run_dir / "metrics.json")
    tracker.log_artifacts(run_dir)
    return TrainOutcome(run_dir, metrics, report, fit.warnings)


def run_evaluate(run_dir: str | Path, *, store: str | None = None, split: str = "test",
                 console: Console | None = None) -> dict:
    """Re-evaluate a saved run on its data (or another store with the same feature schema)."""
    from moola.datasets import load_scaler
    from moola.evaluation import baseline_table, classification_metrics, run_baselines
    from moola.training import from_checkpoint, read_meta

    console = console or Console()
    run_dir = Path(run_dir)
    cfg = RunConfig.from_yaml(run_dir / "config.yaml")
    if store is not None:
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"store": store})})
    meta = read_meta(run_dir)
    norm_path = run_dir / "normalizer.json"
    normalizer = load_scaler(norm_path) if norm_path.is_file() else None
    data = prepare_data(cfg.data, resolve_store(cfg.data, Path(cfg.out_dir)), normalizer=normalizer)
    if meta.get("feature_schema_hash") and meta["feature_schema_hash"] != data.schema_hash:
        raise ValueError(
            f"{run_dir}: feature schema hash {data.schema_hash} of the data differs from the "
            f"model's {meta['feature_schema_hash']} (features differ between training and now)"
        )
    model = from_checkpoint(run_dir)
    assert cfg.model is not None
    objective = make_objective(cfg.model, cfg.train, data.y["train"], len(data.classes))
    trainer = Trainer(model, objective, cfg.train.model_copy(update={"early_stopping": None}),
                      show_progress=False, console=console)
    parts = ("train", "val", "test") if split == "all" else (split,)
    out: dict = {}
    for part in parts:
        loss, m, c = trainer.evaluate(TensorData({"x": data.x[part], "y": data.y[part]}))
        entry: dict = {"loss": loss}
        if data.classes:
            entry["metrics"] = classification_metrics(data.y[part], c["proba"], data.classes)
            base = run_baselines(data.x["train"], data.y["train"], data.x[part], data.y[part],
                                 data.classes, which=tuple(cfg.baselines), seed=cfg.train.seed)
            table = baseline_table(base, model_metrics=entry["metrics"])
            console.print(f"[bold]{part}[/]")
            console.print(frame_table(table))
            entry["baselines"] = {b.name: b.metrics for b in base}
        else:
            entry["metrics"] = m
        out[part] = entry
    atomic_write_json(run_dir / f"evaluation_{split}.json", out)
    return out


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
        "Generated from the config classes by `moola.pipelines.train.config_reference()`; a test\n"
        "keeps this file current.\n\n"
        "## RunConfig\n\n" + schema_markdown(RunConfig)
        + "\n## ModelConfig (`model:`; or name a `preset:` and it is filled in)\n\n"
        + schema_markdown(ModelConfig)
    )
