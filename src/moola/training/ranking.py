"""The cross-sectional ranking objective: per-day MSE, IC and differentiable Spearman losses
over the stocks present on each day, and per-day IC / RankIC / ICIR metrics per horizon.

A day batch (the ranking journey's contract) holds ``mask`` (D, S) presence, ``y`` (D, S, H)
per-date normalised labels, ``y_mask`` (D, S, H) label known, optional ``y_raw`` (D, S, H) raw
forward returns and optional ``day`` (D,) int64 panel date indices; the model returns
``{"ranking": (D, S, H)}``. Every loss term is computed per day over the stocks that are present
and have a known label, averaged over the days where it is defined, then combined over horizons.

Soft ranks are pairwise sigmoids in plain PyTorch (no extension needed): memory is D * S * S
floats (kept for backward), fine in fp32 for S up to a few thousand stocks per day.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator
from torch import Tensor

from moola.config import Config
from moola.training.objectives import Batch, Objective, Outputs

__all__ = [
    "RankingLossConfig",
    "RankingObjective",
    "daily_corr",
    "masked_pearson",
    "soft_rank",
]

TAU_EPS = 1e-6  # floor of the per-day temperature: a constant day still gives finite sigmoids
_PAIR_BUDGET = 1 << 24  # pairwise elements materialised per chunk of days (64 MiB in fp32)
TORCHSORT_INSTALL = "pip install torchsort"


def _torchsort_available() -> bool:
    return importlib.util.find_spec("torchsort") is not None


def _require_torchsort() -> None:
    if not _torchsort_available():
        raise ImportError(
            "loss.backend 'torchsort' was asked for but torchsort is not installed; install it "
            f"with `{TORCHSORT_INSTALL}` (it compiles against your torch) or use backend 'pairwise' "
            "(valid: 'pairwise', 'torchsort')")


def _check_2d(name: str, t: Tensor, like: Tensor | None = None) -> None:
    if t.dim() != 2:
        raise ValueError(f"'{name}' must be (D, S), got shape {tuple(t.shape)}")
    if like is not None and t.shape != like.shape:
        raise ValueError(f"'{name}' has shape {tuple(t.shape)}, expected {tuple(like.shape)}")


def _day_scale(x: Tensor, m: Tensor) -> Tensor:
    """Detached population std of the present x of each day, floored at TAU_EPS: (D, 1)."""
    mf = m.to(x.dtype)
    n = mf.sum(1, keepdim=True).clamp_min(1.0)  # (D, 1)
    mean = (x * mf).sum(1, keepdim=True) / n
    var = (((x - mean) * mf) ** 2).sum(1, keepdim=True) / n
    return var.detach().sqrt().clamp_min(TAU_EPS)


def soft_rank(x: Tensor, mask: Tensor, temperature: float | None = 0.1, *,
              relative: bool = True) -> Tensor:
    """Differentiable ranks per day (row): rank_i = 0.5 + sum_{j present} sigmoid((x_i - x_j) / tau).

    The j = i term is sigmoid(0) = 0.5, so ranks lie in [1, n] and tend to scipy's
    ``rankdata`` (average ties) as tau -> 0. With ``relative`` tau = temperature * std of the
    present x of that day (detached, floored at ``TAU_EPS``), so the result does not depend on
    the scale of x; otherwise tau = temperature. ``temperature=None`` gives the exact ranks
    (a step function, ties averaged; no gradient). Masked entries contribute nothing to the
    others and get rank 0; their values are ignored (NaN allowed). x, mask: (D, S) -> (D, S).
    """
    _check_2d("x", x)
    _check_2d("mask", mask, x)
    if temperature is not None and not temperature > 0:
        raise ValueError(f"temperature must be > 0 or None (exact ranks), got {temperature}")
    m = mask.bool()
    xs = torch.where(m, x, torch.zeros_like(x))  # (D, S): masked values never reach the graph
    if temperature is None:
        tau = None
    elif relative:
        tau = temperature * _day_scale(xs, m)  # (D, 1)
    else:
        tau = torch.full((x.shape[0], 1), float(temperature), dtype=x.dtype, device=x.device)
    n_s = max(int(x.shape[1]), 1)
    step = max(1, _PAIR_BUDGET // (n_s * n_s))  # days per chunk
    parts = []
    for d0 in range(0, x.shape[0], step):
        xc, mc = xs[d0:d0 + step], m[d0:d0 + step]
        diff = xc[:, :, None] - xc[:, None, :]  # (d, S, S): x_i - x_j
        if tau is None:
            p = (diff > 0).to(x.dtype) + 0.5 * (diff == 0).to(x.dtype)
        else:
            p = torch.sigmoid(diff / tau[d0:d0 + step, :, None])
        r = 0.5 + (p * mc[:, None, :].to(x.dtype)).sum(-1)  # (d, S)
        parts.append(torch.where(mc, r, torch.zeros_like(r)))
    return torch.cat(parts, 0) if parts else xs


def _torchsort_rank(x: Tensor, mask: Tensor, temperature: float) -> Tensor:
    """Soft ranks by torchsort (permutahedron projection), one present subset per day; the
    values are divided by their detached per-day std, ``temperature`` is its regularization."""
    _require_torchsort()
    import torchsort  # type: ignore[import-not-found,unused-ignore]

    m = mask.bool()
    xs = torch.where(m, x, torch.zeros_like(x))
    scale = _day_scale(xs, m)  # (D, 1)
    rows = []
    for d in range(x.shape[0]):  # D is a handful of days per batch
        r = torch.zeros_like(xs[d])
        idx = m[d].nonzero().squeeze(1)
        if idx.numel():
            v = (xs[d, idx] / scale[d]).unsqueeze(0).float()  # (1, n)
            sr = torchsort.soft_rank(v, regularization_strength=float(temperature))
            r = r.index_put((idx,), sr.squeeze(0).to(xs.dtype))
        rows.append(r)
    return torch.stack(rows, 0)


def masked_pearson(a: Tensor, b: Tensor, mask: Tensor, eps: float = 1e-12) -> tuple[Tensor, Tensor]:
    """Per-day Pearson of a and b over the masked-in entries: (r (D,), valid (D,) bool).

    A day with fewer than 2 entries or (numerically) zero variance in a or b gets r = 0 and
    valid = False, so callers average over ``valid`` days only; gradients stay finite.
    """
    _check_2d("a", a)
    _check_2d("b", b, a)
    _check_2d("mask", mask, a)
    m = mask.bool()
    mf = m.to(a.dtype)
    a = torch.where(m, a, torch.zeros_like(a))
    b = torch.where(m, b, torch.zeros_like(b))
    n = mf.sum(1)  # (D,)
    nc = n.clamp_min(1.0)[:, None]
    ca = (a - (a * mf).sum(1, keepdim=True) / nc) * mf  # (D, S)
    cb = (b - (b * mf).sum(1, keepdim=True) / nc) * mf
    va, vb = (ca * ca).sum(1), (cb * cb).sum(1)  # (D,)
    # relative variance floor: a constant day's rounding residue is not a signal
    sa = (a * a * mf).sum(1).detach()
    sb = (b * b * mf).sum(1).detach()
    valid = (n >= 2) & (va.detach() > eps * (sa + 1.0)) & (vb.detach() > eps * (sb + 1.0))
    den = torch.where(valid, va * vb, torch.ones_like(va)).sqrt()
    r = torch.where(valid, (ca * cb).sum(1) / den, torch.zeros_like(va))
    return r, valid


def _mean_over(v: Tensor, valid: Tensor) -> Tensor:
    """Mean of v over the valid days; 0 (still in the graph) when none is valid."""
    w = valid.to(v.dtype)
    return (v * w).sum() / w.sum().clamp_min(1.0)


class RankingLossConfig(Config):
    """Weights of the per-day loss terms; ``temperature`` is relative to each day's spread."""

    mse: float = Field(1.0, ge=0, description="weight of the masked MSE to the normalised labels")
    ic: float = Field(0.0, ge=0, description="weight of 1 - Pearson(pred, y) per day")
    rank: float = Field(0.0, ge=0, description=(
        "weight of 1 - Pearson(soft_rank(pred), rank(y)) per day: a differentiable Spearman"))
    temperature: float = Field(0.1, gt=0, description=(
        "soft-rank temperature, times each day's (detached) std of the predictions"))
    horizon_weights: list[float] | None = Field(None, description=(
        "one weight per horizon (summed as given); null: 1 / H each"))
    backend: Literal["pairwise", "torchsort"] = Field("pairwise", description=(
        f"soft ranks by pairwise sigmoids (pure torch) or torchsort ({TORCHSORT_INSTALL})"))

    @field_validator("horizon_weights")
    @classmethod
    def _weights(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and (any(not w >= 0 for w in v) or sum(v) <= 0):
            raise ValueError(f"horizon_weights must be >= 0 with a positive sum, got {v}")
        return v

    @model_validator(mode="after")
    def _some_term(self) -> RankingLossConfig:
        if self.mse == 0 and self.ic == 0 and self.rank == 0:
            raise ValueError("at least one of mse, ic, rank must be > 0")
        return self


class RankingObjective(Objective):
    """Per-day ranking losses over (D, S, H) scores; IC, RankIC and ICIR per horizon.

    ``metrics`` reports ``ic_h{h}``, ``rank_ic_h{h}``, ``icir_h{h}``, ``rank_icir_h{h}`` for each
    horizon h (against ``y_raw`` when the batches carry it, else ``y``), ``rank_ic`` and ``ic``
    of ``monitor_horizon`` (default: the first; early stopping monitors ``val_rank_ic``, mode
    max) and ``mse`` against the normalised labels.
    """

    name = "ranking"
    metric_names = ("mse", "ic_h{i}", "icir_h{i}", "rank_ic_h{i}", "rank_icir_h{i}", "days_h{i}",
                    "rank_ic", "ic")  # {i}: a horizon in days

    def __init__(self, horizons: Sequence[int], loss: RankingLossConfig | None = None,
                 monitor_horizon: int | None = None) -> None:
        self.horizons = [int(h) for h in horizons]
        if not self.horizons:
            raise ValueError("horizons must name at least one horizon")
        self.cfg = loss if loss is not None else RankingLossConfig()
        hw = self.cfg.horizon_weights
        if hw is not None and len(hw) != len(self.horizons):
            raise ValueError(f"loss.horizon_weights has {len(hw)} entries but the model has "
                             f"{len(self.horizons)} horizons {self.horizons}")
        self.weights = list(hw) if hw is not None else [1.0 / len(self.horizons)] * len(self.horizons)
        if monitor_horizon is None:
            monitor_horizon = self.horizons[0]
        if monitor_horizon not in self.horizons:
            raise ValueError(f"monitor_horizon {monitor_horizon} is not one of the horizons {self.horizons}")
        self.monitor_horizon = int(monitor_horizon)
        if self.cfg.backend == "torchsort":
            _require_torchsort()
        self._next_day = 0  # running day id when batches carry no 'day'; reset by metrics()

    # ------------------------------------------------------------------ loss
    def _check(self, out: Outputs, batch: Batch) -> Tensor:
        if "ranking" not in out:
            raise KeyError("RankingObjective needs out['ranking'] (D, S, H); the model returned "
                           f"{sorted(out)}")
        pred = out["ranking"]
        n_h = len(self.horizons)
        if pred.dim() != 3 or pred.shape[-1] != n_h:
            raise ValueError(f"out['ranking'] must be (D, S, {n_h}) for horizons {self.horizons}, "
                             f"got {tuple(pred.shape)}")
        for key, shape in (("y", pred.shape), ("y_mask", pred.shape), ("mask", pred.shape[:2])):
            if key not in batch:
                raise KeyError(f"the batch has no '{key}'; a day batch carries mask, y, y_mask")
            if tuple(batch[key].shape) != tuple(shape):
                raise ValueError(f"batch['{key}'] has shape {tuple(batch[key].shape)}, "
                                 f"expected {tuple(shape)}")
        return pred

    def _ranks(self, x: Tensor, m: Tensor) -> Tensor:
        if self.cfg.backend == "torchsort":
            return _torchsort_rank(x, m, self.cfg.temperature)
        return soft_rank(x, m, self.cfg.temperature)

    def horizon_terms(self, out: Outputs, batch: Batch) -> dict[str, Tensor]:
        """The unweighted per-horizon terms, each (H,): 'mse', 'ic' (1 - Pearson), 'rank'."""
        pred = self._check(out, batch).float()  # (D, S, H)
        y = batch["y"].float()
        m_all = batch["mask"].bool()[..., None] & batch["y_mask"].bool()  # (D, S, H)
        mse, ic, rk = [], [], []
        for j in range(pred.shape[-1]):
            p, t, m = pred[..., j], y[..., j], m_all[..., j]  # (D, S)
            p0 = torch.where(m, p, torch.zeros_like(p))
            t0 = torch.where(m, t, torch.zeros_like(t))
            n = m.sum(1)  # (D,)
            per_day = ((p0 - t0) ** 2).sum(1) / n.clamp_min(1)
            mse.append(_mean_over(per_day, n > 0))
            zero = p0.sum() * 0.0
            if self.cfg.ic > 0:
                r, ok = masked_pearson(p0, t0, m)
                ic.append(_mean_over(1.0 - r, ok))
            else:
                ic.append(zero)
            if self.cfg.rank > 0:
                r, ok = masked_pearson(self._ranks(p0, m), soft_rank(t0, m, None), m)
                rk.append(_mean_over(1.0 - r, ok))
            else:
                rk.append(zero)
        return {"mse": torch.stack(mse), "ic": torch.stack(ic), "rank": torch.stack(rk)}

    def loss(self, out: Outputs, batch: Batch) -> Tensor:
        """sum_h w_h * (mse * MSE_h + ic * (1 - IC_h) + rank * (1 - softSpearman_h))."""
        terms = self.horizon_terms(out, batch)
        per_h = self.cfg.mse * terms["mse"] + self.cfg.ic * terms["ic"] + self.cfg.rank * terms["rank"]
        w = torch.tensor(self.weights, dtype=per_h.dtype, device=per_h.device)
        return (w * per_h).sum()

    # --------------------------------------------------------------- collect
    def collect(self, out: Outputs, batch: Batch) -> dict[str, np.ndarray]:
        """Rows of the present (day, stock) pairs: pred, y, y_mask, y_raw (n, H), day (n,).

        ``day`` is batch['day'] (the panel's date index) when the batch has it; otherwise a
        running counter over the batches of one evaluation (the Trainer collects in order),
        reset when ``metrics`` is called. ``symbol`` (n,) comes along when the batch has
        ``symbol_id``.
        """
        pred_t = self._check(out, batch)
        m = batch["mask"].bool()  # (D, S)
        n_d, n_s = m.shape
        pred = pred_t.detach().float()[m].cpu().numpy()  # (n, H)
        y = batch["y"].detach().float()[m].cpu().numpy()
        y_mask = batch["y_mask"].bool()[m].cpu().numpy()
        if "y_raw" in batch:
            y_raw = batch["y_raw"].detach().float()[m].cpu().numpy()
        else:
            y_raw = np.where(y_mask, y, np.nan).astype(np.float32)
        if "day" in batch:
            days = batch["day"].detach().reshape(n_d).long().cpu()
        else:
            days = torch.arange(self._next_day, self._next_day + n_d, dtype=torch.int64)
            self._next_day += n_d
        got = {"pred": pred, "y": y, "y_mask": y_mask, "y_raw": y_raw,
               "day": days[:, None].expand(n_d, n_s)[m.cpu()].numpy()}
        if "symbol_id" in batch:
            got["symbol"] = batch["symbol_id"].detach().long()[m].cpu().numpy()
        return got

    # --------------------------------------------------------------- metrics
    def metrics(self, c: dict[str, np.ndarray]) -> dict[str, float]:
        """Per-horizon mean daily IC / RankIC against y_raw and their IR (mean / std over days)."""
        self._next_day = 0
        pred = np.asarray(c["pred"], dtype=np.float64)
        y = np.asarray(c["y"], dtype=np.float64)
        y_mask = np.asarray(c["y_mask"], dtype=bool)
        y_raw = np.asarray(c["y_raw"], dtype=np.float64)
        day = np.asarray(c["day"])
        out: dict[str, float] = {}
        known = y_mask & np.isfinite(pred) & np.isfinite(y)
        out["mse"] = float(((pred - y) ** 2)[known].mean()) if known.any() else float("nan")
        for j, h in enumerate(self.horizons):
            ok = y_mask[:, j] & np.isfinite(pred[:, j]) & np.isfinite(y_raw[:, j])
            ic = daily_corr(pred[ok, j], y_raw[ok, j], day[ok], "pearson")
            ric = daily_corr(pred[ok, j], y_raw[ok, j], day[ok], "spearman")
            out[f"ic_h{h}"], out[f"icir_h{h}"] = _mean_ir(ic)
            out[f"rank_ic_h{h}"], out[f"rank_icir_h{h}"] = _mean_ir(ric)
            out[f"days_h{h}"] = float(ric.size)
        out["rank_ic"] = out[f"rank_ic_h{self.monitor_horizon}"]
        out["ic"] = out[f"ic_h{self.monitor_horizon}"]
        return out


def _mean_ir(v: np.ndarray) -> tuple[float, float]:
    if v.size == 0:
        return float("nan"), float("nan")
    sd = float(v.std(ddof=1)) if v.size > 1 else 0.0
    return float(v.mean()), (float(v.mean() / sd) if sd > 0 else float("nan"))


def _group_ranks(v: np.ndarray, g: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """1-based ranks of v within each group g (ties averaged, as scipy's rankdata); ``starts``:
    the first row of each group in g-sorted order."""
    o = np.lexsort((v, g))
    sv, sg = v[o], g[o]
    pos = np.arange(v.size) - starts[sg]  # 0-based position within the group
    new = np.ones(v.size, dtype=bool)
    new[1:] = (sg[1:] != sg[:-1]) | (sv[1:] != sv[:-1])
    run = np.cumsum(new) - 1
    first = pos[new]
    last = np.r_[pos[np.flatnonzero(new)[1:] - 1], pos[-1]] if v.size else first
    out = np.empty(v.size, dtype=np.float64)
    out[o] = (first + last)[run] / 2.0 + 1.0
    return out


def daily_corr(a: np.ndarray, b: np.ndarray, day: np.ndarray,
               kind: Literal["pearson", "spearman"] = "pearson") -> np.ndarray:
    """Per-day correlation of a and b (1-D rows tagged by ``day``), vectorised (no loop over
    days); days with fewer than 2 rows or a constant a or b are left out. Returns (n_days_kept,)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.size == 0:
        return np.empty(0)
    _, g = np.unique(np.asarray(day), return_inverse=True)
    g = g.reshape(-1)
    n = np.bincount(g).astype(np.float64)
    starts = (np.cumsum(n) - n).astype(np.int64)
    o = np.argsort(g, kind="stable")
    const = np.zeros(n.size, dtype=bool)
    for v in (a, b):  # a constant day has max == min
        sv = v[o]
        const |= np.maximum.reduceat(sv, starts) == np.minimum.reduceat(sv, starts)
    if kind == "spearman":
        a, b = _group_ranks(a, g, starts), _group_ranks(b, g, starts)
    elif kind != "pearson":
        raise ValueError(f"kind must be 'pearson' or 'spearman', got {kind!r}")
    ca = a - (np.bincount(g, a) / n)[g]
    cb = b - (np.bincount(g, b) / n)[g]
    cov, va, vb = np.bincount(g, ca * cb), np.bincount(g, ca * ca), np.bincount(g, cb * cb)
    good = (n >= 2) & ~const & (va > 0) & (vb > 0)
    return np.asarray(cov[good] / np.sqrt(va[good] * vb[good]))
