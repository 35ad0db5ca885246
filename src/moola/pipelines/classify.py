"""``SequenceClassifier``: scikit-learn style fit/predict for any labeled series.

X is a float array (N, T, F) (or (N, F, T) with ``layout="NFT"``), a list of (T_i, F) arrays, or an
(N, T, F) array padded with NaN after each series' end; y is any labels (strings included). Inside:
the same presets, the one Trainer with its guards, temperature calibration on a validation split
when there is one, and a run directory that reloads with one call::

    clf = SequenceClassifier(preset="inception_compact").fit(X_train, y_train)
    clf.score(X_test, y_test)
    clf.save("runs/my_clf"); SequenceClassifier.load("runs/my_clf").predict(X_test)

Training length is counted in optimizer steps (``min_steps``), not passes over the data: a set of
36 series is one batch per epoch, and 60 epochs of it is 60 steps, which trains nothing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Self

import numpy as np
import torch
from torch import nn

from moola._io import atomic_write_json, atomic_write_text
from moola.config import ConfigError, apply_overrides
from moola.datasets.splits import stratified_split
from moola.evaluation.calibration import TemperatureScaler
from moola.models import ModelConfig, build_model, count_parameters, preset_config
from moola.training import OptimizerConfig, TrainConfig, Trainer, check_run_directory, run_directory
from moola.training.checkpoint import CONFIG, WEIGHTS, load_weights, save_weights
from moola.training.data import TensorData
from moola.training.manifest import MANIFEST, Manifest, read_manifest, write_manifest
from moola.training.objectives import ClassificationObjective, balanced_class_weights

__all__ = ["DEFAULT_PRESET", "PARAMS", "SequenceClassifier", "as_padded", "load_labeled_arrays",
           "run_train_arrays"]

# The default for a small labeled set: the preset that measured best in BENCHMARKS.md's
# small-data table (see docs/small_data.md), not the one with the best name.
DEFAULT_PRESET = "inception_compact"
Normalize = Literal["series", "feature", "none"]


def as_padded(X: Any, layout: Literal["NTF", "NFT"] = "NTF") -> tuple[np.ndarray, np.ndarray]:
    """(N, T, F) float32 zero-padded values and their (N, T) bool mask (True = a real step).

    Accepts an (N, T, F) array, an (N, T) array (one feature), a list of (T_i, F) arrays, or an
    array padded with NaN after each series' end; a NaN inside a series is an error naming it.
    """
    if isinstance(X, np.ndarray) and X.dtype == object:
        X = list(X)
    if isinstance(X, (list, tuple)):
        if not X:
            raise ValueError("X is empty: need at least one series")
        series = [_one_series(s, i, layout) for i, s in enumerate(X)]
        widths = {s.shape[1] for s in series}
        if len(widths) > 1:
            raise ValueError(f"every series needs the same number of features; got {sorted(widths)} "
                             f"(series 0 has {series[0].shape[1]})")
        T = max(s.shape[0] for s in series)
        out = np.full((len(series), T, series[0].shape[1]), np.nan, dtype=np.float32)
        for i, s in enumerate(series):
            out[i, : s.shape[0]] = s
    else:
        arr = np.asarray(X)
        if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
            raise TypeError(f"X has dtype {arr.dtype}; pass float values (N, T, F)")
        if arr.ndim == 2:
            arr = arr[:, :, None] if layout == "NTF" else arr[:, None, :]
        if arr.ndim != 3:
            raise ValueError(f"X must be (N, T, F), (N, T) or a list of (T_i, F) arrays; got shape "
                             f"{arr.shape}")
        out = np.ascontiguousarray(arr.transpose(0, 2, 1) if layout == "NFT" else arr, dtype=np.float32)
    if out.shape[0] == 0 or out.shape[1] == 0:
        raise ValueError(f"X has shape {out.shape}: need at least one series of at least one step")
    step_nan = np.asarray(np.isnan(out).any(axis=2))  # (N, T)
    if np.isinf(out).any():
        i, t, f = np.argwhere(np.isinf(out))[0]
        raise ValueError(f"X holds inf at series {i}, step {t}, feature {f}")
    lengths = np.where(step_nan.all(axis=1), 0, out.shape[1] - np.argmax(~step_nan[:, ::-1], axis=1))
    mask = np.arange(out.shape[1])[None, :] < lengths[:, None]
    bad = step_nan & mask  # a NaN before the series' last real step
    if bad.any():
        i, t = np.argwhere(bad)[0]
        raise ValueError(f"series {i} has NaN at step {t} before its last real step "
                         f"{int(lengths[i]) - 1}: only trailing padding may be NaN (fill or drop gaps)")
    if (lengths == 0).any():
        raise ValueError(f"series {int(np.argmax(lengths == 0))} has no real step (all NaN)")
    return np.where(mask[:, :, None], out, 0.0).astype(np.float32), mask


def _one_series(s: Any, i: int, layout: str) -> np.ndarray:
    a = np.asarray(s, dtype=np.float32)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"series {i} must be (T_i, F) or (T_i,); got shape {a.shape}")
    return a.T if layout == "NFT" else a


def _normalize(x: np.ndarray, mask: np.ndarray, how: Normalize,
               stats: dict[str, list[float]] | None) -> tuple[np.ndarray, dict[str, Any]]:
    """Per-series z-score over each series' real steps ("series"), or per-feature statistics
    fitted on the training set ("feature"); padded steps stay 0."""
    m = mask[:, :, None]
    if how == "none":
        return x, {"kind": "none"}
    if how == "series":
        n = np.maximum(m.sum(1, keepdims=True), 1)
        mu = (x * m).sum(1, keepdims=True) / n
        sd = np.sqrt((((x - mu) * m) ** 2).sum(1, keepdims=True) / n)
        z = np.where(m, (x - mu) / np.where(sd > 1e-8, sd, 1.0), 0.0)
        return z.astype(np.float32), {"kind": "series"}
    if stats is None:
        vals = x[mask]  # (real steps, F)
        mu_f, sd_f = vals.mean(0), vals.std(0)
        stats = {"center": mu_f.tolist(), "scale": np.where(sd_f > 1e-8, sd_f, 1.0).tolist()}
    c, s = np.asarray(stats["center"], np.float32), np.asarray(stats["scale"], np.float32)
    return np.where(m, (x - c) / s, 0.0).astype(np.float32), {"kind": "feature", **stats}


class SequenceClassifier:
    """Classify series with a moola preset; ``fit`` returns ``self``, learned state ends in ``_``.

    ``min_steps`` optimizer steps at least (epochs are raised to reach it); ``val_size`` > 0 holds
    out a stratified validation split for early stopping (never before ``min_steps``) and the
    calibration temperature; ``n_seeds`` > 1 trains an ensemble whose probabilities are averaged.
    ``overrides`` are dotted keys into the model and training configs, e.g.
    ``{"train.optimizer.lr": 3e-3, "model.encoder.depth": 3}``. ``pretrain_steps`` > 0 first
    trains the preset's recurrent encoder as a masked autoencoder on the training inputs plus any
    ``X_unlabeled`` given to ``fit`` (no labels), then every member starts from those weights.
    ``time_channel`` (None: on when the training series differ in length) adds t / T_train as an
    input channel at real steps: masking hides padding, and with it each series' length, which
    can be the signal (a short gesture is another gesture).
    """

    def __init__(
        self,
        preset: str = DEFAULT_PRESET,
        *,
        layout: Literal["NTF", "NFT"] = "NTF",
        normalize: Normalize = "series",
        min_steps: int = 1500,
        epochs: int = 40,
        batch_size: int | None = None,
        lr: float = 1e-3,
        val_size: float = 0.0,
        n_seeds: int = 1,
        class_weights: Literal["none", "balanced"] = "none",
        pretrain_steps: int = 0,
        time_channel: bool | None = None,
        device: str = "auto",
        random_state: int = 0,
        show_progress: bool = False,
        overrides: dict[str, Any] | None = None,
    ) -> None:
        self.preset = preset
        self.layout = layout
        self.normalize = normalize
        self.min_steps = min_steps
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.val_size = val_size
        self.n_seeds = n_seeds
        self.class_weights = class_weights
        self.pretrain_steps = pretrain_steps
        self.time_channel = time_channel
        self.device = device
        self.random_state = random_state
        self.show_progress = show_progress
        self.overrides = overrides

    # ------------------------------------------------------------------ configs
    def _configs(self, n_features: int, n_classes: int, n_train: int) -> tuple[ModelConfig, TrainConfig]:
        model = preset_config(self.preset, n_features=n_features, n_classes=n_classes)
        model.pointer = None  # no start/end bars in a labeled array
        bs = self.batch_size or int(np.clip(n_train // 10, 4, 16))  # Wang et al. / InceptionTime
        steps_per_epoch = math.ceil(n_train / bs)
        # the epochs the Trainer will run (min_steps raises them), for T_0 and patience below
        epochs = max(self.epochs, math.ceil(self.min_steps / steps_per_epoch))
        train: dict[str, Any] = {
            "epochs": self.epochs, "min_steps": self.min_steps, "batch_size": bs,
            "device": self.device, "seed": self.random_state,
            "optimizer": {"name": "adamw", "lr": self.lr, "weight_decay": 1e-2},
            "scheduler": {"name": "one_cycle", "pct_start": 0.1},
            "early_stopping": None, "loss": {"class_weights": self.class_weights},
        }
        if self.val_size > 0:  # patience counts only once min_steps have been taken
            train["early_stopping"] = {
                "metric": "val_loss", "mode": "min", "patience": max(5, epochs // 5),
                "restore_best": True}  # the Trainer starts counting once min_steps are taken
            train["scheduler"] = {"name": "cosine_warm_restarts", "T_0": epochs,
                                  "warmup_steps": min(100, self.min_steps // 10)}
        data = {"model": model.to_dict(), "train": train}
        if self.overrides:
            unknown = [k for k in self.overrides if k.split(".")[0] not in ("model", "train")]
            if unknown:
                raise ConfigError([f"override {k!r}: keys start with 'model.' or 'train.'" for k in unknown],
                                  "SequenceClassifier(overrides=...)")
            apply_overrides(data, [f"{k}={json.dumps(v)}" for k, v in self.overrides.items()])
        return (ModelConfig.from_dict(data["model"], source="SequenceClassifier model"),
                TrainConfig.from_dict(data["train"], source="SequenceClassifier train"))

    # ---------------------------------------------------------------------- fit
    def fit(self, X: Any, y: Sequence[Any] | np.ndarray, X_unlabeled: Any = None) -> Self:
        """Learn ``classes_``, ``models_`` (one per seed), ``temperature_`` and ``history_``;
        ``X_unlabeled`` feeds only the masked-autoencoder pretraining (``pretrain_steps``)."""
        x, mask = as_padded(X, self.layout)
        y_arr = np.asarray(y)
        if y_arr.ndim != 1 or y_arr.shape[0] != x.shape[0]:
            raise ValueError(f"y must be 1-D with one label per series: X has {x.shape[0]} series, "
                             f"y has shape {y_arr.shape}")
        self.classes_ = np.unique(y_arr)
        if self.classes_.size < 2:
            raise ValueError(f"y holds a single class ({self.classes_[0]!r}): nothing to classify")
        yi = np.searchsorted(self.classes_, y_arr).astype(np.int64)
        x, self.normalizer_ = _normalize(x, mask, self.normalize, None)
        self.n_features_in_, self.n_timesteps_ = x.shape[2], x.shape[1]
        lengths = mask.sum(1)
        self.time_channel_ = bool(lengths.min() != lengths.max()) if self.time_channel is None \
            else bool(self.time_channel)
        x = self._with_time(x, mask)
        tr, va = np.arange(len(yi)), np.array([], dtype=np.int64)
        if self.val_size > 0:
            tr, va = stratified_split(yi, self.val_size, seed=self.random_state)
        self.model_config_, self.train_config_ = self._configs(x.shape[2], self.classes_.size, len(tr))
        cw = balanced_class_weights(yi[tr], self.classes_.size) if self.class_weights == "balanced" else None
        train = TensorData({"x": x[tr], "valid": mask[tr], "y": yi[tr]})
        val = TensorData({"x": x[va], "valid": mask[va], "y": yi[va]}) if va.size else None
        self.models_: list[nn.Module] = []
        self.history_: list[list[dict[str, float]]] = []
        self.warnings_: list[str] = []
        encoder_state = None
        if self.pretrain_steps:
            pool = x[tr]
            if X_unlabeled is not None:
                xu, mu = as_padded(X_unlabeled, self.layout)
                xu = self._with_time(_normalize(xu, mu, self.normalize, None if self.normalize != "feature"
                                                else self.normalizer_)[0], mu)
                T = max(pool.shape[1], xu.shape[1])
                pool = np.concatenate([_pad_to(pool, T), _pad_to(xu, T)])
            encoder_state = self._pretrain(pool)
        for k in range(self.n_seeds):
            tc = self.train_config_.model_copy(update={"seed": self.random_state + k})
            torch.manual_seed(tc.seed)
            model = build_model(self.model_config_)
            if encoder_state is not None:
                missing = set(encoder_state) - set(model.state_dict())
                if missing:
                    raise RuntimeError(f"pretrained encoder keys absent from the model: "
                                       f"{sorted(missing)[:5]}")
                model.load_state_dict(encoder_state, strict=False)
            trainer = Trainer(model, ClassificationObjective(
                self.classes_.size, class_weights=cw, class_names=[str(c) for c in self.classes_]), tc,
                              show_progress=self.show_progress)
            res = trainer.fit(train, val)
            self.models_.append(model.eval())
            self.history_.append(res.history)
            self.warnings_.extend(f"seed {tc.seed}: {w}" for w in res.warnings)
        self.temperature_ = 1.0
        if va.size:  # one temperature for the averaged ensemble logits, fitted on validation only
            logits = self._logits(x[va], mask[va])
            self.temperature_ = float(TemperatureScaler().fit(logits, yi[va]).temperature_)
        self.n_params_ = count_parameters(self.models_[0])
        return self

    def _pretrain(self, pool: np.ndarray) -> dict[str, torch.Tensor]:
        """Masked-autoencoder pretraining of the preset's encoder on ``pool`` (N, T, F), already
        normalised; returns the ``encoder.*`` weights, named as in the classifier."""
        from moola.models import RNNEncoderConfig
        from moola.pretraining import (
            AugmentConfig,
            Augmenter,
            MaskConfig,
            MaskedReconstructionObjective,
            Normalize,
            pretrain_model,
        )

        enc = self.model_config_.encoder
        if not isinstance(enc, RNNEncoderConfig) or enc.patch != 1:
            raise ValueError(f"pretrain_steps needs a per-bar recurrent encoder (kind lstm or gru, "
                             f"patch 1); preset {self.preset!r} has {enc.kind!r}: use jade_compact, "
                             "jade or simple_lstm, or pretrain_steps=0")
        F_ = pool.shape[2]
        torch.manual_seed(self.random_state)
        mae = pretrain_model(enc, n_features=F_)
        objective = MaskedReconstructionObjective(MaskConfig(), Augmenter(AugmentConfig()),
                                                  Normalize(np.zeros(F_), np.ones(F_)))
        cfg = TrainConfig(epochs=1, min_steps=self.pretrain_steps, batch_size=min(32, len(pool)),
                          early_stopping=None, device=self.device, seed=self.random_state,
                          optimizer=OptimizerConfig(name="adamw", lr=1e-3))
        Trainer(mae, objective, cfg, show_progress=self.show_progress).fit(TensorData({"x": pool}))
        return mae.encoder_state_dict()

    # ------------------------------------------------------------------ predict
    def _check_fitted(self) -> None:
        if not hasattr(self, "models_"):
            raise RuntimeError("SequenceClassifier is not fitted: call fit(X, y) or "
                               "SequenceClassifier.load(dir)")

    @torch.no_grad()
    def _logits(self, x: np.ndarray, mask: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Mean log-probabilities over the members (a log of the geometric mean ensemble)."""
        out = []
        for model in self.models_:
            dev = next(model.parameters()).device
            parts = []
            for i in range(0, len(x), batch_size):
                b = {"x": torch.from_numpy(x[i:i + batch_size]).to(dev),
                     "valid": torch.from_numpy(mask[i:i + batch_size]).to(dev)}
                parts.append(torch.log_softmax(model(b)["logits"].float(), -1).cpu().numpy())
            out.append(np.concatenate(parts))
        return np.mean(out, axis=0)

    def _with_time(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """x with the t / T_train channel appended when ``time_channel_`` (0 at padding)."""
        if not self.time_channel_:
            return x
        t = np.arange(x.shape[1], dtype=np.float32)[None, :, None] / self.n_timesteps_
        return np.concatenate([x, np.where(mask[:, :, None], t, 0.0).astype(np.float32)], axis=2)

    def _inputs(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        x, mask = as_padded(X, self.layout)
        if x.shape[2] != self.n_features_in_:
            raise ValueError(f"X has {x.shape[2]} features per step; the classifier was fitted on "
                             f"{self.n_features_in_}")
        stats = None if self.normalizer_["kind"] != "feature" else self.normalizer_
        return self._with_time(_normalize(x, mask, self.normalize, stats)[0], mask), mask

    def predict_proba(self, X: Any) -> np.ndarray:
        """(N, C) calibrated probabilities, columns in ``classes_`` order."""
        self._check_fitted()
        x, mask = self._inputs(X)
        z = self._logits(x, mask) / self.temperature_
        z = z - z.max(1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(1, keepdims=True)

    def predict(self, X: Any) -> np.ndarray:
        """The most probable label per series, in the labels' own type."""
        proba = self.predict_proba(X)
        return np.asarray(self.classes_[proba.argmax(1)])

    def score(self, X: Any, y: Sequence[Any] | np.ndarray) -> float:
        """Accuracy on (X, y)."""
        return float(np.mean(self.predict(X) == np.asarray(y)))

    # --------------------------------------------------------------- save / load
    def save(self, path: str | Path) -> Path:
        """A run directory: one member per seed (config.yaml + weights, each loadable with
        ``moola.from_checkpoint``) and a manifest with classes, normaliser and temperature."""
        self._check_fitted()
        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        for k, model in enumerate(self.models_):
            d = root / f"member_{k}"
            d.mkdir(exist_ok=True)
            atomic_write_text(d / CONFIG, _yaml({"model": self.model_config_.to_dict(),
                                            "train": self.train_config_.to_dict()}))
            save_weights(model, d / WEIGHTS)
        params = {k: getattr(self, k) for k in PARAMS}
        manifest = Manifest(
            kind="train_run", feature_set="arrays",
            feature_names=[f"f{j}" for j in range(self.n_features_in_)], window=self.n_timesteps_,
            task="classification", classes=[str(c) for c in self.classes_],
            normalizer=self.normalizer_, temperature=self.temperature_, n_params=self.n_params_,
            torch_version=torch.__version__,
            extra={"sequence_classifier": {"params": params, "members": len(self.models_),
                                           "class_values": self.classes_.tolist(),
                                           "time_channel": self.time_channel_,
                                           "class_dtype": self.classes_.dtype.str}})
        write_manifest(root, manifest)
        atomic_write_json(root / "history.json", self.history_)
        return root

    @classmethod
    def load(cls, path: str | Path) -> SequenceClassifier:
        """The fitted classifier ``save`` wrote (no pickle: configs, safetensors and JSON)."""
        root = Path(path)
        if not (root / MANIFEST).is_file():
            raise FileNotFoundError(f"{root}: not a SequenceClassifier directory (no {MANIFEST})")
        m = read_manifest(root)
        info = m.extra.get("sequence_classifier")
        if info is None:
            raise ValueError(f"{root / MANIFEST}: not written by SequenceClassifier.save (no "
                             "extra.sequence_classifier); load a train run with moola.from_checkpoint")
        clf = cls(**info["params"])
        clf.classes_ = np.asarray(info["class_values"], dtype=np.dtype(info["class_dtype"]))
        clf.normalizer_, clf.temperature_ = m.normalizer or {"kind": "none"}, float(m.temperature or 1.0)
        clf.n_features_in_, clf.n_timesteps_ = len(m.feature_names), int(m.window or 0)
        clf.n_params_ = int(m.n_params or 0)
        clf.time_channel_ = bool(info["time_channel"])
        clf.models_, clf.history_, clf.warnings_ = [], [], []
        for k in range(int(info["members"])):
            d = root / f"member_{k}"
            data = _read_yaml(d / CONFIG)
            clf.model_config_ = ModelConfig.from_dict(data["model"], source=str(d / CONFIG))
            clf.train_config_ = TrainConfig.from_dict(data["train"], source=str(d / CONFIG))
            model = build_model(clf.model_config_)
            load_weights(model, d / WEIGHTS)
            clf.models_.append(model.eval())
        return clf

    def __repr__(self) -> str:
        fitted = f", fitted on {len(self.classes_)} classes" if hasattr(self, "classes_") else ""
        return f"SequenceClassifier(preset={self.preset!r}, n_seeds={self.n_seeds}{fitted})"


PARAMS = ("preset", "layout", "normalize", "min_steps", "epochs", "batch_size", "lr", "val_size",
           "n_seeds", "class_weights", "pretrain_steps", "time_channel", "device", "random_state",
           "show_progress", "overrides")


def _yaml(data: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)


def _read_yaml(p: Path) -> dict[str, Any]:
    import yaml

    data = yaml.safe_load(p.read_text())
    if not isinstance(data, dict) or "model" not in data or "train" not in data:
        raise ValueError(f"{p}: expected a mapping with 'model' and 'train' sections")
    return data


# --- labeled array files: ``moola train --arrays FILE`` ---------------------------------------


def load_labeled_arrays(path: str | Path) -> dict[str, Any]:
    """``X``/``y`` (and optionally ``X_test``/``y_test``) from a labeled-array file.

    ``.npz``: arrays ``X`` (N, T, F) or (N, T), NaN-padded for shorter series, and ``y`` (N,);
    ``.parquet``: long format, one row per step, columns ``series``, ``label``, optional
    ``split`` (train|test) and one float column per feature, steps in file order.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such labeled-array file")
    if p.suffix == ".npz":
        with np.load(p, allow_pickle=False) as z:
            keys = set(z.files)
            missing = {"X", "y"} - keys
            if missing:
                raise KeyError(f"{p}: missing array(s) {sorted(missing)}; found {sorted(keys)} "
                               "(need X (N, T, F) and y (N,); optional X_test, y_test)")
            if ("X_test" in keys) != ("y_test" in keys):
                raise KeyError(f"{p}: X_test and y_test come together; found {sorted(keys)}")
            return {k: z[k] for k in ("X", "y", "X_test", "y_test") if k in keys}
    if p.suffix == ".parquet":
        import polars as pl

        df = pl.read_parquet(p)
        need = {"series", "label"}
        if need - set(df.columns):
            raise KeyError(f"{p}: missing column(s) {sorted(need - set(df.columns))}; found "
                           f"{df.columns} (long format: series, label, [split], features...)")
        feats = [c for c in df.columns if c not in ("series", "label", "split")]
        bad = [c for c in feats if not df.schema[c].is_numeric()]
        if not feats or bad:
            raise TypeError(f"{p}: feature columns must be numeric; " + (
                f"non-numeric: {bad}" if bad else "there are none besides series/label/split"))
        out: dict[str, Any] = {}
        parts = df.partition_by("split", as_dict=True) if "split" in df.columns else {("train",): df}
        unknown = [k[0] for k in parts if k[0] not in ("train", "test")]
        if unknown:
            raise ValueError(f"{p}: column split holds {unknown}; valid values: train, test")
        for (name,), part in parts.items():
            groups = part.partition_by("series", maintain_order=True)
            labels = [g["label"].unique() for g in groups]
            mixed = [g["series"][0] for g, lab in zip(groups, labels, strict=True) if lab.len() != 1]
            if mixed:
                raise ValueError(f"{p}: series {mixed[:5]} carry more than one label")
            sfx = "" if name == "train" else "_test"
            out["X" + sfx] = [g.select(feats).to_numpy().astype(np.float32) for g in groups]
            out["y" + sfx] = np.asarray([lab[0] for lab in labels])
        if "X" not in out:
            raise ValueError(f"{p}: no rows with split = train")
        return out
    raise ValueError(f"{p}: unknown labeled-array format {p.suffix!r}; valid: .npz, .parquet")


def run_train_arrays(path: str | Path, out: str | Path, params: dict[str, Any], *,
                     overwrite: bool = False) -> dict[str, Any]:
    """Fit a SequenceClassifier on a labeled-array file, save it to ``out`` and, when the file
    has a test part, score it beside MiniRocket, logistic regression and the majority class.
    A directory ``out`` that already holds a run is refused (before fitting) unless ``overwrite``."""
    final = Path(out)
    check_run_directory(final, overwrite=overwrite)
    data = load_labeled_arrays(path)
    clf = SequenceClassifier(**params).fit(data["X"], data["y"])
    with run_directory(final, overwrite=overwrite) as root:
        clf.save(root)
        return _score_arrays(path, clf, data, root)


def _score_arrays(path: str | Path, clf: SequenceClassifier, data: dict[str, Any], root: Path
                  ) -> dict[str, Any]:
    """metrics.json of ``run_train_arrays``: the test part beside the baselines, when present."""
    from moola.evaluation.baselines import logistic_baseline, majority_baseline, minirocket_baseline

    metrics: dict[str, Any] = {"n_train": len(data["y"]), "classes": [str(c) for c in clf.classes_],
                               "preset": clf.preset, "n_params": clf.n_params_,
                               "warnings": clf.warnings_}
    if "X_test" in data:
        yte = np.asarray(data["y_test"])
        unseen = sorted(set(yte.tolist()) - set(clf.classes_.tolist()))
        if unseen:
            raise ValueError(f"{path}: y_test holds classes never seen in training: {unseen[:5]}")
        acc = clf.score(data["X_test"], yte)
        T = max(clf.n_timesteps_, as_padded(data["X_test"], clf.layout)[0].shape[1])
        stats = clf.normalizer_ if clf.normalize == "feature" else None  # baselines: zero padding
        xtr, xte = (_pad_to(_normalize(*as_padded(X_, clf.layout), clf.normalize, stats)[0], T)
                    for X_ in (data["X"], data["X_test"]))
        ytr_i = np.searchsorted(clf.classes_, np.asarray(data["y"]))
        yte_i = np.searchsorted(clf.classes_, yte)
        names = [str(c) for c in clf.classes_]
        base = {"majority": majority_baseline(xtr, ytr_i, xte, yte_i, names),
                "logistic": logistic_baseline(xtr, ytr_i, xte, yte_i, names)}
        if T >= 9:
            base["minirocket"] = minirocket_baseline(xtr, ytr_i, xte, yte_i, names)
        b_acc = {k: float(v.metrics["accuracy"]) for k, v in base.items()}
        best = max(b_acc, key=lambda k: b_acc[k])
        verdict = (f"the model {'beats' if acc > b_acc[best] else 'does not beat'} the best baseline "
                   f"({best} {b_acc[best]:.3f}) on the {len(yte)} test series: accuracy {acc:.3f}")
        metrics.update({"test_accuracy": acc, "baselines": b_acc, "verdict": verdict})
    atomic_write_json(root / "metrics.json", metrics)
    return metrics


def _pad_to(x: np.ndarray, T: int) -> np.ndarray:
    return np.pad(x, ((0, 0), (0, T - x.shape[1]), (0, 0))) if x.shape[1] < T else x
