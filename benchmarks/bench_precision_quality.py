"""Supervised training in fp32 against bf16 autocast: validation quality over seeds, and the time.

Whole ``moola train`` runs (``run_train``, the one training function) of the direction demo
(configs/direction_demo.yaml: next-minute BTC direction, 32-bar ohlc4 windows, the bundled three
weeks) for each preset, seed and precision, interleaved; baselines and economics off (they do
not depend on the precision), tracking off. Reported per pair: the kept model's validation loss
and balanced accuracy, the test balanced accuracy, and the fit's wall time; then the mean of the
bf16 - fp32 differences with a 95% t interval against the seed-to-seed spread.

Usage: MOOLA_TRACKING=off python benchmarks/bench_precision_quality.py [--seeds 3]
       [--presets simple_lstm,direction_lstm] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch
from rich.console import Console

from moola.pipelines.train import RunConfig, run_train
from moola.tracking import TrackingOptions

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "direction_demo.yaml"
T95 = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776, 6: 2.571, 8: 2.365, 10: 2.262}


def run(preset: str, seed: int, precision: str, out: Path) -> dict[str, float]:
    cfg = RunConfig.from_yaml(CONFIG, [
        f"preset={preset}", f"train.seed={seed}", f"train.precision={precision}",
        f"out_dir={out}", f"name={preset}_{seed}_{precision}", "baselines=[]", "economics=null",
        "train.device=cpu"])
    res = run_train(cfg, console=Console(quiet=True), show_progress=False,
                    tracking=TrackingOptions(enabled=False))
    facts = res.metrics["run"]
    return {"val_loss": float(facts["val_loss"]),
            "val_bacc": float(facts["val"]["balanced_accuracy"]),
            "test_bacc": float(res.metrics["model"]["balanced_accuracy"]),
            "fit_s": float(facts["fit_seconds"]), "best_epoch": float(facts["best_epoch"] or 0)}


def interval(diffs: list[float]) -> str:
    m = statistics.fmean(diffs)
    if len(diffs) < 2:
        return f"{m:+.5f}"
    half = T95.get(len(diffs), 2.0) * statistics.stdev(diffs) / len(diffs) ** 0.5
    return f"{m:+.5f} [{m - half:+.5f}, {m + half:+.5f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--presets", default="simple_lstm,direction_lstm")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, config {CONFIG.name}")
    print("| preset | seed | val loss fp32 / bf16 | val balanced acc fp32 / bf16 | "
          "test balanced acc fp32 / bf16 | best epoch fp32 / bf16 | fit s fp32 / bf16 |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets.split(","):
            rows: dict[str, list[dict[str, float]]] = {"fp32": [], "bf16": []}
            for seed in range(args.seeds):
                for precision in ("fp32", "bf16") if seed % 2 == 0 else ("bf16", "fp32"):
                    rows[precision].append(run(preset, seed, precision, Path(tmp)))
                a, b = rows["fp32"][-1], rows["bf16"][-1]
                print(f"| {preset} | {seed} | {a['val_loss']:.5f} / {b['val_loss']:.5f} | "
                      f"{a['val_bacc']:.4f} / {b['val_bacc']:.4f} | {a['test_bacc']:.4f} / "
                      f"{b['test_bacc']:.4f} | {a['best_epoch']:.0f} / {b['best_epoch']:.0f} | "
                      f"{a['fit_s']:.1f} / {b['fit_s']:.1f} |", flush=True)
            for key in ("val_loss", "val_bacc", "test_bacc", "fit_s"):
                diffs = [b[key] - a[key] for a, b in zip(rows["fp32"], rows["bf16"], strict=True)]
                spread = statistics.stdev(r[key] for r in rows["fp32"]) if args.seeds > 1 else 0.0
                print(f"{preset} {key}: bf16 - fp32 mean {interval(diffs)}; fp32 seed-to-seed "
                      f"std {spread:.5f}")


if __name__ == "__main__":
    main()
