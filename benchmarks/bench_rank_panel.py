"""What a ranking run waits for before training: preparing the day panel from a store (features,
labels, processors fitted on the training dates; the cold path) against reopening its Arrow IPC
cache (the warm path, memory-mapped), min and median of ``--repeat`` each, in one process.

    moola data ingest ../shared/data/sp500_daily_2012_2017.parquet --store stores/sp500
    python benchmarks/bench_rank_panel.py --config configs/rank_sp500.yaml --repeat 3
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from moola.pipelines.rank import RankConfig, load_panel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=Path("configs/rank_sp500.yaml"))
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = RankConfig.from_yaml(args.config, [f"data.cache_dir={tmp}/cache", f"out_dir={tmp}/runs"])
        cold, warm = [], []
        for _ in range(args.repeat):
            shutil.rmtree(Path(tmp) / "cache", ignore_errors=True)
            panel, _, _, t, hit = load_panel(cfg.data, cache_root=Path(tmp) / "runs")
            assert not hit
            cold.append(t["panel_build_cold_s"] + t.get("panel_save_s", 0.0))
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            panel, _, _, t, hit = load_panel(cfg.data, cache_root=Path(tmp) / "runs")
            assert hit
            _ = panel.day_panel  # the (D, S) grid of window end rows, built on first use
            warm.append(time.perf_counter() - t0)
        rows, feats = panel.keys.height, panel.n_features
    print(f"panel: {rows:,} rows x {feats} features ({args.config})")
    print(f"cold (features + labels + processors + cache write): min {min(cold):.2f} s, "
          f"median {statistics.median(cold):.2f} s")
    print(f"warm (memory-mapped reopen + the day grid): min {min(warm) * 1e3:.1f} ms, "
          f"median {statistics.median(warm) * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
