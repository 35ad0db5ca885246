"""The predict recipe: a trained run directory + a store of bars -> per-(symbol, ts) predictions."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import polars as pl

from moola._io import atomic_write
from moola.inference import Predictor
from moola.pipelines._ensemble import load_ensemble, run_ensemble_evaluate, run_ensemble_predict

# ensembles of runs (``moola predict/evaluate --ensemble``) live in the private helper
__all__ = ["load_ensemble", "run_ensemble_evaluate", "run_ensemble_predict", "run_predict"]


def run_predict(run_dir: str | Path, store: str | Path, out: str | Path, *,
                symbols: Sequence[str] | None = None, since: datetime | None = None,
                device: str = "cpu") -> pl.DataFrame:
    """Predict every complete window of the store's bars (ending at/after ``since``) and write
    them to ``out`` (Parquet, atomically): ``symbol, ts, proba_<class>, raw_proba_<class>`` or
    ``score``. The bars must match the run's timeframe, columns and feature schema."""
    frame = Predictor.from_dir(run_dir, device=device).predict_frame(Path(store), symbols=symbols,
                                                                    since=since)
    atomic_write(Path(out), frame.write_parquet)
    return frame
