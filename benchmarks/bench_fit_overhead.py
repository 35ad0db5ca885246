"""What a user waits for: the whole ``Trainer(...).fit(train, val)`` call against a bare PyTorch loop.

Timed, per preset and precision (fp32, bf16), ``--repeats`` times, alternately in this one process
(time.perf_counter() around each whole call):

* bare: a plain PyTorch loop. Inside the timer: building the optimizer the default TrainConfig
  builds (AdamW, its lr / weight decay / betas) and ``epochs`` passes over pre-materialised
  tensors, each in the shuffled order fit uses for that epoch (``epoch_order(n, seed, epoch)``),
  batches gathered by index, forward + the objective's loss under the same autocast, backward,
  clip_grad_norm_ (the default grad_clip), step. No validation, no metrics, no guards.
* bare + val: the same loop plus one eval-mode, no-grad forward pass (+ loss) over the validation
  set after each epoch, in batches of fit's eval batch size, so the reader sees how much of the
  gap is the loop and how much is validation.
* fit: constructing ``moola.training.Trainer(model, objective, config, show_progress=False)`` and
  calling ``fit(train, val)`` with the default TrainConfig apart from epochs, batch size,
  precision, threads and seed: health guard, early stopping (restore best) and everything else
  on, set-up included. Besides the training epochs, fit evaluates the whole validation set every
  epoch in eval mode; its training-set metrics come from the training pass itself (before commit
  6f3ef37 it also ran an eval-mode pass over a fixed subset of ``guards.train_eval_samples``,
  default 4,096, training windows every epoch, most of the gap; the guards now run that pass only
  to confirm an alarm and once at the end). The per-epoch ``epoch_seconds`` of its history time
  the training batches only, so ``fit wall - sum(epoch_seconds)`` is what set-up, the evaluation
  passes and the callbacks cost; the table splits it into the evaluation passes
  (``Trainer.evaluate``, timed by a perf_counter wrapper on the instance) and the rest.

To measure an older revision against its own bare loop, run this script with that revision's
source first on the path (``git worktree add /tmp/old REV`` then ``PYTHONPATH=/tmp/old/src``).

Models are built outside every timer, a fresh one for each call from the same seed, so all three
start from the same weights (with early stopping off, the fp32 bare loop ends with bitwise the
weights fit ends with on CPU: same batches, dropout stream, optimizer and clipping). The
``TensorData`` wrappers (whose construction checks every value for NaN/inf) are built once per
preset, outside the timers, like the bare loop's tensors.
Data: synthetic (B, 105, F) windows (F: 4 for the OHLC presets, 31 for the direction presets);
by default feature 0's level says the class (learned in the first epoch by every preset, so the
guards stay quiet, as in a run that trains); ``--unlearnable`` makes the label the sign of the last
10 bars of feature 0, which these few steps do not learn: the trained-nothing / collapse guards
fire (fit prints them on stderr) and the trained-nothing guard's eval-mode confirmation pass over
up to ``guards.train_eval_samples`` training windows runs once at the end;
validation ``--val-frac`` (default 20%) of the training size. Classification presets use
``ClassificationObjective(2)`` (no "pointers" in the batch, so a pointer head's loss term is
off, as the objective only adds it when the batch has them), direction presets
``DirectionObjective()`` with y in {0, 1}.

ratio = bare / fit per repeat (1.0: fit costs nothing beyond the loop; the goal is >= 0.95),
reported as the min and the median over repeats.

Usage:
    .venv/bin/python benchmarks/bench_fit_overhead.py --repeats 3
    .venv/bin/python benchmarks/bench_fit_overhead.py --quick      # smoke run, well under 2 minutes
    .venv/bin/python benchmarks/bench_fit_overhead.py --presets jade,direction_lstm \\
        --precisions fp32 --json fit_overhead.json

Run it on an otherwise idle machine: with another CPU-bound job on this 2-core box, 2 torch
threads spin against it and single calls were seen to take 10-20x longer (use ``--threads 1``
there, or read only the per-repeat ratios of calls that ran side by side).

The default (10 presets x 2 precisions x 3 repeats x 3 calls of 3 epochs over 4,096 windows) takes
on the order of an hour on 2 CPU threads; the BiLSTM presets dominate.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import shlex
import statistics
import sys
import time
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import moola
from moola.models import PRESETS, build_model, preset_config
from moola.models.config import RNNEncoderConfig
from moola.training import ClassificationObjective, TensorData, TrainConfig, Trainer
from moola.training.data import epoch_order, num_batches
from moola.training.objectives import DirectionObjective, Objective
from moola.training.trainer import resolve_device

T = 105
QUICK_PRESETS = ("jade_compact", "direction_lstm")


# --------------------------------------------------------------------------------------- data
def make_data(n: int, f: int, seed: int, *, learnable: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Noise windows; learnable: feature 0's level says the class (+-0.5 sd, every preset learns it
    in the first epoch, so no guard fires); else the label is the sign of the last 10 bars of
    feature 0, which 48 steps do not learn (the trained-nothing / collapse guards fire)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, T, f)).astype(np.float32)
    if not learnable:
        return x, (x[:, -10:, 0].sum(1) > 0).astype(np.int64)
    y = rng.integers(0, 2, n)
    x[:, :, 0] += (2 * y[:, None] - 1) * 0.5
    return x, y.astype(np.int64)


def is_direction(name: str) -> bool:
    """A preset whose 2-class form is one binary direction logit (out["direction"])."""
    return preset_config(name, n_classes=2).direction is not None


def n_features_of(name: str) -> int:
    return int(preset_config(name).encoder.input_size)


def objective_for(name: str) -> Objective:
    return DirectionObjective() if is_direction(name) else ClassificationObjective(2)


def fresh_model(name: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(preset_config(name, n_classes=2))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# --------------------------------------------------------------------------------- bare loop
def _loss(out: dict[str, torch.Tensor], y: torch.Tensor, direction: bool) -> torch.Tensor:
    """The objectives' default losses written out: BCE on the direction logit, else cross-entropy."""
    if direction:
        return F.binary_cross_entropy_with_logits(out["direction"].float(), y.float())
    return F.cross_entropy(out["logits"].float(), y)


