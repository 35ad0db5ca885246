"""LSTM training throughput against the oneDNN matmul ceiling of the LSTM's own gate GEMMs.

For each LSTM preset (simple_lstm, jade = BiLSTM 2x128, jade_compact, direction_lstm), in this
one process:

* the ceiling: oneDNN fp32 and bf16 GFLOP/s of every gate GEMM a training step does, at its
  own shape (``torch.ops.mkldnn._linear_pointwise``, which ONEDNN_VERBOSE=1 shows running
  oneDNN ``inner_product brg_matmul``; fp32 ``torch.mm`` runs MKL instead): per layer and
  direction the input projection (B*T, in) x (in, 4H) and its two backward GEMMs, the recurrent
  (B, H) x (H, 4H) per step and its backward; the preset's ceiling is their total FLOPs over
  their total time (each GEMM at its measured rate), best of two measurements (start, end);
* training throughput of the encoder (forward + MSE-to-zero of its output + backward + clip +
  AdamW step at batch ``--batch``; whole step) for nn.LSTM fp32, nn.LSTM bf16 autocast, FusedLSTM
  fp32/bf16 (one input-projection GEMM over all steps + a hidden-GEMM-only recurrence) and, with
  ``--compile``, FusedLSTM with its cell under torch.compile (jade only; compile time reported).
  Variants are interleaved, min and median of ``--repeats`` timed runs of ``--steps`` steps;
* achieved GFLOP/s = analytic FLOPs (bench_training.rnn_train_flops: 3 x 2 x 4H(in + H) per step
  and direction) x samples/s, as a share of the matching (fp32 or bf16) ceiling.

Usage: python benchmarks/bench_lstm_ceiling.py [--threads 2] [--batch 256] [--repeats 3]
       [--steps 3] [--presets jade,...] [--compile] [--batches 64,256,512]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch

from moola.models import preset_config
from moola.models.config import RNNEncoderConfig
from moola.models.encoders import RNNEncoder
from moola.models.fused_lstm import FusedLSTM, lstm_cell

T = 105
FEATURES = {"simple_lstm": 4, "jade": 4, "jade_compact": 4, "direction_lstm": 31}


def onednn_gflops(m: int, k: int, n: int, dtype: torch.dtype, seconds: float = 0.15) -> float:
    """oneDNN GFLOP/s of (m, k) x (k, n), best of 3 timed bursts."""
    a = torch.randn(m, k, dtype=dtype)
    w = torch.randn(n, k, dtype=dtype)  # (out, in), as a Linear holds it

    def mm() -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(a, w, None, "none", [], "")

    for _ in range(3):
        mm()
    reps = max(1, int(seconds * 2e11 / (2 * m * k * n)))
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(reps):
            mm()
        best = min(best, (time.perf_counter() - t) / reps)
    return 2 * m * k * n / best / 1e9


def gate_gemms(enc: RNNEncoderConfig, batch: int) -> list[tuple[int, int, int, int]]:
    """(m, k, n, count) of every gate GEMM of one training step: forward, input-grad, weight-grad."""
    dirs = 2 if enc.bidirectional else 1
    g, h, bt = 4 * enc.hidden, enc.hidden, batch * T
    out: list[tuple[int, int, int, int]] = []
    inp = enc.input_size
    for _ in range(enc.layers):
        out += [(bt, inp, g, dirs), (bt, g, inp, dirs), (inp, bt, g, dirs)]  # input projection
        out += [(batch, h, g, dirs * T), (batch, g, h, dirs * T), (h, bt, g, dirs)]  # recurrent
        inp = h * dirs
    return out


def ceiling(enc: RNNEncoderConfig, batch: int, dtype: torch.dtype) -> float:
    """Total gate-GEMM FLOPs over their total time at each GEMM's measured oneDNN rate."""
    flops = secs = 0.0
    for m, k, n, count in gate_gemms(enc, batch):
        f = 2.0 * m * k * n * count
        flops += f
        secs += f / (onednn_gflops(m, k, n, dtype) * 1e9)
    return flops / secs / 1e9


def rnn_train_flops(enc: RNNEncoderConfig, t: int = T) -> float:
    """bench_training's count: 3 x forward, forward = 2 * 4H(in + H) per step and direction."""
    dirs = 2 if enc.bidirectional else 1
    flops, inp = 0.0, enc.input_size
    for _ in range(enc.layers):
        flops += dirs * 2 * 4 * enc.hidden * (inp + enc.hidden) * t
        inp = enc.hidden * dirs
    return 3 * flops


