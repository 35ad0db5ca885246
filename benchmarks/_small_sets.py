"""Small labeled series sets for the small-data benchmark, all on disk already (no download):
five UEA/UCR archive sets that aeon ships inside its wheel (train/test splits as published) and
the synthetic Cylinder-Bell-Funnel set (Saito 1994), generated with a fixed seed.

Chosen to span domains (motion, speech, gesture, electricity, pedestrian counts, synthetic),
lengths (24 to 1,460 steps, two of them variable), 2 to 10 classes and 20 to 270 training series.
The UCR archive asks users to cite it: Dau et al., "The UCR Time Series Archive" (2019); Bagnall
et al., "The UEA multivariate time series classification archive" (2018).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class LabeledSet:
    name: str
    domain: str
    X_train: list[np.ndarray]  # each (T_i, F)
    y_train: np.ndarray
    X_test: list[np.ndarray]
    y_test: np.ndarray

    @property
    def lengths(self) -> tuple[int, int]:
        ts = [x.shape[0] for x in self.X_train + self.X_test]
        return min(ts), max(ts)

    @property
    def n_classes(self) -> int:
        return int(np.unique(self.y_train).size)

    @property
    def n_features(self) -> int:
        return int(self.X_train[0].shape[1])


def _aeon_dir() -> Path:
    import aeon.datasets

    return Path(aeon.datasets.__file__).parent / "data"


def _ts(name: str, folder: str, split: str) -> tuple[list[np.ndarray], np.ndarray]:
    from aeon.datasets import load_from_ts_file

    X, y = load_from_ts_file(str(_aeon_dir() / folder / f"{name}_{split}.ts"))
    series = [np.asarray(x, dtype=np.float32).T for x in X]  # aeon: (channels, T) per series
    return series, np.asarray(y)


UCR = {  # name -> (folder, domain)
    "BasicMotions": ("BasicMotions", "motion (accelerometer + gyroscope)"),
    "JapaneseVowels": ("JapaneseVowels", "speech (LPC cepstra)"),
    "PickupGestureWiimoteZ": ("PickupGestureWiimoteZ", "gesture (Wii remote, z axis)"),
    "ACSF1": ("ACSF1", "electricity (appliance power)"),
    "UnitTest": ("UnitTest", "pedestrian counts (Chinatown subset)"),
}


def cbf(n_train: int = 30, n_test: int = 300, seed: int = 0) -> LabeledSet:
    """Cylinder-Bell-Funnel, length 128, 3 classes (Saito 1994): a plateau, a ramp up or a ramp
    down between random onsets a and b, scaled by 6 + N(0, 1), plus N(0, 1) noise per step."""
    rng = np.random.default_rng(seed)
    t = np.arange(1, 129)

    def make(n: int) -> tuple[list[np.ndarray], np.ndarray]:
        y = np.arange(n) % 3
        out = []
        for c in y:
            a = rng.integers(16, 33)
            b = a + rng.integers(32, 97)
            inside = (t >= a) & (t <= b)
            shape = [np.ones_like(t, float), (t - a) / (b - a), (b - t) / (b - a)][c]
            x = (6 + rng.standard_normal()) * inside * shape + rng.standard_normal(t.size)
            out.append(x.astype(np.float32)[:, None])
        return out, np.array(["cylinder", "bell", "funnel"])[y]

    Xtr, ytr = make(n_train)
    Xte, yte = make(n_test)
    return LabeledSet("CBF", "synthetic shapes", Xtr, ytr, Xte, yte)


def load(name: str) -> LabeledSet:
    if name == "CBF":
        return cbf()
    if name not in UCR:
        raise KeyError(f"unknown set {name!r}; known: {', '.join([*UCR, 'CBF'])}")
    folder, domain = UCR[name]
    Xtr, ytr = _ts(name, folder, "TRAIN")
    Xte, yte = _ts(name, folder, "TEST")
    return LabeledSet(name, domain, Xtr, ytr, Xte, yte)


SETS = [*UCR, "CBF"]


def padded(series: list[np.ndarray], T: int) -> np.ndarray:
    """(N, T, F) with each series z-normalised per channel and zero-padded (for the baselines,
    which need equal lengths; the neural models read the mask instead)."""
    out = np.zeros((len(series), T, series[0].shape[1]), dtype=np.float32)
    for i, s in enumerate(series):
        sd = s.std(0)
        out[i, : s.shape[0]] = (s - s.mean(0)) / np.where(sd > 1e-8, sd, 1.0)
    return out
