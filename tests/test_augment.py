"""Augmentations keep real ohlc4 bars valid; ViewsData shows k views without copying windows."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest
import torch

from _real_data import load_daily
from moola.config import ConfigError
from moola.pretraining import (
    AugmentConfig,
    Augmenter,
    ViewsData,
    jitter,
    magnitude_warp,
    ohlc_valid,
    repair_ohlc,
    scale,
    smooth_curve,
    time_warp,
)
from moola.pretraining.augment import OHLC_NAMES
from moola.training import TensorData, epoch_order

T = 105
SYMBOLS = ("AAPL", "AMZN", "JPM", "XOM", "JNJ", "PG", "WMT", "IBM", "BHF", "UA")


@lru_cache(maxsize=1)
def _raw_windows() -> np.ndarray:
    """Overlapping (stride 21) raw ohlc4 windows: log(o, h, l, c / previous close), finite only."""
    out = []
    for sym in SYMBOLS:
        df = load_daily((sym,))
        o, h, lo, c = (df[k].to_numpy() for k in ("open", "high", "low", "close"))
        x = np.log(np.stack([o[1:], h[1:], lo[1:], c[1:]], axis=1) / c[:-1, None])
        for s in range(0, len(x) - T + 1, 21):
            w = x[s:s + T]
            if np.isfinite(w).all():
                out.append(w)
    return np.ascontiguousarray(np.stack(out), dtype=np.float32)


def raw_windows() -> torch.Tensor:
    x = torch.from_numpy(_raw_windows().copy())
    assert len(x) > 300
    assert ohlc_valid(x).all(), "precondition: the real bars are valid"
    return x


def only(**kw: float) -> AugmentConfig:
    """One augmentation at p = 1, the others off."""
    base = {"jitter_sigma": 0.0, "scaling_sigma": 0.0, "magnitude_warp_sigma": 0.0,
            "time_warp_sigma": 0.0, "p": 1.0}
    base.update(kw)
    return AugmentConfig(**base)


# --- validity on real windows ----------------------------------------------------------------------


@pytest.mark.parametrize("sigma", [0.1, 0.5, 2.0])
def test_scaling_keeps_bars_valid(sigma: float) -> None:
    torch.manual_seed(0)
    x = raw_windows()
    y = scale(x, sigma)
    assert ohlc_valid(y).all()
    r = y / x.where(x != 0, torch.ones_like(x))
    f = r[x != 0].reshape(-1)
    assert (f > 0).all()
    # one factor per sample: all non-zero entries of a sample share it
    per = y.reshape(len(x), -1)
    nz = x.reshape(len(x), -1) != 0
    j = nz.float().argmax(1)
    fac = per.gather(1, j[:, None]) / x.reshape(len(x), -1).gather(1, j[:, None])
    assert torch.allclose(per, x.reshape(len(x), -1) * fac, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("sigma", [0.2, 0.8, 3.0])
def test_magnitude_warp_keeps_bars_valid_with_a_shared_positive_curve(sigma: float) -> None:
    torch.manual_seed(1)
    x = raw_windows()
    y = magnitude_warp(x, sigma, knots=4)
    assert ohlc_valid(y).all()
    # the same factor for o, h, l, c of a bar: y_close / x_close == y_high / x_high where defined
    ok = (x[..., 3].abs() > 1e-4) & (x[..., 1].abs() > 1e-4)
    fc = (y[..., 3] / x[..., 3])[ok]
    fh = (y[..., 1] / x[..., 1])[ok]
    assert torch.allclose(fc, fh, rtol=1e-4)
    assert (fc > 0).all()


@pytest.mark.parametrize("sigma", [0.12, 0.5, 2.0])
def test_time_warp_keeps_bars_valid(sigma: float) -> None:
    torch.manual_seed(2)
    x = raw_windows()
    y = time_warp(x, sigma, knots=4)
    assert ohlc_valid(y).all()
    assert not torch.equal(x, y)
    # endpoints map onto themselves
    assert torch.allclose(y[:, 0], x[:, 0], atol=1e-6) and torch.allclose(y[:, -1], x[:, -1], atol=1e-6)


def test_jitter_breaks_bars_and_the_repair_fixes_them() -> None:
    torch.manual_seed(3)
    x = raw_windows()
    j = jitter(x, 0.3)
    assert not ohlc_valid(j).all(), "the negative control: raw jitter does break bars"
    r = repair_ohlc(j)
    assert ohlc_valid(r).all()
    assert torch.equal(r[..., [0, 3]], j[..., [0, 3]])  # open/close kept; only h/l widened
    assert (r[..., 1] >= j[..., 1]).all() and (r[..., 2] <= j[..., 2]).all()


def test_jitter_is_scale_free() -> None:
    torch.manual_seed(4)
    x = raw_windows()[:64]
    torch.manual_seed(5)
    a = jitter(x, 0.1) - x
    torch.manual_seed(5)
    b = jitter(100 * x, 0.1) - 100 * x
    assert torch.allclose(b, 100 * a, rtol=1e-3, atol=1e-6)
    ratio = a.std((1,)) / x.std((1,), unbiased=False)
    assert 0.07 < float(ratio.mean()) < 0.13


@pytest.mark.parametrize("cfg", [
    AugmentConfig(),
    AugmentConfig(p=1.0),
    AugmentConfig(p=1.0, jitter_sigma=0.5, scaling_sigma=0.5, magnitude_warp_sigma=1.0,
                  time_warp_sigma=1.0),
])
def test_combined_augmenter_keeps_bars_valid(cfg: AugmentConfig) -> None:
    torch.manual_seed(6)
    x = raw_windows()
    before = x.clone()
    for _ in range(3):
        y = Augmenter(cfg, OHLC_NAMES)(x)  # ohlc4 windows: the schema turns the bar repair on
        assert torch.isfinite(y).all()
        assert ohlc_valid(y).all()
        assert not torch.equal(y, x)
    assert torch.equal(x, before), "the augmenter must not modify its input"


def test_time_warp_resamples_monotonically() -> None:
    torch.manual_seed(7)
    ramp = torch.arange(T, dtype=torch.float32).reshape(1, T, 1).expand(16, T, 1).contiguous()
    y = time_warp(ramp, 0.5)
    assert (y[:, 1:] > y[:, :-1]).all(), "a warp must be strictly increasing"
    assert (y[:, 1:-1] != ramp[:, 1:-1]).any()


def test_smooth_curve_is_positive_and_smooth() -> None:
    torch.manual_seed(8)
    c = smooth_curve(256, T, 4, 0.2)
    assert (c > 0).all()
    assert float(c.diff(dim=1).abs().max()) < 0.1  # no jumps between neighbouring bars
    assert 0.95 < float(c.mean()) < 1.05
    big = smooth_curve(256, T, 4, 5.0)
    assert (big > 0).all()


def test_augmenter_uses_the_global_rng() -> None:
    x = raw_windows()[:32]
    aug = Augmenter(AugmentConfig(p=0.5))
    torch.manual_seed(9)
    a = aug(x)
    torch.manual_seed(9)
    b = aug(x)
    c = aug(x)
    assert torch.equal(a, b) and not torch.equal(b, c)


def test_probability_p_applies_per_sample() -> None:
    x = raw_windows()[:400]
    torch.manual_seed(10)
    y = Augmenter(only(scaling_sigma=0.3, p=0.3))(x)
    changed = (y != x).flatten(1).any(1).float().mean()
    assert 0.2 < float(changed) < 0.4
    assert torch.equal(Augmenter(only(scaling_sigma=0.3, p=0.0))(x), x)


def test_ohlc_needs_four_columns() -> None:
    with pytest.raises(ValueError, match="ohlc"):
        Augmenter(AugmentConfig(ohlc=True))(torch.zeros(2, 10, 3))
    y = Augmenter(AugmentConfig(ohlc=False, p=1.0))(torch.randn(2, 10, 3))
    assert y.shape == (2, 10, 3)


def test_ohlc_repair_is_chosen_from_the_feature_schema_not_assumed() -> None:
    """Any number of channels augments; the bar repair applies only to ohlc4 columns."""
    assert Augmenter(AugmentConfig(), [*OHLC_NAMES, "volume_lr"]).ohlc is True
    assert Augmenter(AugmentConfig(), ["acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y"]).ohlc is False
    assert Augmenter(AugmentConfig()).ohlc is False  # no schema: nothing assumed
    y = Augmenter(AugmentConfig(p=1.0), ["a", "b", "c", "d", "e", "f"])(torch.randn(3, 50, 6))
    assert y.shape == (3, 50, 6) and torch.isfinite(y).all()
    one = Augmenter(AugmentConfig(p=1.0), ["x"])(torch.randn(2, 30, 1))
    assert one.shape == (2, 30, 1)
    with pytest.raises(ValueError, match="not \\['open_lr'"):
        Augmenter(AugmentConfig(ohlc=True), ["a", "b", "c", "d"])


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ConfigError):
        AugmentConfig.from_dict({"p": 1.5})
    with pytest.raises(ConfigError):
        AugmentConfig.from_dict({"jitter_sigma": -0.1})
    with pytest.raises(ConfigError):
        AugmentConfig.from_dict({"views": 0})
    assert AugmentConfig().time_warp_sigma == 0.12 and AugmentConfig().views == 1


# --- ViewsData --------------------------------------------------------------------------------------


def test_views_data_has_n_times_k_rows_that_are_base_rows() -> None:
    x = raw_windows()[:10]
    y = torch.arange(10)
    base = TensorData({"x": x, "y": y})
    v = ViewsData(base, 3)
    assert len(v) == 30 and v.n == 30 and v.base_n == 10
    idx = torch.tensor([0, 9, 10, 19, 25, 29])
    b = v.batch(idx)
    assert torch.equal(b["y"], idx % 10)
    assert torch.equal(b["x"], x[idx % 10])
    # the base is not copied k times
    assert v.base.tensors["x"].data_ptr() == base.tensors["x"].data_ptr()
    assert v.to(torch.device("cpu")).n == 30
    # one epoch: every window k times
    order = epoch_order(len(v), seed=0, epoch=0)
    seen = torch.cat([bt["y"] for bt in v.batches(order, 7)])
    assert torch.equal(torch.bincount(seen, minlength=10), torch.full((10,), 3))
    # start= skips whole batches, as TensorData.batches does
    rest = torch.cat([bt["y"] for bt in v.batches(order, 7, start=2)])
    assert torch.equal(rest, seen[14:])


def test_views_data_rejects_bad_k() -> None:
    with pytest.raises(ValueError):
        ViewsData(TensorData({"x": torch.zeros(2, 3, 4)}), 0)
