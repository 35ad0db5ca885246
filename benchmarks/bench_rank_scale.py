"""Whole-step timings of the ranking journey at the seeds' size: a synthetic daily panel of
``--stocks`` stocks x ``--years`` years (4,484 x 10 by default, about 8.9M present rows) with
``--features`` (112) feature columns is prepared (processors fitted on the training dates, per-date
label ranks), cached (Arrow IPC), reloaded (memory-mapped: min and median of ``--repeat``) and a
graph model is trained for ``--epochs`` epoch(s) through the Trainer; peak RSS after each step.

    python benchmarks/bench_rank_scale.py                      # the seeds' size
    python benchmarks/bench_rank_scale.py --stocks 489 --years 5   # the shared panel's size

Synthetic values (MA(2) noise features, returns with a planted signal on feature 0): the figures are
about time and memory, not accuracy. Listing dates are staggered (late starters, delistings) so
the panel has the presence holes of a real universe.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import polars as pl
import torch

from moola.datasets.rank_panel import RankBatchSource, RankPanel, date_split
from moola.datasets.xsection import processor_config
from moola.models import RNNEncoderConfig
from moola.models.graph import GATConfig
from moola.models.ranking import RankingModelConfig, build_ranking_model
from moola.pipelines.rank import process_panel
from moola.training import RankingLossConfig, RankingObjective, TrainConfig, Trainer


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)


def synthetic(stocks: int, years: int, features: int, seed: int = 0
              ) -> tuple[pl.DataFrame, np.ndarray, np.ndarray, list[date]]:
    """Keys (symbol, ts, gap_before, is_filled), (N, F) float32 features, (N, 4) raw returns."""
    rng = np.random.default_rng(seed)
    days = np.busday_offset(np.datetime64("2008-01-02"), np.arange(years * 252), roll="forward")
    D = days.size
    start = np.where(rng.random(stocks) < 0.6, 0, rng.integers(0, int(D * 0.6), stocks))
    stop = np.where(rng.random(stocks) < 0.85, D, rng.integers(int(D * 0.5), D, stocks))
    stop = np.maximum(stop, start + 300).clip(max=D)
    lengths = stop - start
    n = int(lengths.sum())
    sym = np.repeat(np.arange(stocks), lengths)
    pos = np.arange(n) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    day_idx = np.repeat(start, lengths) + pos
    values = np.empty((n, features), dtype=np.float32)
    for j in range(features):  # serially correlated like real factors: MA(2) of white noise
        e = rng.standard_normal(n).astype(np.float32)
        values[:, j] = e + 0.9 * np.r_[np.float32(0), e[:-1]] + 0.81 * np.r_[np.zeros(2, np.float32), e[:-2]]
    ret1 = (0.002 * values[:, 0] + 0.02 * rng.standard_normal(n)).astype(np.float32)
    raw = np.stack([ret1 * np.sqrt(h) for h in (1, 5, 10, 20)], axis=1).astype(np.float32)
    last = np.r_[np.diff(sym) != 0, True]
    raw[last] = np.nan  # no label on a stock's last bar
    ts = days[day_idx].astype("datetime64[ns]")
    keys = pl.DataFrame({"symbol": pl.Series([f"S{k:05d}" for k in range(stocks)])[sym],
                         "ts": pl.Series(ts).dt.replace_time_zone("UTC"),
                         "gap_before": np.zeros(n, dtype=bool), "is_filled": np.zeros(n, dtype=bool)})
    return keys, values, raw, [d.item() for d in days]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stocks", type=int, default=4484)
    ap.add_argument("--years", type=int, default=10)
    ap.add_argument("--features", type=int, default=112)
    ap.add_argument("--window", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--ic-weight", type=float, default=0.2)
    ap.add_argument("--rank-weight", type=float, default=0.0,
                    help="the soft-rank term is O(S^2) per day and horizon; 0 by default at this size "
                         "(--step-probe measures its cost)")
    ap.add_argument("--step-probe", type=int, default=8,
                    help="after the epoch, time this many single training steps with and without the "
                         "rank term (a part benchmark); 0 to skip")
    ap.add_argument("--cache", type=Path, default=None, help="cache directory (default: a temp dir)")
    args = ap.parse_args()
    out: dict[str, object] = {"stocks": args.stocks, "years": args.years, "features": args.features,
                              "window": args.window, "torch_threads": torch.get_num_threads()}
    t0 = time.perf_counter()
    keys, values, raw, days = synthetic(args.stocks, args.years, args.features)
    out["rows"] = keys.height
    out["generate_s"] = time.perf_counter() - t0
    out["peak_gib_generate"] = peak_gib()
    names = [f"f{j:03d}" for j in range(args.features)]
    fit = (days[0], days[int(len(days) * 0.6)])
    t1 = time.perf_counter()
    panel = process_panel(
        keys, values, names, raw, (1, 5, 10, 20), args.window,
        feature_processors=[processor_config({"kind": "robust_zscore", "clip": 3.0}),
                            processor_config({"kind": "fillna"})],
        label_processors=[processor_config({"kind": "cs_rank"})], fit_range=fit, max_lookback=0,
        meta={"feature_set": "synthetic"})
    del values
    out["prepare_s"] = time.perf_counter() - t1
    out["peak_gib_prepare"] = peak_gib()
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache or Path(tmp) / "panel"
        t2 = time.perf_counter()
        panel.save(cache)
        out["cache_write_s"] = time.perf_counter() - t2
        out["cache_bytes"] = sum(p.stat().st_size for p in Path(cache).iterdir())
        del panel
        loads = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            panel = RankPanel.load(cache)
            _ = panel.day_panel  # the (D, S) grid of window end rows, built on load
            loads.append(time.perf_counter() - t)
            panel._day_panel = None
        out["warm_load_s_min"], out["warm_load_s_median"] = min(loads), statistics.median(loads)
        panel = RankPanel.load(cache)
        dates = panel.dates
        d = [str(np.datetime64(int(x), "ns").astype("datetime64[D]")) for x in dates[[0, -1]]]
        cut1, cut2 = int(len(dates) * 0.6), int(len(dates) * 0.8)
        iso = [str(np.datetime64(int(x), "ns").astype("datetime64[D]")) for x in dates[[cut1, cut2]]]
        split = date_split(dates, train=(d[0], iso[0]), val=(_next(dates, cut1), iso[1]),
                           test=(_next(dates, cut2), d[1]), purge=21, embargo=5)
        model_cfg = RankingModelConfig(
            name="scale_gat", encoder=RNNEncoderConfig(input_size=args.features, hidden=32, layers=1),
            gat=GATConfig(layers=1, hidden=32, heads=2, graph="dense"), horizons=[1, 5, 10, 20],
            head_hidden=32)
        model = build_ranking_model(model_cfg)
        loss = RankingLossConfig(mse=1.0, ic=args.ic_weight, rank=args.rank_weight)
        out["loss"] = loss.model_dump()
        trainer = Trainer(model, RankingObjective([1, 5, 10, 20], loss),
                          TrainConfig(epochs=args.epochs, batch_size=1, eval_batch_size=2,
                                      early_stopping=None, device="auto"), show_progress=True)
        train = RankBatchSource(panel, split.train)
        val = RankBatchSource(panel, split.val[:40])
        t3 = time.perf_counter()
        fit_res = trainer.fit(train, val)
        out["train_days"] = int(split.train.size)
        out["fit_s"] = time.perf_counter() - t3
        out["epoch_s"] = [h["epoch_seconds"] for h in fit_res.history]
        out["peak_gib_train"] = peak_gib()
        if args.step_probe:
            out["step_probe_s"] = step_probe(model, train, args.step_probe, args.ic_weight)
    out["total_s"] = time.perf_counter() - t0
    print(json.dumps(out, indent=2, default=str))


def step_probe(model: torch.nn.Module, source: RankBatchSource, n: int, ic: float) -> dict[str, object]:
    """Part benchmark: one optimizer step (forward, loss, backward, AdamW) on single days, with the
    rank term off and on; min and median over ``n`` days after one warm-up."""
    batches = list(source.batches(torch.arange(min(n + 1, len(source))), 1))
    opt = torch.optim.AdamW(model.parameters())
    res: dict[str, object] = {"days": len(batches) - 1}
    for rank in (0.0, 0.1):
        obj = RankingObjective([1, 5, 10, 20], RankingLossConfig(mse=1.0, ic=ic, rank=rank))
        times = []
        for b in batches:
            t = time.perf_counter()
            obj.loss(model(b), b).backward()
            opt.step()
            opt.zero_grad()
            times.append(time.perf_counter() - t)
        res[f"rank_{rank}"] = {"min": min(times[1:]), "median": statistics.median(times[1:])}
    return res


def _next(dates: np.ndarray, i: int) -> str:
    return str(np.datetime64(int(dates[i + 1]), "ns").astype("datetime64[D]"))


if __name__ == "__main__":
    main()