def build(enc: RNNEncoderConfig, impl: str, cell: Callable[..., tuple[torch.Tensor, torch.Tensor]]
          ) -> RNNEncoder:
    torch.manual_seed(0)
    model = RNNEncoder(enc.input_size, enc.hidden, enc.layers, enc.bidirectional, enc.dropout,
                       impl="fused" if impl == "fused" else "torch")
    if isinstance(model.rnn, FusedLSTM):
        model.rnn.cell = cell
    return model


def train_rate(model: RNNEncoder, opt: torch.optim.Optimizer, x: torch.Tensor, bf16: bool,
               steps: int) -> float:
    """Samples/s of ``steps`` whole training steps (forward, loss, backward, clip, AdamW)."""
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else nullcontext
    t = time.perf_counter()
    for _ in range(steps):
        with ctx():
            loss = model(x).float().pow(2).mean()  # (B, T, D) -> scalar
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return x.shape[0] * steps / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3, help="timed training steps per repeat")
    ap.add_argument("--presets", default=",".join(FEATURES))
    ap.add_argument("--compile", action="store_true", help="add FusedLSTM + torch.compile'd cell (jade)")
    ap.add_argument("--batches", default="", help="extra batch sizes for jade, e.g. 64,512")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads {torch.get_num_threads()}, batch {args.batch}, T {T}, load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    a = torch.randn(512, 512)
    t0 = time.perf_counter()
    for _ in range(20):
        torch.mm(a, a)
    print(f"reference: fp32 torch.mm (MKL) 512^3 {20 * 2 * 512**3 / (time.perf_counter() - t0) / 1e9:.0f} "
          f"GFLOP/s; oneDNN 512^3 fp32 {onednn_gflops(512, 512, 512, torch.float32):.0f}, "
          f"bf16 {onednn_gflops(512, 512, 512, torch.bfloat16):.0f} GFLOP/s\n")
    runs: list[tuple[str, RNNEncoderConfig, int]] = []
    for name in args.presets.split(","):
        enc = preset_config(name, n_features=FEATURES[name]).encoder
        assert isinstance(enc, RNNEncoderConfig), name
        runs.append((name, enc, args.batch))
        if name == "jade":
            runs += [(name, enc, int(b)) for b in args.batches.split(",") if b]
    print("| preset | batch | variant | samples/s best / median (min / median time) | train GFLOP/sample "
          "| achieved GFLOP/s (median) | oneDNN gate-GEMM ceiling GFLOP/s | share of ceiling |")
    print("|---|---|---|---|---|---|---|---|")
    for name, enc, batch in runs:
        ceil = {dt: ceiling(enc, batch, dt) for dt in (torch.float32, torch.bfloat16)}
        variants: list[tuple[str, str, bool, Callable[..., tuple[torch.Tensor, torch.Tensor]]]] = [
            ("nn.LSTM fp32", "torch", False, lstm_cell), ("nn.LSTM bf16", "torch", True, lstm_cell),
            ("FusedLSTM fp32", "fused", False, lstm_cell), ("FusedLSTM bf16", "fused", True, lstm_cell)]
        if args.compile and name == "jade" and batch == args.batch:
            compiled = torch.compile(lstm_cell, dynamic=False)
            variants += [("FusedLSTM compiled fp32", "fused", False, compiled),
                         ("FusedLSTM compiled bf16", "fused", True, compiled)]
        x = torch.randn(batch, T, enc.input_size)
        models = [build(enc, impl, cell) for _, impl, _, cell in variants]
        opts = [torch.optim.AdamW(m.parameters(), lr=1e-3) for m in models]
        for (label, _, bf16, _), m, o in zip(variants, models, opts, strict=True):
            t = time.perf_counter()
            train_rate(m, o, x, bf16, 1)  # warm-up (and compilation)
            if "compiled" in label:
                print(f"<!-- {label}: first step incl. compilation {time.perf_counter() - t:.1f} s -->")
        rates: list[list[float]] = [[] for _ in variants]
        for _ in range(args.repeats):  # interleaved: machine noise is shared
            for i, ((_, _, bf16, _), m, o) in enumerate(zip(variants, models, opts, strict=True)):
                rates[i].append(train_rate(m, o, x, bf16, args.steps))
        ceil = {dt: max(c, ceiling(enc, batch, dt)) for dt, c in ceil.items()}  # best of start, end
        flops = rnn_train_flops(enc)
        for (label, _, bf16, _), r in zip(variants, rates, strict=True):
            med = statistics.median(r)
            c = ceil[torch.bfloat16 if bf16 else torch.float32]
            print(f"| {name} | {batch} | {label} | {max(r):,.0f} / {med:,.0f} | {flops / 1e9:.3f} | "
                  f"{flops * med / 1e9:.0f} | {c:.0f} | {100 * flops * med / 1e9 / c:.0f}% |", flush=True)
    print(f"\nload average at the end {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
