"""Training throughput, loop overhead, model FLOP utilisation and inference latency.

For simple_lstm and a 2-layer BiLSTM(128) (the ``jade`` preset) at batch 64 and 256, fp32 and
bf16: samples/s through ``moola.training.Trainer`` and through a bare PyTorch loop over
pre-materialised tensors, measured alternately in this one process (overhead = 1 - moola/bare);
analytic FLOPs/sample x samples/s as a share of the ceiling the LSTM kernels actually have: oneDNN
fp32/bf16 GFLOP/s of the LSTM's own gate GEMM shapes at that batch, measured here
(bench_lstm_ceiling.ceiling; MKL's fp32 ``torch.mm`` 512^3 is printed for reference only); and
single-window latency (p50/p99, 1 thread) for every preset.

Usage: python benchmarks/bench_training.py [--quick] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F

from bench_lstm_ceiling import ceiling, rnn_train_flops
from moola.models import build_model, preset_config
from moola.models.config import RNNEncoderConfig
from moola.training import ClassificationObjective, TensorData, TrainConfig, Trainer

T = 105


def matmul_gflops(dtype: torch.dtype, n: int = 512, reps: int = 50) -> float:
    """``torch.mm`` GFLOP/s at n^3 (fp32: MKL, which nn.LSTM does not use; printed for reference)."""
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    for _ in range(5):
        torch.mm(a, b)
    t = time.perf_counter()
    for _ in range(reps):
        torch.mm(a, b)
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def make_data(n: int, f: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, T, f)).astype(np.float32)
    y = (x[:, -10:, 0].sum(1) > 0).astype(np.int64)
    return x, y


def bare_loop(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, bs: int, bf16: bool) -> float:
    """The reference: a plain PyTorch loop over pre-materialised batches."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batches = [(x[i:i + bs], y[i:i + bs]) for i in range(0, len(x), bs)]
    model.train()
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
    t = time.perf_counter()
    for xb, yb in batches:
        with ctx:
            out = model({"x": xb})
            loss = F.cross_entropy(out["logits"].float(), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return len(x) / (time.perf_counter() - t)


def moola_loop(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, bs: int, bf16: bool) -> float:
    cfg = TrainConfig(epochs=1, batch_size=bs, early_stopping=None, grad_clip=1.0,
                      precision="bf16" if bf16 else "fp32", device="cpu")
    cfg.guards.train_eval_samples = 1
    tr = Trainer(model, ClassificationObjective(2), cfg, show_progress=False)
    tr.log = lambda _m: None  # type: ignore[method-assign]
    res = tr.fit(TensorData({"x": x, "y": y}))
    return float(res.history[-1]["samples_per_s"])


class _Tiny(torch.nn.Module):
    """A model that costs almost nothing, so the loop's own per-step cost is what is timed."""

    def __init__(self, f: int) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(f, 2)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.fc(x[:, -1])}


def loop_cost_ms(bs: int, n: int = 8192, repeats: int = 5) -> tuple[float, float]:
    """Per-step ms of moola's loop and of the bare loop around a near-free model."""
    x_np, y_np = make_data(n, 4)
    x_t, y_t = torch.from_numpy(x_np), torch.from_numpy(y_np)
    steps = (n + bs - 1) // bs
    del steps
    m, b = [], []
    for _ in range(repeats):  # samples/s -> ms per step of ``bs`` samples
        b.append(1e3 * bs / bare_loop(_Tiny(4), x_t, y_t, bs, False))
        m.append(1e3 * bs / moola_loop(_Tiny(4), x_np, y_np, bs, False))
    return statistics.median(m), statistics.median(b)


def latency(model: torch.nn.Module, f: int, reps: int) -> tuple[float, float]:
    model.eval()
    x = torch.randn(1, T, f)
    times = []
    with torch.inference_mode():
        for _ in range(20):
            model({"x": x})
        for _ in range(reps):
            t = time.perf_counter()
            model({"x": x})
            times.append(time.perf_counter() - t)
    ms = np.array(times) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer samples (smoke run)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n = 1024 if args.quick else 3072
    print(f"threads {args.threads}; torch.mm 512^3 (reference only): fp32 (MKL) "
          f"{matmul_gflops(torch.float32):.0f} GFLOP/s, bf16 {matmul_gflops(torch.bfloat16):.0f} GFLOP/s")
    print("| model | batch | precision | moola samples/s | bare samples/s | loop overhead | "
          "train GFLOP/sample | achieved GFLOP/s | oneDNN gate-GEMM ceiling GFLOP/s | "
          "share of that ceiling |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    steps_rate: dict[tuple[str, int], float] = {}
    for name in ("simple_lstm", "jade"):
        cfg = preset_config(name, n_features=4, n_classes=2)
        assert isinstance(cfg.encoder, RNNEncoderConfig), name
        flops = rnn_train_flops(cfg.encoder)
        x_np, y_np = make_data(n, 4)
        x_t, y_t = torch.from_numpy(x_np), torch.from_numpy(y_np)
        for bs in (64, 256):
            ceil = {bf16: ceiling(cfg.encoder, bs, torch.bfloat16 if bf16 else torch.float32)
                    for bf16 in (False, True)}
            for bf16 in (False, True):
                moola_r, bare_r = [], []
                for _ in range(args.repeats):  # alternate to share machine noise
                    torch.manual_seed(0)
                    bare_r.append(bare_loop(build_model(cfg), x_t, y_t, bs, bf16))
                    torch.manual_seed(0)
                    moola_r.append(moola_loop(build_model(cfg), x_np, y_np, bs, bf16))
                m, b = statistics.median(moola_r), statistics.median(bare_r)
                if not bf16:
                    steps_rate[name, bs] = b
                achieved = flops * m / 1e9
                c = ceil[bf16]
                print(f"| {name} | {bs} | {'bf16' if bf16 else 'fp32'} | {m:,.0f} | {b:,.0f} | "
                      f"{100 * (1 - m / b):+.1f}% | {flops / 1e9:.3f} | {achieved:.0f} | {c:.0f} | "
                      f"{100 * achieved / c:.0f}% |")
    print("\nloop cost per step around a near-free model (so model time cannot hide it), and "
          "that cost as a share of a real model's step (bare simple_lstm / jade fp32 step time)")
    print("| batch | moola ms/step | bare ms/step | loop's own cost ms/step | share of simple_lstm step |"
          " share of jade step |")
    print("|---|---|---|---|---|---|")
    for bs in (64, 256):
        m_ms, b_ms = loop_cost_ms(bs)
        own = m_ms - b_ms
        sl = 1e3 * bs / steps_rate["simple_lstm", bs]
        jd = 1e3 * bs / steps_rate["jade", bs]
        print(f"| {bs} | {m_ms:.3f} | {b_ms:.3f} | {own:+.3f} | {100 * own / sl:+.2f}% | "
              f"{100 * own / jd:+.2f}% |")
    torch.set_num_threads(1)
    print("\nsingle-window inference latency, 1 thread, inference_mode")
    print("| preset | input | p50 ms | p99 ms |")
    print("|---|---|---|---|")
    reps = 300 if args.quick else 1000
    for name, f in (("simple_lstm", 4), ("jade", 4), ("jade_compact", 4), ("direction_lstm", 31),
                    ("direction_transformer", 31)):
        torch.manual_seed(0)
        model = build_model(preset_config(name, n_features=f))
        p50, p99 = latency(model, f, reps)
        print(f"| {name} | 1x{T}x{f} | {p50:.2f} | {p99:.2f} |")


if __name__ == "__main__":
    main()
