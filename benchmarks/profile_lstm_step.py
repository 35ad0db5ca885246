"""Where one LSTM training step's time goes (a part: one step of the bare encoder, profiled).

For each LSTM preset at batch ``--batch`` (the same step bench_lstm_ceiling.py times: forward,
mean square of the output, backward, clip, AdamW), fp32 and bf16 autocast, torch.profiler's
self CPU time of the step grouped into: oneDNN's RNN primitive forward (``mkldnn_rnn_layer``)
and backward (``mkldnn_rnn_layer_backward`` with its autograd node), dtype casts and copies
(``copy_``/``_to_copy``: autocast's weight and activation casts), the optimizer and clipping,
and everything else. It answers whether anything outside oneDNN's kernel is left to win.

Usage: python benchmarks/profile_lstm_step.py [--presets simple_lstm,jade,direction_lstm]
       [--batch 256] [--threads 2] [--steps 3]
"""

from __future__ import annotations

import argparse
import os
from collections import defaultdict

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from bench_lstm_ceiling import FEATURES, T, build, lstm_cell, train_step
from moola.models import preset_config
from moola.models.config import RNNEncoderConfig

GROUPS = ("RNN forward", "RNN backward", "casts + copies", "clip + AdamW", "other")


def group(name: str) -> str:
    if name == "aten::mkldnn_rnn_layer":
        return "RNN forward"
    if "mkldnn_rnn_layer_backward" in name or "MkldnnRnnLayerBackward" in name:
        return "RNN backward"
    if name in ("aten::copy_", "aten::_to_copy", "aten::to"):
        return "casts + copies"
    if "Optimizer" in name or "AdamW" in name or "foreach" in name or "norm" in name:
        return "clip + AdamW"
    return "other"


def shares(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, bf16: bool,
           steps: int) -> tuple[float, dict[str, float]]:
    """Step time in ms (profiled, mean over ``steps``) and each group's share of self CPU time."""
    for _ in range(2):
        train_step(model, opt, x, bf16)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            train_step(model, opt, x, bf16)
    acc: dict[str, float] = defaultdict(float)
    for ev in prof.key_averages():
        acc[group(ev.key)] += ev.self_cpu_time_total
    total = sum(acc.values())
    return total / steps / 1e3, {g: acc[g] / total for g in GROUPS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="simple_lstm,jade,direction_lstm")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, T {T}, load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print("| preset | precision | step ms (profiled) | " + " | ".join(GROUPS) + " |")
    print("|---|---|---|" + "---|" * len(GROUPS))
    for name in args.presets.split(","):
        enc = preset_config(name, n_features=FEATURES[name]).encoder
        if not isinstance(enc, RNNEncoderConfig):
            raise SystemExit(f"{name} has no LSTM encoder; valid: {', '.join(FEATURES)}")
        model = build(enc, "torch", lstm_cell)  # nn.LSTM, seed 0
        opt = torch.optim.AdamW(model.parameters(), 1e-3)
        x = torch.randn(args.batch, T, enc.input_size)  # (B, T, F)
        for bf16 in (False, True):
            ms, sh = shares(model, opt, x, bf16, args.steps)
            print(f"| {name} | {'bf16' if bf16 else 'fp32'} | {ms:.0f} | "
                  + " | ".join(f"{100 * sh[g]:.0f}%" for g in GROUPS) + " |")


if __name__ == "__main__":
    main()
