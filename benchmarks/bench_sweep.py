"""Sweep orchestration: per-run overhead of the local and Ray backends, and the speedup of a
4-run sweep with 2 workers over running it sequentially.

    python benchmarks/bench_sweep.py [--runs 4] [--epochs 2] [--out /tmp/moola-bench-sweep]

Overhead per run = driver wall time from launch to result minus the pipeline's own time
(``run_train`` inside the worker: data, training, evaluation, report, MLflow logging): the
worker's process start and imports, Ray scheduling, spec/rename bookkeeping and polling.
Tracking is on (the default) against a SQLite store in the output directory.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _matrix(out: Path, name: str, runs: int, epochs: int, cpus: int) -> Path:
    doc = {
        "name": name, "command": "train", "base": str(ROOT / "configs" / "train_demo.yaml"),
        "overrides": {"train.epochs": epochs, "data.stride": 3, "baselines": ["majority"],
                      "train.device": "cpu", "train.early_stopping": None},
        "variants": [{"name": f"seed{i}", "set": {"train.seed": i}} for i in range(runs)],
        "resources": {"cpus": cpus},
    }
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _sweep(matrix: Path, parallel: int, backend: str, address: str | None = None) -> dict:
    from rich.console import Console

    from moola.sweeps import run_sweep

    t0 = time.perf_counter()
    res = run_sweep(matrix, parallel=parallel, backend=backend, ray_address=address,  # type: ignore[arg-type]
                    console=Console(quiet=True))
    wall = time.perf_counter() - t0
    assert not res.failed, [r.error for r in res.failed]
    over = [r.seconds - r.run_seconds for r in res.runs if r.seconds and r.run_seconds]
    return {"wall": wall, "overhead": over, "pipeline": [r.run_seconds for r in res.runs]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("/tmp/moola-bench-sweep"))
    args = ap.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    os.chdir(args.out)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{args.out / 'mlflow.db'}"
    os.environ["MOOLA_SWEEPS_DIR"] = str(args.out / "sweeps")
    cores = os.cpu_count()
    rows = []

    # warm caches (bundled store ingest, MLflow schema, OS page cache) outside the timings
    _sweep(_matrix(args.out, "warmup", 1, 1, 1), 1, "local")

    seq1 = _sweep(_matrix(args.out, "seq_1thread", args.runs, args.epochs, 1), 1, "local")
    seq2 = _sweep(_matrix(args.out, "seq_2threads", args.runs, args.epochs, 2), 1, "local")
    par = _sweep(_matrix(args.out, "par2_1thread", args.runs, args.epochs, 1), 2, "local")

    ray_bin = shutil.which("ray", path=str(Path(sys.executable).parent))
    port = _free_port()
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    subprocess.run([ray_bin, "start", "--head", f"--port={port}", f"--num-cpus={cores}",  # type: ignore[list-item]
                    "--include-dashboard=false", "--disable-usage-stats"], check=True, capture_output=True,
                   env=env)
    try:
        addr = f"127.0.0.1:{port}"
        _sweep(_matrix(args.out, "ray_warmup", 1, 1, 1), 1, "ray", addr)
        ray_seq = _sweep(_matrix(args.out, "ray_seq_1thread", args.runs, args.epochs, 1), 1, "ray", addr)
        ray_par = _sweep(_matrix(args.out, "ray_par2_1thread", args.runs, args.epochs, 1), 2, "ray", addr)
    finally:
        subprocess.run([ray_bin, "stop", "--force"], capture_output=True, env=env)  # type: ignore[list-item]

    def med(xs: list[float]) -> float:
        return statistics.median(xs)

    print(f"\n{args.runs} runs of train_demo ({args.epochs} epochs, stride 3), {cores} cores, "
          "tracking on\n")
    print("| backend | parallel x threads | sweep wall s | median pipeline s/run | median overhead s/run |")
    print("|---|---|---|---|---|")
    for name, r, shape in (("local", seq1, "1 x 1"), ("local", seq2, "1 x 2"), ("local", par, "2 x 1"),
                           ("ray", ray_seq, "1 x 1"), ("ray", ray_par, "2 x 1")):
        rows.append((name, shape, r))
        print(f"| {name} | {shape} | {r['wall']:.1f} | {med(r['pipeline']):.1f} | {med(r['overhead']):.2f} |")
    print(f"\nspeedup, 2 workers x 1 thread over sequential 1 thread: {seq1['wall'] / par['wall']:.2f}x "
          f"(local), {ray_seq['wall'] / ray_par['wall']:.2f}x (ray)")
    print("speedup, 2 workers x 1 thread over sequential 2 threads: "
          f"{seq2['wall'] / par['wall']:.2f}x (local)")


if __name__ == "__main__":
    main()
