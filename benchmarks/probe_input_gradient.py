"""Probe (a part): the share of the input gradient that reaches each quarter of the steps, at
initialisation, for four presets on PickupGestureWiimoteZ (length up to 361): does the gradient
vanish through long series?

    python benchmarks/probe_input_gradient.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _small_sets import load, padded
from moola.models import build_model, preset_config


def main() -> None:
    torch.set_num_threads(1)
    ds = load("PickupGestureWiimoteZ")
    T = max(ds.lengths)
    x = torch.from_numpy(padded(ds.X_train, T))
    classes = sorted(set(ds.y_train))
    y = torch.tensor([classes.index(v) for v in ds.y_train])
    for name in ["simple_lstm", "jade_compact", "patch_lstm", "inception_compact"]:
        torch.manual_seed(0)
        cfg = preset_config(name, n_features=1, n_classes=len(classes))
        cfg.pointer = None
        xx = x.clone().requires_grad_(True)
        F.cross_entropy(build_model(cfg).train()({"x": xx})["logits"], y).backward()
        assert xx.grad is not None
        g = xx.grad.abs().sum((0, 2))  # (T,)
        share = [float(g[i * T // 4:(i + 1) * T // 4].sum() / g.sum()) for i in range(4)]
        print(f"{name:18s} share of the input gradient per quarter of {T} steps: "
              + " ".join(f"{v:.3f}" for v in share))


if __name__ == "__main__":
    main()
