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
  AdamW step at batch ``--batch``; whole step) for nn.LSTM fp32, nn.LSTM bf16 autocast and the
  candidate FusedLSTM fp32/bf16 defined here (nn.LSTM's parameters under nn.LSTM's names; one
  input-projection GEMM over all steps + a Python-loop recurrence doing only the hidden GEMM and
  the gates; checked equal to nn.LSTM in float64 before timing) and, with ``--compile``,
  FusedLSTM with its cell under torch.compile (jade only; compile time reported). For jade,
  ``--batches`` adds batch sizes to the same interleaved group. Variants are interleaved, min
  and median time of ``--repeats`` timed runs of ``--steps`` steps;
* achieved GFLOP/s = analytic FLOPs (bench_training.rnn_train_flops: 3 x 2 x 4H(in + H) per step
  and direction) x samples/s, as a share of the matching (fp32 or bf16) ceiling.

With ``--patches 5,7`` it adds nn.LSTM on patched sequences (p bars per step: T // p steps of
p * F inputs, a different model on the same windows), each against the ceiling of its own
shapes; ``--no-fused`` leaves out the FusedLSTM rows.

Usage: python benchmarks/bench_lstm_ceiling.py [--threads 2 | --threads 1,2] [--batch 256] [--repeats 3]
       [--steps 3] [--presets jade,...] [--compile] [--batches 64,256,512] [--patches 5,7]
       [--no-fused]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from moola.models import preset_config
from moola.models.config import RNNEncoderConfig

T = 105
FEATURES = {"simple_lstm": 4, "jade": 4, "jade_compact": 4, "direction_lstm": 31}