def bare_loop(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig,
              direction: bool, device: torch.device,
              val: tuple[torch.Tensor, torch.Tensor] | None = None) -> float:
    """Seconds for optimizer construction + ``cfg.epochs`` epochs (+ a val pass per epoch)."""
    oc = cfg.optimizer
    bs = cfg.batch_size
    ebs = cfg.eval_batch_size or max(bs, 256)
    n = len(x)

    def ctx() -> Any:
        return torch.autocast(device.type, dtype=torch.bfloat16) if cfg.precision == "bf16" \
            else nullcontext()

    _sync(device)
    t = time.perf_counter()
    torch.manual_seed(cfg.seed)  # dropout stream, as fit seeds it
    opt = torch.optim.AdamW(model.parameters(), lr=oc.lr, weight_decay=oc.weight_decay, betas=oc.betas)
    for epoch in range(cfg.epochs):
        model.train()
        order = epoch_order(n, cfg.seed, epoch).to(device)
        for b in range(num_batches(n, bs)):
            idx = order[b * bs:(b + 1) * bs]
            xb, yb = x.index_select(0, idx), y.index_select(0, idx)
            with ctx():
                loss = _loss(model({"x": xb}), yb, direction)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
        if val is not None:
            model.eval()
            xv, yv = val
            with torch.no_grad():
                for i in range(0, len(xv), ebs):
                    with ctx():
                        _loss(model({"x": xv[i:i + ebs]}), yv[i:i + ebs], direction)
    _sync(device)
    return time.perf_counter() - t


# ---------------------------------------------------------------------------------- whole fit
def whole_fit(model: torch.nn.Module, objective: Objective, cfg: TrainConfig, train: TensorData,
              val: TensorData, device: torch.device) -> tuple[float, dict[str, Any]]:
    """Seconds for Trainer construction + fit(train, val), and what fit reports about itself."""
    _sync(device)
    t = time.perf_counter()
    trainer = Trainer(model, objective, cfg, show_progress=False)
    eval_s: list[float] = []
    evaluate = trainer.evaluate

    def timed_evaluate(*a: Any, **kw: Any) -> Any:  # one perf_counter pair per call: free
        t0 = time.perf_counter()
        try:
            return evaluate(*a, **kw)
        finally:
            eval_s.append(time.perf_counter() - t0)

    trainer.evaluate = timed_evaluate  # type: ignore[method-assign]
    res = trainer.fit(train, val)
    _sync(device)
    wall = time.perf_counter() - t
    hist = res.history
    info = {
        "fit_seconds": res.seconds,
        "epoch_seconds": [float(h["epoch_seconds"]) for h in hist],
        "evaluate_seconds": eval_s,  # per epoch: the training-subset pass, then the validation pass
        "steps": int(hist[-1]["step"]) if hist else 0,
        "epochs_run": len(hist),
        "n_train_eval": trainer.n_train_eval_,
        "n_val": trainer.n_val_,
        "warnings": list(res.warnings),
        "val_loss": [float(h.get("val_loss", math.nan)) for h in hist],
    }
    return wall, info


def warm_up(name: str, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, direction: bool,
            device: torch.device) -> None:
    """A few untimed steps so one-time kernel/allocator start-up favours neither side."""
    m = fresh_model(name, cfg.seed).to(device)
    k = min(len(x), 3 * cfg.batch_size)
    short = cfg.model_copy(update={"epochs": 1})
    bare_loop(m, x[:k], y[:k], short, direction, device, val=(x[:k], y[:k]))


