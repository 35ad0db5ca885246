"""Ensemble files for ``moola predict --ensemble`` and ``moola evaluate --ensemble``: members
resolved (``models:/`` through the registry), loaded and checked (``moola.inference.Ensemble``),
a stacking combiner fitted on validation, and the ensemble scored on the members' test segment.

Segments come from the members' own data configs: each member's ``config.yaml`` data section is
prepared again (features, windows, the purged chronological split: exactly the rows and labels
``moola train`` used), and a row belongs to the ensemble's segment when it is one of the first
member's rows of that split and falls, for its symbol, within every other member's rows of the
same split (members with other windows or strides cut other rows of the same period). Bars are
read from the first member's store (``store`` overrides it) and every member predicts them with
its :class:`~moola.inference.Predictor`: the numbers ``moola predict --ensemble`` serves.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from moola._io import atomic_write, atomic_write_json
from moola.config import read_yaml_mapping
from moola.datasets.tasks import DataConfig, prepare_data, resolve_store
from moola.inference import Ensemble, EnsembleConfig, Predictor
from moola.registry import resolve_model_ref
from moola.training.manifest import read_manifest

SPLITS = ("train", "val", "test")


def load_ensemble(path: str | Path | EnsembleConfig, *, device: str = "cpu",
                  cache_dir: str | Path | None = None, store: str | Path | None = None) -> Ensemble:
    """The ensemble file at ``path`` (or an ensemble config), its members resolved and loaded;
    with ``weights: stacking`` the combiner is fitted on the members' validation rows
    (``store``: read those bars from another store than the first member's)."""
    if isinstance(path, EnsembleConfig):
        cfg, path = path, Path("ensemble")
    else:
        path = Path(path)
        cfg = EnsembleConfig.from_yaml(path)
    predictors = []
    for i, (name, m) in enumerate(zip(cfg.member_names(), cfg.members, strict=True)):
        try:
            predictors.append(Predictor.from_dir(resolve_model_ref(m.ref, cache_dir=cache_dir),
                                                 device=device))
        except (ValueError, FileNotFoundError) as e:
            raise ValueError(f"{path}: members[{i}] {name!r} ({m.ref}): {e}") from None
    ens = Ensemble.from_predictors(cfg, predictors)
    if cfg.weights == "stacking":
        val = split_frame(ens, "val", store=store)
        ens.fit(ens.member_proba(val), val["y"].to_numpy())
    return ens


def _store_dir(run_dir: Path, data: DataConfig, raw: dict[str, Any]) -> Path:
    """The store the run read: its manifest's (when it is still there), else its config's."""
    recorded = read_manifest(run_dir).store
    if data.store is None and recorded and Path(recorded).is_dir():
        return Path(recorded)
    return resolve_store(data, Path(str(raw.get("out_dir", "runs"))))


def member_data(run_dir: Path, store: str | Path | None = None) -> tuple[DataConfig, Path]:
    """A member's data config (``config.yaml``) and the store its bars come from."""
    raw = read_yaml_mapping(run_dir / "config.yaml")
    data = DataConfig.from_dict(raw.get("data") or {}, source=f"{run_dir / 'config.yaml'}: data")
    if store is not None:
        data = data.model_copy(update={"store": str(store)})
    return data, _store_dir(run_dir, data, raw)


def member_split_rows(run_dir: Path, split: str, store: str | Path | None = None,
                      _cache: dict[str, dict[str, pl.DataFrame]] | None = None) -> pl.DataFrame:
    """``symbol, ts, y``: the windows (last bar) and labels of one split of a member's run, as
    ``moola train`` cut them from its data config."""
    data_cfg, store_dir = member_data(run_dir, store)
    key = json.dumps([data_cfg.to_dict(), str(store_dir)], sort_keys=True, default=str)
    if _cache is not None and key in _cache:
        return _cache[key][split]
    # the normaliser does not change which rows or labels a split has: skip fitting one
    prepared = prepare_data(data_cfg.model_copy(update={"normalize": "none"}), store_dir)
    parts = {k: pl.DataFrame({"symbol": prepared.meta[k]["symbol"], "ts": prepared.meta[k]["end_ts"],
                              "y": np.asarray(prepared.y[k])}) for k in SPLITS}
    if _cache is not None:
        _cache[key] = parts
    return parts[split]


def segment_rows(ens: Ensemble, split: str, store: str | Path | None = None) -> pl.DataFrame:
    """``symbol, ts, y`` of the ensemble's ``split``: the first member's rows of it that lie,
    per symbol, within every other member's rows of the same split."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: choose one of {', '.join(SPLITS)} (or all)")
    cache: dict[str, dict[str, pl.DataFrame]] = {}
    dirs = [p.run_dir_ for p in ens.members_]
    rows = member_split_rows(dirs[0], split, store, cache)
    for d in dirs[1:]:
        other = member_split_rows(d, split, store, cache)
        span = other.group_by("symbol").agg(pl.col("ts").min().alias("_lo"), pl.col("ts").max().alias("_hi"))
        rows = (rows.join(span, on="symbol", how="inner")
                .filter(pl.col("ts").is_between(pl.col("_lo"), pl.col("_hi"))).drop("_lo", "_hi"))
    if rows.height == 0:
        raise ValueError(f"the members {ens.names_} share no {split} rows: their {split} segments "
                         "do not overlap in time (trained on other periods or symbols)")
    return rows


def split_frame(ens: Ensemble, split: str, *, store: str | Path | None = None) -> pl.DataFrame:
    """``symbol, ts, y`` and every member's calibrated probabilities on the segment's rows,
    predicted from the bars of the first member's store (or ``store``)."""
    rows = segment_rows(ens, split, store)
    _, bars_store = member_data(ens.members_[0].run_dir_, store)
    since = rows["ts"].min()
    assert isinstance(since, datetime)
    members = ens.member_frame(bars_store, since=since)
    out = rows.join(members, on=["symbol", "ts"], how="inner", maintain_order="left")
    if out.height < rows.height:
        raise ValueError(f"the members predict {out.height} of the {rows.height} {split} rows of "
                         f"{bars_store}: the store's bars differ from the ones the members were "
                         "trained on")
    return out


def run_ensemble_predict(path: str | Path, store: str | Path | pl.DataFrame, out: str | Path, *,
                         symbols: Sequence[str] | None = None, since: datetime | None = None,
                         device: str = "cpu", cache_dir: str | Path | None = None) -> pl.DataFrame:
    """Ensemble predictions on every (symbol, ts) all members predict from ``store``'s bars,
    written to ``out`` (Parquet, atomically): ``symbol, ts, proba_<class>`` and each member's
    ``member_<name>_proba_<class>``. A stacking combiner is fitted on the members' own
    validation data first, never on these bars."""
    ens = load_ensemble(path, device=device, cache_dir=cache_dir)
    bars = store if isinstance(store, pl.DataFrame) else Path(store)
    frame = ens.predict_frame(bars, symbols=symbols, since=since)
    atomic_write(Path(out), frame.write_parquet)
    return frame


def _combiner(ens: Ensemble) -> dict[str, Any]:
    if ens.weights_ is not None:
        return {"weights": "fixed",
                "weight": {n: float(w) for n, w in zip(ens.names_, ens.weights_, strict=True)}}
    assert ens.stacker_ is not None
    return {"weights": "stacking", "fitted_on": "val", "n_rows": ens.stacker_.n_rows,
            "intercept": ens.stacker_.intercept,
            "coef": {n: float(c) for n, c in zip(ens.names_, ens.stacker_.coef, strict=True)}}


def run_ensemble_evaluate(path: str | Path, *, out: str | Path, split: str = "test",
                          store: str | Path | None = None, device: str = "cpu",
                          cache_dir: str | Path | None = None) -> dict[str, Any]:
    """Score the ensemble (and each member on the same rows) on the members' ``split`` (or
    ``all``). Writes ``out/ensemble_evaluation_<split>.json`` and, per part,
    ``out/ensemble_evaluation_<part>_rows.parquet``: ``symbol, ts, y``, then the columns
    ``moola predict --ensemble`` writes, with the same numbers."""
    from moola.evaluation import classification_metrics

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ens = load_ensemble(path, device=device, cache_dir=cache_dir, store=store)
    parts = SPLITS if split == "all" else (split,)
    result: dict[str, Any] = {"ensemble": str(path), "members": dict(zip(ens.names_, ens.refs_, strict=True)),
                              "run_dirs": {n: str(p.run_dir_) for n, p in zip(ens.names_, ens.members_,
                                                                                 strict=True)},
                              "combiner": _combiner(ens)}
    for part in parts:
        members = split_frame(ens, part, store=store)
        rows = ens.frame(members.drop("y")).insert_column(2, members["y"])
        atomic_write(out / f"ensemble_evaluation_{part}_rows.parquet", rows.write_parquet)
        y = rows["y"].to_numpy()
        proba = rows.select([f"proba_{c}" for c in ens.classes_]).to_numpy()
        result[part] = {
            "n_rows": rows.height,
            "metrics": classification_metrics(y, proba, ens.classes_),
            "member_metrics": {n: classification_metrics(y, p, ens.classes_)
                               for n, p in zip(ens.names_, ens.member_proba(members), strict=True)},
        }
    atomic_write_json(out / f"ensemble_evaluation_{split}.json", result)
    return result
