"""Probe (a part, not a whole command): one preset on one small labeled set through the Trainer,
with the old defaults (60 epochs, batches of 64) or JSON overrides of TrainConfig; prints the
first and last training loss against ln(C) and the final training/test accuracy.

    python benchmarks/probe_lstm_steps.py PickupGestureWiimoteZ_eq PickupGestureWiimoteZ
    python benchmarks/probe_lstm_steps.py PickupGestureWiimoteZ_eq PickupGestureWiimoteZ '{"batch_size": 8}'
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from aeon.datasets import load_from_ts_file

from moola.models import build_model, preset_config
from moola.training import ClassificationObjective, TensorData, TrainConfig, Trainer


def load(name: str, folder: str) -> tuple[list[tuple[np.ndarray, np.ndarray]], int]:
    import aeon.datasets

    base = Path(aeon.datasets.__file__).parent / "data" / folder
    parts = [load_from_ts_file(str(base / f"{name}_{s}.ts")) for s in ("TRAIN", "TEST")]
    classes = sorted(set(parts[0][1]))
    return [(np.asarray(X, dtype=np.float32).transpose(0, 2, 1),
             np.array([classes.index(v) for v in y])) for X, y in parts], len(classes)


def main() -> None:
    name, folder = sys.argv[1], sys.argv[2]
    kw = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    preset = kw.pop("preset", "jade_compact")
    torch.set_num_threads(1)
    ((xtr, ytr), (xte, yte)), C = load(name, folder)
    torch.manual_seed(0)
    cfg = preset_config(preset, n_features=xtr.shape[2], n_classes=C)
    cfg.pointer = None
    trainer = Trainer(build_model(cfg), ClassificationObjective(C),
                      TrainConfig(**{"epochs": 60, "early_stopping": None, **kw}), show_progress=False)
    t0 = time.time()
    h = trainer.fit(TensorData({"x": xtr, "y": ytr}), TensorData({"x": xte, "y": yte})).history
    print(f"{name} {preset} {kw}: {trainer.global_step_} steps, ln C {np.log(C):.3f}, train loss "
          f"{h[0]['train_loss']:.3f} -> {h[-1]['train_loss']:.3f}, train accuracy "
          f"{h[-1]['train_accuracy']:.3f}, test accuracy {h[-1]['val_accuracy']:.3f}, "
          f"{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
