"""Time the logistic baseline's fit on random-walk windows: the old path vs the new default.

Windows are random walks (N, 105, 39), not features of real bars (building crypto39 features for
20k windows is slower than the fit it times); the label is the sign of a fixed linear read of the
last bars plus noise, so accuracy is comparable across paths. Run::

    .venv/bin/python benchmarks/bench_baselines.py --n 20000 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from moola.evaluation.baselines import logistic_baseline

OLD = {"C": 1.0, "max_iter": 5000, "tol": 1e-4, "features": "flat"}  # the code path before issue 15


def windows(n: int, t: int, f: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random-walk windows standardised per window; labels read the last five bars weakly."""
    rng = np.random.default_rng(seed)
    x = np.cumsum(rng.standard_normal((n, t, f), dtype=np.float32), axis=1)
    x = (x - x.mean(axis=1, keepdims=True)) / (x.std(axis=1, keepdims=True) + 1e-6)
    w = rng.standard_normal((5, f)) / np.sqrt(5 * f)
    score = np.einsum("ntf,tf->n", x[:, -5:, :], w) + rng.standard_normal(n)
    return x, (score > 0).astype(np.int64)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--paths", default="old,new,summary")
    a = p.parse_args()
    x, y = windows(a.n + a.n // 4, 105, 39, seed=0)
    xtr, ytr, xte, yte = x[: a.n], y[: a.n], x[a.n:], y[a.n:]
    paths = {"old": OLD, "new": {}, "summary": {"features": "summary"}}
    for name in a.paths.split(","):
        secs, acc = [], 0.0
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            r = logistic_baseline(xtr, ytr, xte, yte, ["down", "up"], **paths[name])  # type: ignore[arg-type]
            secs.append(time.perf_counter() - t0)
            acc = r.metrics["accuracy"]
        print(f"{name:8s} n={a.n} min={min(secs):.2f}s median={statistics.median(secs):.2f}s "
              f"accuracy={acc:.4f} log_loss={r.metrics.get('log_loss', float('nan')):.4f} "
              f"n_iter={r.params['n_iter']}", flush=True)


if __name__ == "__main__":
    main()