# --------------------------------------------------------------------------------------- main
def _fired(messages: list[str]) -> str:
    """The guards' warnings of one fit, by the words each kind starts with."""
    kinds = [k for k in ("trained nothing", "class collapse", "too good to be true", "parameters for")
             if any(m.startswith(k) or k in m[:40] for m in messages)]
    return " + ".join(kinds) or "none"


def _stats(v: list[float]) -> tuple[float, float]:
    return min(v), statistics.median(v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help=f"smoke run: n-train 256, 2 epochs, 1 repeat, presets {','.join(QUICK_PRESETS)}")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (and fit's num_threads)")
    ap.add_argument("--presets", default=None, help="comma-separated preset names (default: all)")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--repeats", type=int, default=None, help="default 3 (quick: 1)")
    ap.add_argument("--epochs", type=int, default=None, help="default 3 (quick: 2)")
    ap.add_argument("--n-train", type=int, default=None, help="training windows (default 4096, quick 256)")
    ap.add_argument("--val-frac", type=float, default=0.2, help="validation size / training size")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-seconds", type=float, default=0.0, metavar="S",
                    help="per preset, --n-train (and validation) times the whole k that makes the "
                         "fp32 bare loop take >= S seconds (from one untimed epoch): noise below the effect")
    ap.add_argument("--json", default=None, metavar="OUT", help="write every raw timing here")
    ap.add_argument("--unlearnable", action="store_true",
                    help="labels these steps cannot learn: the guards fire and confirm (see doc)")
    args = ap.parse_args()

    repeats = args.repeats or (1 if args.quick else 3)
    epochs = args.epochs or (2 if args.quick else 3)
    n_train = args.n_train or (256 if args.quick else 4096)
    n_val = max(1, round(args.val_frac * n_train))
    presets = args.presets.split(",") if args.presets else (list(QUICK_PRESETS) if args.quick
                                                             else list(PRESETS))
    precisions = args.precisions.split(",")
    for p in presets:
        if p not in PRESETS:
            ap.error(f"unknown preset {p!r}; known: {', '.join(PRESETS)}")
    for p in precisions:
        if p not in ("fp32", "bf16"):
            ap.error(f"unknown precision {p!r}: fp32 or bf16")

    torch.set_num_threads(args.threads)
    device = resolve_device(TrainConfig().device)  # what fit's default device "auto" resolves to
    base = TrainConfig(epochs=epochs, batch_size=args.batch_size, num_threads=args.threads,
                       seed=args.seed)
    steps = epochs * num_batches(n_train, args.batch_size)  # per preset with --min-seconds
    eval_bs = base.eval_batch_size or max(base.batch_size, 256)
    k_train_eval = min(n_train, base.guards.train_eval_samples)
    cmd = shlex.join(["python", "benchmarks/bench_fit_overhead.py", *sys.argv[1:]])
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    oc = base.optimizer

    print(f"`{cmd}`\n")
    print(f"{now}; torch {torch.__version__}; device {device}; {torch.get_num_threads()} threads; "
          f"{n_train:,} training windows of {T}xF, {n_val:,} validation windows, batch {args.batch_size}, "
          f"{epochs} epochs ({steps} optimizer steps per call), {repeats} repeat(s), alternating "
          f"bare / bare+val / fit; optimizer {oc.name} lr {oc.lr:g} weight decay {oc.weight_decay:g}, "
          f"grad clip {base.grad_clip}; data {'unlearnable' if args.unlearnable else 'learnable'}; "
          f"load average before {', '.join(f'{v:.2f}' for v in os.getloadavg())}.\n")
    print(f"bare = plain PyTorch loop, NO validation (optimizer construction + epochs over the same "
          f"shuffled batches). bare+val = bare + one eval-mode forward over the {n_val:,} validation "
          f"windows per epoch. fit = Trainer(...) + fit(train, val) with default guards and callbacks "
          f"(moola from {moola.__file__.rsplit('/src/', 1)[0]}), which per epoch evaluates the "
          f"{n_val:,} validation windows (eval batch {eval_bs}) and, in versions before 6f3ef37, "
          f"{k_train_eval:,} training windows (guards.train_eval_samples). ratio = bare / fit "
          f"(goal >= 0.95). Of fit's wall time (medians): loop = sum of its epoch_seconds (training "
          f"batches only), eval = its Trainer.evaluate calls (training subset + validation, every "
          f"epoch), other = the rest (set-up, guards' weight digests, early stopping's weight copies "
          f"and restore, messages). Seconds, min / median.\n")
    print("| preset | F | precision | steps | bare s | bare+val s | fit s | ratio bare/fit min / median "
          "| ratio (bare+val)/fit min / median | fit loop s | fit eval s | fit other s | evaluate calls "
          "| guards that fired |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")

    raw: dict[str, Any] = {
        "command": cmd, "date": now, "torch": torch.__version__, "device": str(device),
        "threads": torch.get_num_threads(), "n_train": n_train, "n_val": n_val,
        "batch_size": args.batch_size, "epochs": epochs, "repeats": repeats, "steps": steps,
        "train_eval_samples": k_train_eval, "eval_batch_size": eval_bs, "results": [],
    }
    for name in presets:
        f = n_features_of(name)
        direction = is_direction(name)
        n_tr, n_va = n_train, n_val
        if args.min_seconds > 0:  # more windows (not epochs: early stopping) until bare >= S s
            x_np, y_np = make_data(n_train, f, args.seed, learnable=not args.unlearnable)
            xe, ye = torch.from_numpy(x_np).to(device), torch.from_numpy(y_np).to(device)
            one_cfg = base.model_copy(update={"epochs": 1})
            warm_up(name, xe, ye, one_cfg, direction, device)
            one = bare_loop(fresh_model(name, args.seed).to(device), xe, ye, one_cfg, direction, device)
            k = max(1, math.ceil(args.min_seconds / (epochs * one)))
            n_tr, n_va = n_train * k, n_val * k
        x_np, y_np = make_data(n_tr, f, args.seed, learnable=not args.unlearnable)
        xv_np, yv_np = make_data(n_va, f, args.seed + 1, learnable=not args.unlearnable)
        x, y = torch.from_numpy(x_np).to(device), torch.from_numpy(y_np).to(device)
        xv, yv = torch.from_numpy(xv_np).to(device), torch.from_numpy(yv_np).to(device)
        train_d, val_d = TensorData({"x": x_np, "y": y_np}), TensorData({"x": xv_np, "y": yv_np})
        rnn = isinstance(preset_config(name).encoder, RNNEncoderConfig)
        for prec in precisions:
            cfg = base.model_copy(update={"precision": prec})
            warm_up(name, x, y, cfg, direction, device)
            steps = epochs * num_batches(len(x), args.batch_size)
            bare, bare_val, fit, infos = [], [], [], []
            for _ in range(repeats):
                bare.append(bare_loop(fresh_model(name, args.seed).to(device), x, y, cfg, direction,
                                      device))
                bare_val.append(bare_loop(fresh_model(name, args.seed).to(device), x, y, cfg,
                                          direction, device, val=(xv, yv)))
                wall, info = whole_fit(fresh_model(name, args.seed), objective_for(name), cfg,
                                       train_d, val_d, device)
                fit.append(wall)
                infos.append(info)
            ratios = [b / w for b, w in zip(bare, fit, strict=True)]
            ratios_val = [b / w for b, w in zip(bare_val, fit, strict=True)]
            loop = [sum(i["epoch_seconds"]) for i in infos]
            evals = [sum(i["evaluate_seconds"]) for i in infos]
            other = [w - lp - e for w, lp, e in zip(fit, loop, evals, strict=True)]
            fit_steps = {i["steps"] for i in infos}
            step_note = "" if fit_steps == {steps} else f" (fit: {sorted(fit_steps)})"
            (b0, b1), (v0, v1), (f0, f1) = _stats(bare), _stats(bare_val), _stats(fit)
            scaled = f" ({n_tr:,} windows)" if n_tr != n_train else ""
            print(f"| {name} | {f} | {prec} | {steps}{scaled}{step_note} | {b0:.2f} / {b1:.2f} | "
                  f"{v0:.2f} / {v1:.2f} | {f0:.2f} / {f1:.2f} | {min(ratios):.3f} / "
                  f"{statistics.median(ratios):.3f} | {min(ratios_val):.3f} / "
                  f"{statistics.median(ratios_val):.3f} | "
                  f"{statistics.median(loop):.2f} | {statistics.median(evals):.2f} | "
                  f"{statistics.median(other):.2f} | "
                  f"{'/'.join(sorted({str(len(i['evaluate_seconds'])) for i in infos}))} | "
                  f"{_fired(infos[-1]['warnings'])} |", flush=True)
            raw["results"].append({
                "preset": name, "n_features": f, "precision": prec,
                "objective": type(objective_for(name)).__name__,
                "rnn": rnn, "steps": steps, "n_train": n_tr, "n_val": n_va,
                "bare_s": bare, "bare_val_s": bare_val, "fit_wall_s": fit,
                "ratio_bare_fit": ratios, "ratio_bare_val_fit": ratios_val, "fit_loop_s": loop,
                "fit_evaluate_s": evals, "fit_other_s": other, "fit": infos,
            })
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(raw, fh, indent=1)
        print(f"\nraw timings: {args.json}")


if __name__ == "__main__":
    main()
