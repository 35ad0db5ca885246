"""Batch prediction rows/s: the whole ``moola predict`` a user waits for (``run_predict``: read
the store, compute the run's features, cut every window, normalise, run the model, calibrate,
write Parquet), against the model's forward pass alone over the same pre-made windows, measured
in the same run.

A ``direction_lstm`` run is trained for one epoch on 60-bar ``crypto39`` windows of the bundled
BTC/USD minutes (the weights do not change the cost), then both are timed ``repeats`` times
(min and median) at batch 256 on CPU.

Usage: python benchmarks/bench_predict.py [--threads 2] [--repeats 3] [--preset direction_lstm]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from moola.inference import Predictor
from moola.pipelines.predict import run_predict
from moola.pipelines.train import RunConfig, run_train


def trained_run(tmp: Path, preset: str, threads: int) -> tuple[Path, Path]:
    """A one-epoch direction run on the bundled minutes; (run dir, its store)."""
    cfg = RunConfig.from_dict({
        "name": "bench_predict", "out_dir": str(tmp), "preset": preset,
        "data": {"bundled": "btcusd_1m", "timeframe": "1m", "feature_set": "crypto39", "window": 60,
                 "stride": 10, "task": "direction", "horizon": 5},
        "train": {"epochs": 1, "batch_size": 256, "device": "cpu", "num_threads": threads},
        "baselines": ["majority"], "economics": None,
    })
    out = run_train(cfg, console=Console(quiet=True), show_progress=False)
    from moola.training.manifest import read_manifest

    return out.run_dir, Path(read_manifest(out.run_dir).store or "")


def forward_rate(pred: Predictor, x: np.ndarray, batch: int) -> float:
    """Rows/s of the model alone on pre-normalised (N, T, F) windows (the reference)."""
    xt = torch.from_numpy(x)
    pred.model_.eval()
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(xt), batch):
            pred.model_({"x": xt[i:i + batch]})
    return len(xt) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--preset", default="direction_lstm")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        run_dir, store = trained_run(tmp, args.preset, args.threads)
        pred = Predictor.from_dir(run_dir)
        frame = pred.predict_frame(store)
        rows = frame.height
        # the same windows, featurised and normalised once, for the forward-only reference
        from moola.datasets import WindowSet

        bars, tf = pred.load_bars(store)
        ws = WindowSet.from_matrix(pred.features(bars, tf), pred.window_)
        x = ws.batch(np.arange(len(ws)))
        if pred.normalizer_ is not None:
            x = np.ascontiguousarray(pred.normalizer_.transform(x), dtype=np.float32)
        whole, bare = [], []
        for _ in range(args.repeats):  # alternate so drift hits both alike
            t0 = time.perf_counter()
            run_predict(run_dir, store, tmp / "pred.parquet")
            whole.append(rows / (time.perf_counter() - t0))
            bare.append(forward_rate(pred, x, pred.batch_size))
    print(f"torch {torch.__version__}, {args.threads} threads, {args.preset}, {rows:,} windows of "
          f"60x{x.shape[2]} (bundled BTC/USD 1m, every window)")
    print("| what | rows/s min | rows/s median |")
    print("|---|---|---|")
    print(f"| moola predict (store -> features -> windows -> model -> Parquet) | {min(whole):,.0f} | "
          f"{statistics.median(whole):,.0f} |")
    print(f"| reference: model forward only, pre-made windows | {min(bare):,.0f} | "
          f"{statistics.median(bare):,.0f} |")


if __name__ == "__main__":
    main()
