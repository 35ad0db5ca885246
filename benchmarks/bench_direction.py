"""Training throughput of the intraday direction presets: the whole ``Trainer.fit()`` a user
waits for, against a bare PyTorch loop over the same tensors measured in the same run.

Real inputs: 60-bar ``crypto39`` windows of the bundled BTC/USD minutes (39 features, and their
first 31 columns for the seeds' 31-feature width). For ``direction_lstm``, ``direction_bilstm``
and ``direction_transformer`` at batch 32 and 256, fp32 and bf16: samples/s of one training
epoch (``repeats`` times, min and median), and the seeds' reference figure per core.

Usage: python benchmarks/bench_direction.py [--threads 2] [--repeats 3] [--samples 4096]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console

from moola.datasets.tasks import DataConfig, prepare_data, resolve_store
from moola.models import build_model, count_parameters, preset_config
from moola.training import DirectionObjective, TensorData, TrainConfig, Trainer

PRESETS = ("direction_lstm", "direction_bilstm", "direction_transformer")
SEEDS_SAMPLES_PER_S, SEEDS_CORES = 2240.0, 6  # the seeds' 62k-parameter model on about 6 cores


def windows(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, 60, 39) normalised crypto39 windows and their next-bar direction labels."""
    cfg = DataConfig(bundled="btcusd_1m", feature_set="crypto39", window=60, stride=1)
    with tempfile.TemporaryDirectory() as tmp:
        data = prepare_data(cfg, resolve_store(cfg, Path(tmp)))
    return data.x["train"][:n], data.y["train"][:n]


def fit_rate(preset: str, x: np.ndarray, y: np.ndarray, batch: int, precision: str) -> float:
    """Samples/s of one epoch of ``Trainer.fit`` (no validation, no guards' extra passes)."""
    torch.manual_seed(0)
    model = build_model(preset_config(preset, n_features=x.shape[2]))
    cfg = TrainConfig.from_dict({"epochs": 1, "batch_size": batch, "device": "cpu",
                                 "precision": precision, "early_stopping": None,
                                 "guards": {"train_eval_samples": 1}})
    trainer = Trainer(model, DirectionObjective(), cfg, show_progress=False,
                      console=Console(quiet=True))
    t0 = time.perf_counter()
    trainer.fit(TensorData({"x": x, "y": y}))
    return len(x) / (time.perf_counter() - t0)


def bare_rate(preset: str, x: np.ndarray, y: np.ndarray, batch: int, precision: str) -> float:
    """The reference: the same model and optimiser in a plain loop over pre-made tensors."""
    torch.manual_seed(0)
    model = build_model(preset_config(preset, n_features=x.shape[2])).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y).float()
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    t0 = time.perf_counter()
    for i in range(0, len(xt), batch):
        with ctx:
            out = model({"x": xt[i:i + batch]})["direction"]
            loss = F.binary_cross_entropy_with_logits(out.float(), yt[i:i + batch])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return len(xt) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--samples", type=int, default=4096)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x39, y = windows(args.samples)
    inputs = {31: np.ascontiguousarray(x39[:, :, :31]), 39: x39}
    print(f"torch {torch.__version__}, {args.threads} threads, {len(y)} real 60-bar windows; "
          f"seeds' reference {SEEDS_SAMPLES_PER_S:,.0f} samples/s on ~{SEEDS_CORES} cores = "
          f"{SEEDS_SAMPLES_PER_S / SEEDS_CORES:,.0f} per core")
    print("| preset | F | params | batch | precision | moola fit() samples/s min / median | "
          "bare loop min / median | per core (median) |")
    print("|---|---|---|---|---|---|---|---|")
    for preset in PRESETS:
        for f, x in inputs.items():
            n_params = count_parameters(build_model(preset_config(preset, n_features=f)))
            for batch in (32, 256):
                for precision in ("fp32", "bf16"):
                    fit_r, bare_r = [], []
                    for _ in range(args.repeats):  # alternate so drift hits both alike
                        fit_r.append(fit_rate(preset, x, y, batch, precision))
                        bare_r.append(bare_rate(preset, x, y, batch, precision))
                    med = statistics.median(fit_r)
                    print(f"| {preset} | {f} | {n_params:,} | {batch} | {precision} | "
                          f"{min(fit_r):,.0f} / {med:,.0f} | {min(bare_r):,.0f} / "
                          f"{statistics.median(bare_r):,.0f} | {med / args.threads:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
