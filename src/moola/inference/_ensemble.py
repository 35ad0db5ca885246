"""Ensembles of trained classification runs: a small YAML file naming the members (registry
references ``models:/NAME@ALIAS`` or run directories) and how their probabilities combine.

``fixed``: the weighted average of the members' calibrated (temperature-scaled) probabilities,
weights normalised to sum to 1 (equal weights when none is given). ``stacking`` (binary only):
P(up) = sigmoid(b + sum_m w_m * z_m), z_m the member's calibrated log-odds, ``w, b`` fitted by
L2 logistic regression on validation rows (the members' early stopping and temperature already
used validation; the test segment is never seen).

Members must agree on what they predict from what: feature set, feature schema, timeframe,
horizon, task, classes and label definition (a mismatch names the member, the field and both
values). Windows may differ: a longer window's first prediction comes later, so an ensemble
predicts on the (symbol, ts) rows every member predicts (an inner join).

References are resolved above this layer (``moola.pipelines`` reads the file and resolves
``models:/`` through the registry); here a member is a loaded :class:`Predictor`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import numpy as np
import polars as pl
from pydantic import Field, model_validator
from scipy.special import expit

from moola.config import Config
from moola.inference._predictor import BarsSource, Predictor, log_proba

__all__ = ["AGREEMENT_FIELDS", "Ensemble", "EnsembleConfig", "EnsembleMember", "EnsembleMismatchError",
           "Stacker", "check_agreement", "member_column"]

# manifest fields every member must share (window may differ: rows are inner-joined)
AGREEMENT_FIELDS = ("task", "classes", "feature_set", "feature_schema_hash", "timeframe", "horizon",
                    "label")


class EnsembleMismatchError(ValueError):
    """Members whose manifests disagree on what they predict from what."""


@dataclass(frozen=True)
class Stacker:
    """The fitted stacking combiner: P(up) = sigmoid(intercept + z @ coef), z the members'
    calibrated log-odds; ``n_rows`` validation rows it was fitted on."""

    coef: np.ndarray
    intercept: float
    n_rows: int


def _default_name(ref: str) -> str:
    """``models:/NAME@ALIAS`` and ``models:/NAME/VERSION`` -> NAME; a directory -> its name."""
    body = ref.removeprefix("models:/").rstrip("/")
    base = re.split(r"[@/]", body, maxsplit=1)[0] if ref.startswith("models:/") else body.rsplit("/", 1)[-1]
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", base) or "member"


class EnsembleMember(Config):
    """One member: where it is, its weight (fixed weights) and the name its columns carry."""

    ref: str = Field(min_length=1, description=(
        "models:/NAME@ALIAS, models:/NAME/VERSION or a run directory written by moola train"))
    weight: float | None = Field(None, gt=0, description=(
        "fixed weights only: > 0, normalised over the members; all members or none (equal)"))
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.+-]+$", description=(
        "column suffix (member_NAME_proba_CLASS); default: the model name or directory name"))


class EnsembleConfig(Config):
    """An ensemble file (docs/registry.md, configs/ensemble_example.yaml)."""

    members: list[EnsembleMember] = Field(min_length=2, description="two or more members")
    weights: Literal["fixed", "stacking"] = Field("fixed", description=(
        "fixed: weighted average of calibrated probabilities; stacking: logistic regression on "
        "the members' calibrated log-odds, fitted on validation (binary tasks only)"))
    stacking_c: float = Field(1.0, gt=0, description="stacking: inverse L2 strength (sklearn's C)")

    @model_validator(mode="after")
    def _consistent(self) -> EnsembleConfig:
        problems: list[str] = []
        weighted = [i for i, m in enumerate(self.members) if m.weight is not None]
        if self.weights == "stacking" and weighted:
            problems.append(f"members {weighted}: weights: stacking fits the weights on validation; "
                            "remove 'weight' or use weights: fixed")
        if self.weights == "fixed" and weighted and len(weighted) != len(self.members):
            missing = [i for i in range(len(self.members)) if i not in weighted]
            problems.append(f"members {missing}: no weight while members {weighted} have one; give "
                            "every member a weight, or none for equal weights")
        names = self.member_names()
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            problems.append(f"member names {dup} repeat ({names}); give members distinct 'name's")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def member_names(self) -> list[str]:
        return [m.name or _default_name(m.ref) for m in self.members]

    def normalised_weights(self) -> np.ndarray | None:
        """(M,) fixed weights summing to 1; None for stacking."""
        if self.weights == "stacking":
            return None
        w = np.array([1.0 if m.weight is None else m.weight for m in self.members], dtype=np.float64)
        return w / w.sum()


def member_column(name: str, cls: str) -> str:
    return f"member_{name}_proba_{cls}"


class Ensemble:
    """Members' calibrated probabilities -> one probability per class.

    scikit-learn style: ``__init__`` stores the config; :meth:`from_predictors` checks and holds
    the members (``members_``, ``names_``, ``refs_``, ``classes_``, ``weights_`` for fixed);
    :meth:`fit` (stacking only) learns ``stacker_`` (a :class:`Stacker`).
    """

    members_: list[Predictor]
    names_: list[str]
    refs_: list[str]
    classes_: list[str]
    weights_: np.ndarray | None
    stacker_: Stacker | None

    def __init__(self, config: EnsembleConfig) -> None:
        self.config = config

    @classmethod
    def from_predictors(cls, config: EnsembleConfig, predictors: Sequence[Predictor]) -> Ensemble:
        """Members in the config's order; refused when their manifests disagree."""
        self = cls(config)
        if len(predictors) != len(config.members):
            raise ValueError(f"{len(config.members)} members in the config, {len(predictors)} predictors")
        names, refs = config.member_names(), [m.ref for m in config.members]
        check_agreement(predictors, names, refs)
        classes = predictors[0].classes_
        if not classes:
            raise EnsembleMismatchError(
                f"member {names[0]!r} ({refs[0]}): task {predictors[0].manifest_.task!r} has no "
                "classes; ensembles combine class probabilities")
        if config.weights == "stacking" and len(classes) != 2:
            raise ValueError(f"weights: stacking fits P({classes[-1]}) from log-odds and needs a binary "
                             f"task; the members predict {len(classes)} classes {classes}: use "
                             "weights: fixed")
        self.members_ = list(predictors)
        self.names_ = names
        self.refs_ = refs
        self.classes_ = list(classes)
        self.weights_ = config.normalised_weights()
        self.stacker_ = None
        return self

    # ------------------------------------------------------------------ combining
    def fit(self, member_proba: Sequence[np.ndarray], y: np.ndarray) -> Ensemble:
        """Stacking: fit the logistic combiner on validation rows (``member_proba``: each
        member's (N, 2) calibrated probabilities; ``y``: (N,) class indices)."""
        if self.config.weights != "stacking":
            raise ValueError("weights: fixed: the weights are given, nothing is fitted")
        from sklearn.linear_model import LogisticRegression

        y = np.asarray(y)
        if len(np.unique(y)) < 2:
            raise ValueError(f"stacking needs both classes in the validation rows; got only {np.unique(y)}")
        z = self._log_odds(member_proba)
        lr = LogisticRegression(C=self.config.stacking_c, max_iter=1000).fit(z, y)
        self.stacker_ = Stacker(lr.coef_[0].astype(np.float64), float(lr.intercept_[0]), len(y))
        return self

    @staticmethod
    def _log_odds(member_proba: Sequence[np.ndarray]) -> np.ndarray:
        """(N, M) log p_up - log p_down of each member's calibrated probabilities."""
        return np.stack([log_proba(p[:, 1]) - log_proba(p[:, 0]) for p in member_proba], axis=1)

    def combine(self, member_proba: Sequence[np.ndarray]) -> np.ndarray:
        """(N, C) ensemble probabilities from each member's (N, C) calibrated probabilities."""
        if len(member_proba) != len(self.members_):
            raise ValueError(f"{len(member_proba)} probability arrays for {len(self.members_)} members")
        if self.weights_ is not None:
            out = np.zeros_like(np.asarray(member_proba[0], dtype=np.float64))
            for w, p in zip(self.weights_, member_proba, strict=True):
                out = out + w * np.asarray(p, dtype=np.float64)
            return out
        if self.stacker_ is None:
            raise ValueError("weights: stacking: fit the ensemble on validation rows first (Ensemble.fit)")
        up = expit(self._log_odds(member_proba) @ self.stacker_.coef + self.stacker_.intercept)
        return np.stack([1 - up, up], axis=1)

    # ------------------------------------------------------------------ predicting
    def member_frame(self, bars: BarsSource, *, symbols: Sequence[str] | None = None,
                     since: datetime | None = None) -> pl.DataFrame:
        """``symbol, ts`` and every member's calibrated ``member_<name>_proba_<class>`` on the
        rows all members predict (inner join), sorted by symbol and ts."""
        joined: pl.DataFrame | None = None
        for name, p in zip(self.names_, self.members_, strict=True):
            f = p.predict_frame(bars, symbols=symbols, since=since)
            f = f.select("symbol", "ts", *[pl.col(f"proba_{c}").alias(member_column(name, c))
                                           for c in self.classes_])
            joined = f if joined is None else joined.join(f, on=["symbol", "ts"], how="inner")
        assert joined is not None
        if joined.height == 0:
            raise ValueError(f"the members {self.names_} predict no (symbol, ts) row in common")
        return joined.sort("symbol", "ts")

    def member_proba(self, frame: pl.DataFrame) -> list[np.ndarray]:
        """Each member's (N, C) calibrated probabilities from a :meth:`member_frame`."""
        return [frame.select([member_column(n, c) for c in self.classes_]).to_numpy().astype(np.float64)
                for n in self.names_]

    def frame(self, members: pl.DataFrame) -> pl.DataFrame:
        """``symbol, ts, proba_<class>`` (the ensemble), then the members' columns."""
        proba = self.combine(self.member_proba(members))
        ens = [pl.Series(f"proba_{c}", proba[:, k]) for k, c in enumerate(self.classes_)]
        return members.select("symbol", "ts").with_columns(ens).hstack(members.drop("symbol", "ts"))

    def predict_frame(self, bars: BarsSource, *, symbols: Sequence[str] | None = None,
                      since: datetime | None = None) -> pl.DataFrame:
        """Per (symbol, ts) ensemble probabilities ``proba_<class>`` and each member's
        ``member_<name>_proba_<class>``, on the rows every member predicts."""
        return self.frame(self.member_frame(bars, symbols=symbols, since=since))

    def __repr__(self) -> str:
        if not hasattr(self, "members_"):
            return f"Ensemble({len(self.config.members)} members, {self.config.weights})"
        if self.weights_ is not None:
            how = ", ".join(f"{n} {w:.3g}" for n, w in zip(self.names_, self.weights_, strict=True))
        elif self.stacker_ is not None:
            how = "stacking " + ", ".join(
                f"{n} {c:.3g}" for n, c in zip(self.names_, self.stacker_.coef, strict=True))
        else:
            how = "stacking (not fitted)"
        return f"Ensemble({how}; classes {self.classes_})"


def check_agreement(predictors: Sequence[Predictor], names: Sequence[str], refs: Sequence[str]) -> None:
    """Every member's manifest agrees with the first member's on :data:`AGREEMENT_FIELDS`;
    otherwise one error listing each disagreeing member, field and both values."""
    first = predictors[0].manifest_
    problems = []
    for name, ref, p in zip(names[1:], refs[1:], predictors[1:], strict=True):
        for f in AGREEMENT_FIELDS:
            want, have = getattr(first, f), getattr(p.manifest_, f)
            if want != have:
                problems.append(f"member {name!r} ({ref}): {f} is {have!r}, member {names[0]!r} "
                                f"({refs[0]}) has {want!r}")
    if problems:
        raise EnsembleMismatchError(
            f"ensemble members disagree on what they predict from what ({len(problems)} difference(s)):\n"
            + "\n".join(f"  - {p}" for p in problems))
