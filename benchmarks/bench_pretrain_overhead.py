"""Cost of masking + augmentation in masked-autoencoder pretraining.

The default pretraining model (BiLSTM, 2 layers x 128 per direction, mask token, linear head)
at batch 256 on (256, 105, 4) ohlc4-like windows, fp32 and bf16 autocast. For each precision,
measured alternately in this one process (median of ``--steps`` timed steps after warm-up):

* ``prepare``: ``MaskedReconstructionObjective.prepare(training=True)`` alone: augmentation
  (time warp, magnitude warp, scaling, jitter + OHLC repair, all at p = 1: the worst case),
  normalisation, block mask, indicator channel;
* ``step (full)``: prepare + forward + masked MSE + backward + grad clip + AdamW step;
* ``step (no mask/aug)``: the same step with a prepare that only appends an all-False
  indicator channel (the identical model and kernels, no augmentation, no mask drawing).

Share = prepare / step (full). Target: < 10 %.

Usage: python benchmarks/bench_pretrain_overhead.py [--steps N] [--threads N] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch

from moola.pretraining import (
    AugmentConfig,
    Augmenter,
    MaskConfig,
    MaskedReconstructionObjective,
    Normalize,
    pretrain_model,
)

B, T, F = 256, 105, 4


def synthetic_ohlc(n: int, seed: int = 0) -> torch.Tensor:
    """Valid ohlc4 log-ratio windows (daily-like scale): o, c ~ N(0, 0.01); h/l outside them."""
    g = torch.Generator().manual_seed(seed)
    o = 0.01 * torch.randn(n, T, generator=g)
    c = 0.01 * torch.randn(n, T, generator=g)
    h = torch.maximum(o, c) + 0.005 * torch.rand(n, T, generator=g)
    lo = torch.minimum(o, c) - 0.005 * torch.rand(n, T, generator=g)
    return torch.stack([o, h, lo, c], -1)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def run(precision: str, device: torch.device, steps: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = pretrain_model(n_features=F).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = synthetic_ohlc(B).to(device)
    flat = x.reshape(-1, F)
    norm = Normalize(flat.mean(0).cpu(), flat.std(0).cpu())
    full = MaskedReconstructionObjective(
        MaskConfig(strategy="block"), Augmenter(AugmentConfig(p=1.0)), norm)

    def null_prepare(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        xb = batch["x"]
        mask = torch.zeros(xb.shape[:2], dtype=torch.bool, device=xb.device)
        return {"x": torch.cat([xb, mask.unsqueeze(-1).to(xb.dtype)], -1), "target": xb, "mask": mask}

    ctx = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if precision == "bf16" \
        else nullcontext

    def step(prepare: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]) -> None:
        batch = prepare({"x": x})
        with ctx():
            out = model(batch)
            loss = full.loss(out, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    def prep_full(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return full.prepare(batch, training=True)

    model.train()
    for _ in range(2):  # warm-up
        step(prep_full)
        step(null_prepare)
    t_prep, t_full, t_null = [], [], []
    for _ in range(steps):
        t_prep.append(timed(lambda: prep_full({"x": x}), device))
        t_full.append(timed(lambda: step(prep_full), device))
        t_null.append(timed(lambda: step(null_prepare), device))
    med = statistics.median
    return {"prepare_ms": 1e3 * med(t_prep), "full_ms": 1e3 * med(t_full),
            "null_ms": 1e3 * med(t_null)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" \
        else f"CPU, {torch.get_num_threads()} threads"
    print(f"BiLSTM 2x128 masked autoencoder, batch {B} x {T} x {F}, {where}, "
          f"median of {args.steps} steps\n")
    print("| precision | prepare ms | step ms (full) | step ms (no mask/aug) | samples/s full "
          "| samples/s no mask/aug | prepare share |")
    print("|---|---|---|---|---|---|---|")
    for precision in ("fp32", "bf16"):
        r = run(precision, device, args.steps)
        share = r["prepare_ms"] / r["full_ms"]
        print(f"| {precision} | {r['prepare_ms']:.2f} | {r['full_ms']:.1f} | {r['null_ms']:.1f} "
              f"| {B / r['full_ms'] * 1e3:.0f} | {B / r['null_ms'] * 1e3:.0f} | {100 * share:.1f} % "
              f"{'(ok)' if share < 0.10 else '(over 10 % target)'} |")


if __name__ == "__main__":
    main()