Cell = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def lstm_cell(gi_t: torch.Tensor, h: torch.Tensor, c: torch.Tensor, w_t: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """One step: input gates (B, 4H) + h (B, H) @ W_hh^T (H, 4H), then nn.LSTM's i, f, g, o gates."""
    g = torch.addmm(gi_t, h, w_t)  # (B, 4H)
    i, f, z, o = g.chunk(4, dim=1)
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(z)
    return torch.sigmoid(o) * torch.tanh(c_new), c_new


class FusedLSTM(nn.Module):
    """The candidate: batch-first stacked (bi)LSTM with nn.LSTM's parameter names and shapes."""

    def __init__(self, ref: nn.LSTM, cell: Cell = lstm_cell) -> None:
        super().__init__()
        self.cell, self.layers, self.bidirectional = cell, ref.num_layers, ref.bidirectional
        for name, p in ref.named_parameters():  # weight_ih_l{k}{_reverse}, weight_hh_.., bias_..
            self.register_parameter(name, nn.Parameter(p.detach().clone()))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        z = x  # (B, T, in)
        for k in range(self.layers):
            outs = []
            for sfx in ("", "_reverse")[: 2 if self.bidirectional else 1]:
                bias = getattr(self, f"bias_ih_l{k}{sfx}") + getattr(self, f"bias_hh_l{k}{sfx}")
                gi = F.linear(z, getattr(self, f"weight_ih_l{k}{sfx}"), bias)  # (B, T, 4H), one GEMM
                steps = gi.unbind(1)  # T x (B, 4H): one backward stack, not a zero-fill per step
                w_t = getattr(self, f"weight_hh_l{k}{sfx}").t()  # (H, 4H)
                h = c = gi.new_zeros(gi.shape[0], gi.shape[2] // 4)  # (B, H)
                out: list[torch.Tensor] = [h] * len(steps)
                for t in (range(len(steps) - 1, -1, -1) if sfx else range(len(steps))):
                    h, c = self.cell(steps[t], h, c, w_t)
                    out[t] = h
                outs.append(torch.stack(out, dim=1))  # (B, T, H)
            z = torch.cat(outs, dim=2)  # (B, T, H * directions)
        return z, None


def check_equal(enc: RNNEncoderConfig) -> float:
    """Max |difference| of output and gradients, FusedLSTM vs nn.LSTM, float64, same weights."""
    torch.manual_seed(0)
    ref = nn.LSTM(enc.input_size, enc.hidden, enc.layers, batch_first=True,
                  bidirectional=enc.bidirectional).double()
    fused = FusedLSTM(ref)
    x = torch.randn(3, 20, enc.input_size, dtype=torch.float64) * 3
    res = []
    for rnn in (ref, fused):
        out = rnn(x)[0]
        out.pow(2).sum().backward()
        res.append([out.detach()] + [p.grad for _, p in sorted(rnn.named_parameters())])
    return max((a - b).abs().max().item() for a, b in zip(*res, strict=True))


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


def gate_gemms(enc: RNNEncoderConfig, batch: int, t: int = T) -> list[tuple[int, int, int, int]]:
    """(m, k, n, count) of every gate GEMM of one training step: forward, input-grad, weight-grad."""
    dirs = 2 if enc.bidirectional else 1
    g, h, bt = 4 * enc.hidden, enc.hidden, batch * t
    out: list[tuple[int, int, int, int]] = []
    inp = enc.input_size
    for _ in range(enc.layers):
        out += [(bt, inp, g, dirs), (bt, g, inp, dirs), (inp, bt, g, dirs)]  # input projection
        out += [(batch, h, g, dirs * t), (batch, g, h, dirs * t), (h, bt, g, dirs)]  # recurrent
        inp = h * dirs
    return out


def ceiling(enc: RNNEncoderConfig, batch: int, dtype: torch.dtype, t: int = T) -> float:
    """Total gate-GEMM FLOPs over their total time at each GEMM's measured oneDNN rate."""
    flops = secs = 0.0
    for m, k, n, count in gate_gemms(enc, batch, t):
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


class Patched(nn.Module):
    """Sequence patching ahead of the recurrence: ``p`` consecutive bars become one step of
    ``p * F`` inputs, so the LSTM runs T // p steps (a different model on the same windows)."""

    def __init__(self, lstm: nn.LSTM, p: int) -> None:
        super().__init__()
        self.lstm, self.p = lstm, p

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        b, t, f = x.shape  # (B, T, F) -> (B, T // p, p * F)
        return self.lstm(x[:, : t - t % self.p].reshape(b, t // self.p, self.p * f))[0], None


def build(enc: RNNEncoderConfig, impl: str, cell: Cell, patch: int = 1) -> nn.Module:
    torch.manual_seed(0)
    ref = nn.LSTM(enc.input_size * patch, enc.hidden, enc.layers, batch_first=True,
                  bidirectional=enc.bidirectional)
    if patch > 1:
        return Patched(ref, patch)
    return FusedLSTM(ref, cell) if impl == "fused" else ref


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, bf16: bool) -> None:
    """One whole training step: forward, mean square of the output, backward, clip, AdamW."""
    with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
        loss = model(x)[0].float().pow(2).mean()  # (B, T, D) -> scalar
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()


def train_rate(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, bf16: bool,
               steps: int) -> float:
    """Samples/s of ``steps`` whole training steps (``train_step``)."""
    t = time.perf_counter()
    for _ in range(steps):
        train_step(model, opt, x, bf16)
    return x.shape[0] * steps / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="2", help="thread counts, e.g. 1,2: each variant at each, "
                    "interleaved, against the ceiling at that count")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3, help="timed training steps per repeat")
    ap.add_argument("--presets", default=",".join(FEATURES))
    ap.add_argument("--compile", action="store_true", help="add FusedLSTM + torch.compile'd cell (jade)")
    ap.add_argument("--batches", default="", help="extra batch sizes for jade, e.g. 64,512")
    ap.add_argument("--patches", default="", help="add nn.LSTM on patched sequences, e.g. 5,7 "
                    "(p bars per step: T // p steps of p * F inputs)")
    ap.add_argument("--no-fused", action="store_true", help="leave out the FusedLSTM rows")
    args = ap.parse_args()
    counts = [int(c) for c in args.threads.split(",")]
    torch.set_num_threads(max(counts))
    print(f"threads {args.threads}, batch {args.batch}, T {T}, load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    a = torch.randn(512, 512)
    t0 = time.perf_counter()
    for _ in range(20):
        torch.mm(a, a)
    print(f"reference: fp32 torch.mm (MKL) 512^3 {20 * 2 * 512**3 / (time.perf_counter() - t0) / 1e9:.0f} "
          f"GFLOP/s; oneDNN 512^3 fp32 {onednn_gflops(512, 512, 512, torch.float32):.0f}, "
          f"bf16 {onednn_gflops(512, 512, 512, torch.bfloat16):.0f} GFLOP/s\n")
    print("| preset | batch | variant | samples/s best / median (min / median time) | train GFLOP/sample "
          "| achieved GFLOP/s (median) | oneDNN gate-GEMM ceiling GFLOP/s | share of ceiling |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.presets.split(","):
        enc = preset_config(name, n_features=FEATURES[name]).encoder
        assert isinstance(enc, RNNEncoderConfig), name
        if (err := check_equal(enc)) > 1e-10:
            raise SystemExit(f"{name}: FusedLSTM differs from nn.LSTM by {err:.3g} in float64")
        batches = [args.batch] + ([int(b) for b in args.batches.split(",") if b] if name == "jade" else [])
        patches = [int(p) for p in args.patches.split(",") if p]
        # (label, impl, bf16, cell, batch, patch)
        variants: list[tuple[str, str, bool, Cell, int, int]] = []
        for b in batches:
            variants += [("nn.LSTM fp32", "torch", False, lstm_cell, b, 1),
                         ("nn.LSTM bf16", "torch", True, lstm_cell, b, 1)]
            if not args.no_fused:
                variants += [("FusedLSTM fp32", "fused", False, lstm_cell, b, 1),
                             ("FusedLSTM bf16", "fused", True, lstm_cell, b, 1)]
            for p in patches:
                variants += [(f"nn.LSTM fp32, patch {p} ({T // p} steps)", "torch", False, lstm_cell, b, p),
                             (f"nn.LSTM bf16, patch {p} ({T // p} steps)", "torch", True, lstm_cell, b, p)]
        if args.compile and name == "jade":
            compiled = torch.compile(lstm_cell, dynamic=False)
            variants += [("FusedLSTM compiled fp32", "fused", False, compiled, args.batch, 1),
                         ("FusedLSTM compiled bf16", "fused", True, compiled, args.batch, 1)]
        # each at each thread count: (label, impl, bf16, cell, batch, patch, threads)
        runs = [(f"{v[0]}, {tc} thread{'s' * (tc > 1)}" if len(counts) > 1 else v[0], *v[1:], tc)
                for v in variants for tc in counts]

        def enc_of(p: int, enc: RNNEncoderConfig = enc) -> RNNEncoderConfig:
            return enc.model_copy(update={"input_size": enc.input_size * p})

        def ceiling_at(b: int, p: int, dt: torch.dtype, tc: int) -> float:
            torch.set_num_threads(tc)
            return ceiling(enc_of(p), b, dt, T // p)

        keys = sorted({(b, p, tc) for *_, b, p, tc in runs})
        ceil = {(b, p, tc, dt): ceiling_at(b, p, dt, tc) for b, p, tc in keys
                for dt in (torch.float32, torch.bfloat16)}
        xs = {b: torch.randn(b, T, enc.input_size) for b in batches}
        models = [build(enc, impl, cell, p) for _, impl, _, cell, _, p, _ in runs]
        opts = [torch.optim.AdamW(m.parameters(), lr=1e-3) for m in models]
        for (label, _, bf16, _, b, _, tc), m, o in zip(runs, models, opts, strict=True):
            torch.set_num_threads(tc)
            t = time.perf_counter()
            train_rate(m, o, xs[b], bf16, 1)  # warm-up (and compilation)
            if "compiled" in label:
                print(f"<!-- {label}: first step incl. compilation {time.perf_counter() - t:.1f} s -->")
        rates: list[list[float]] = [[] for _ in runs]
        for _ in range(args.repeats):  # interleaved: machine noise is shared
            for i, ((_, _, bf16, _, b, _, tc), m, o) in enumerate(zip(runs, models, opts, strict=True)):
                torch.set_num_threads(tc)
                rates[i].append(train_rate(m, o, xs[b], bf16, args.steps))
        ceil = {k: max(c, ceiling_at(*k[:2], k[3], k[2])) for k, c in ceil.items()}  # best of 2
        for (label, _, bf16, _, b, p, tc), r in zip(runs, rates, strict=True):
            med = statistics.median(r)
            flops = rnn_train_flops(enc_of(p), T // p)
            c = ceil[b, p, tc, torch.bfloat16 if bf16 else torch.float32]
            print(f"| {name} | {b} | {label} | {max(r):,.0f} / {med:,.0f} | {flops / 1e9:.3f} | "
                  f"{flops * med / 1e9:.0f} | {c:.0f} | {100 * flops * med / 1e9 / c:.0f}% |", flush=True)
    print(f"\nload average at the end {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
