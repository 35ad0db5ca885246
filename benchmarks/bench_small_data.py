"""The small-data table: moola's classifier presets against MiniRocket (10k kernels), logistic
regression and the majority class on small labeled series sets (benchmarks/_small_sets.py), on
the published train/test splits, over several seeds; accuracy mean +- std and fit time (whole
``SequenceClassifier.fit`` + predict, what a user waits for).

    python benchmarks/bench_small_data.py --seeds 3 --jobs 2 --out benchmarks/results/small_data.jsonl
    python benchmarks/bench_small_data.py --sets CBF UnitTest --presets inception_compact --seeds 2

Each (set, arm, seed) is one task in a spawned worker with one torch thread; results append to
``--out`` as they finish (a rerun skips the tasks already there), and the table is printed last.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _small_sets import SETS, load, padded

BASELINES = ["minirocket", "logistic", "majority"]


def run_task(set_name: str, arm: str, seed: int) -> dict[str, object]:
    import torch

    torch.set_num_threads(1)
    ds = load(set_name)
    t0 = time.perf_counter()
    if arm in BASELINES:
        from moola.evaluation.baselines import logistic_baseline, majority_baseline, minirocket_baseline

        T = max(ds.lengths)
        xtr, xte = padded(ds.X_train, T), padded(ds.X_test, T)
        classes = sorted(set(ds.y_train.tolist()))
        ytr = np.searchsorted(classes, ds.y_train)
        yte = np.searchsorted(classes, ds.y_test)
        if arm == "minirocket":
            res = minirocket_baseline(xtr, ytr, xte, yte, classes, n_kernels=9996, seed=seed)
        elif arm == "logistic":
            res = logistic_baseline(xtr, ytr, xte, yte, classes)
        else:
            res = majority_baseline(xtr, ytr, xte, yte, classes)
        acc = float(res.metrics["accuracy"])
        extra: dict[str, object] = {}
    else:
        from moola import SequenceClassifier

        name, _, pt = arm.partition("+")  # NAME+pt: masked-autoencoder pretraining first
        preset, _, ens = name.partition("x")  # NAMExK: an ensemble of K seeds
        clf = SequenceClassifier(preset=preset, n_seeds=int(ens or 1), random_state=seed,
                                 pretrain_steps=1000 if pt == "pt" else 0)
        # pretraining reads the test series' INPUTS, never their labels (transductive)
        clf.fit(ds.X_train, ds.y_train, X_unlabeled=ds.X_test if pt == "pt" else None)
        acc = clf.score(ds.X_test, ds.y_test)
        h = clf.history_[0]
        extra = {"params": clf.n_params_, "steps": len(h) * -(-len(ds.y_train) //  # epochs run
                 clf.train_config_.batch_size), "final_train_loss": h[-1]["train_loss"],
                 "train_accuracy": h[-1].get("train_accuracy"), "warnings": clf.warnings_}
    return {"set": set_name, "arm": arm, "seed": seed, "accuracy": acc,
            "seconds": time.perf_counter() - t0, **extra}


def table(rows: list[dict[str, object]], arms: list[str]) -> str:
    by: dict[tuple[str, str], list[dict[str, object]]] = {}
    for r in rows:
        by.setdefault((str(r["set"]), str(r["arm"])), []).append(r)
    sets = [s for s in dict.fromkeys(str(r["set"]) for r in rows)]
    head = "| set | T | train | C | " + " | ".join(arms) + " |"
    lines = [head, "|" + "---|" * (4 + len(arms))]
    for s in sets:
        ds = load(s)
        lo, hi = ds.lengths
        cells = []
        for a in arms:
            got = by.get((s, a), [])
            if not got:
                cells.append("")
                continue
            acc = [float(str(g["accuracy"])) for g in got]
            sec = statistics.median(float(str(g["seconds"])) for g in got)
            sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
            shown = f"{sec:.1f}" if sec < 10 else f"{sec:.0f}"
            cells.append(f"{statistics.mean(acc):.3f} ± {sd:.3f} (n={len(acc)}, {shown} s)")
        T = f"{lo}" if lo == hi else f"{lo}-{hi}"
        lines.append(f"| {s} | {T} | {len(ds.y_train)} | {ds.n_classes} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", nargs="+", default=SETS)
    ap.add_argument("--presets", nargs="+", default=["inception_compact", "resnet1d", "patch_lstm",
                                                      "jade_compact"],
                    help="SequenceClassifier presets; NAMExK trains an ensemble of K seeds, NAME+pt "
                         "pretrains the encoder on the train and test inputs (no labels) first")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/small_data.jsonl"))
    args = ap.parse_args()
    arms = [*args.presets, *BASELINES]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    done = [json.loads(line) for line in args.out.read_text().splitlines()] if args.out.exists() else []
    have = {(r["set"], r["arm"], r["seed"]) for r in done}
    tasks = [(s, a, k) for s in args.sets for a in arms for k in range(args.seeds)
             if (s, a, k) not in have]
    print(f"{len(tasks)} tasks ({len(have)} already in {args.out})", flush=True)
    with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn")) as pool:
        futs = {pool.submit(run_task, *t): t for t in tasks}
        for f in as_completed(futs):
            r = f.result()
            done.append(r)
            with open(args.out, "a") as fh:
                fh.write(json.dumps(r) + "\n")
            print(f"{r['set']:<22} {r['arm']:<22} seed {r['seed']}  acc {r['accuracy']:.3f}  "
                  f"{r['seconds']:.0f} s", flush=True)
    rows = [r for r in done if r["set"] in args.sets and r["arm"] in arms]
    print(table(rows, arms))


if __name__ == "__main__":
    main()
