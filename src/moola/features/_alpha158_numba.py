"""alpha158 over bar-count windows in one compiled pass (Numba): the fast path of ``align="bars"``.

The Polars expressions in ``alpha158.py`` stay the definition; tests/test_alpha158_kernel.py
holds this kernel equal to them on real and broken bars. One kernel, not one per operator,
because the expressions' cost was spread over all 29 operators (rolling quantiles and
correlations most), each column also paying Polars casts, null masks and ``map_batches`` round
trips; one pass per row shares the window loop between them. Every window is computed afresh
(no running totals), as the expressions do: a window of zeros sums to exactly 0, so Qlib's
``+1e-12`` denominators see no rounding residue.

Row i's windows end at i and may reach into the previous symbol; the builder NaNs those rows
(the first ``lookback`` of every symbol), as it does for the expressions. A window holding a
NaN (a missing or non-finite input) gives NaN. This module imports Numba, so it is imported
only when a build runs, and its source is part of alpha158's code hash.
"""

from __future__ import annotations

import numpy as np
from numba import njit

EPS = 1e-12
STD_ATOL = 2e-5
N_OPS = 29  # rolling operators, in alpha158.ROLLING_OPERATORS' order
# operator columns: (op index) * n_windows + window position, after the 13 KBAR/PRICE columns
(ROC, MA, STD, BETA, RSQR, RESI, MAX, MIN, QTLU, QTLD, RANK, RSV, IMAX, IMIN, IMXD, CORR, CORD,
 CNTP, CNTN, CNTD, SUMP, SUMN, SUMD, VMA, VSTD, WVMA, VSUMP, VSUMN, VSUMD) = range(N_OPS)

_JIT = {"nogil": True, "cache": True, "error_model": "numpy"}


@njit(**_JIT)
def _last_nan(x: np.ndarray) -> np.ndarray:
    """Index of the latest NaN at or before each row (-1 if none): a window [i-d+1, i] is clean
    iff last_nan[i] < i - d + 1."""
    out = np.empty(len(x), np.int64)
    last = -1
    for i in range(len(x)):
        if x[i] != x[i]:
            last = i
        out[i] = last
    return out


@njit(**_JIT)
def _fin(x: float) -> float:
    """inf -> NaN, as the builder does for the expressions' outputs."""
    return x if np.isfinite(x) else np.nan


@njit(**_JIT)
def _present_max_min(a: float, b: float) -> tuple[float, float]:
    """Polars' max_horizontal and min_horizontal: over the values present (NaN if neither)."""
    if a != a:
        return b, b
    if b != b:
        return a, a
    return (a, b) if a > b else (b, a)


@njit(**_JIT)
def _centred(sxy: float, sx: float, sy: float, d: int) -> float:
    """sum (x - mean x)(y - mean y) from sums of shifted x, y and their product."""
    return sxy - sx * sy / d


@njit(**_JIT)
def _corr(cxy: float, cxx: float, cyy: float, d: int) -> float:
    """Pearson r from centred sums; NaN where either sample std is <= 2e-5, as Qlib."""
    std_a, std_b = np.sqrt(cxx / (d - 1)), np.sqrt(cyy / (d - 1))
    if std_a <= STD_ATOL or std_b <= STD_ATOL:
        return np.nan
    return cxy / (d - 1) / (std_a * std_b)


@njit(**_JIT)
def _insert_sorted(buf: np.ndarray, m: int, x: float) -> None:
    """Insert x into the sorted first m slots of buf (NaN kept as +inf)."""
    v = np.inf if x != x else x
    j = m
    while j > 0 and buf[j - 1] > v:
        buf[j] = buf[j - 1]
        j -= 1
    buf[j] = v


@njit(**_JIT)
def _remove_sorted(buf: np.ndarray, m: int, x: float) -> None:
    """Remove one copy of x from the sorted first m slots of buf."""
    v = np.inf if x != x else x
    lo, hi = 0, m
    while lo < hi:  # first slot >= v
        mid = (lo + hi) // 2
        if buf[mid] < v:
            lo = mid + 1
        else:
            hi = mid
    for j in range(lo, m - 1):
        buf[j] = buf[j + 1]


@njit(**_JIT)
def _quantile_sorted(buf: np.ndarray, d: int, q: float) -> float:
    """Linear interpolation between order statistics, as pandas/Polars ``linear``."""
    pos = q * (d - 1)
    lo = int(np.floor(pos))
    hi = min(lo + 1, d - 1)
    return buf[lo] + (buf[hi] - buf[lo]) * (pos - lo)


@njit(**_JIT)
def alpha158_bars(o: np.ndarray, h: np.ndarray, low: np.ndarray, c: np.ndarray, v: np.ndarray,
                  windows: np.ndarray, out: np.ndarray) -> None:
    """Fill ``out`` (N, 13 + 29 * W) float32 (the caller's, so an ahead-of-time build allocates
    nothing) in alpha158's column order, windows in the caller's order; computed in float64 and
    rounded once, as the expressions' final cast."""
    n, nw = len(c), len(windows)
    if out.shape[0] != n or out.shape[1] != 13 + N_OPS * nw:
        raise ValueError("alpha158_bars: out must be (bars, 13 + 29 * windows)")
    out[:, :] = np.nan
    order = np.argsort(windows)  # nested windows: ascending, each emitted when reached
    wins = windows[order]
    dmax = wins[-1]

    # ---- helper series ---------------------------------------------------------------------
    dc, dv, ret, lvr = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    for i in range(1, n):
        dc[i] = c[i] - c[i - 1]
        dv[i] = v[i] - v[i - 1]
        ret[i] = c[i] / c[i - 1]
        lvr[i] = _fin(np.log(v[i] / v[i - 1] + 1.0))
    lv = np.log(v + 1.0)
    wv = np.empty(n)
    up, down, ad = np.empty(n), np.empty(n), np.empty(n)
    vup, vdown, vad = np.empty(n), np.empty(n), np.empty(n)
    cup, cdn = np.empty(n), np.empty(n)
    for i in range(n):
        wv[i] = _fin(abs(ret[i] - 1.0) * v[i])
        x = dc[i]
        up[i] = x if x > 0 else (0.0 if x == x else np.nan)
        down[i] = -x if x < 0 else (0.0 if x == x else np.nan)
        ad[i] = abs(x)
        cup[i] = 1.0 if x > 0 else (0.0 if x == x else np.nan)
        cdn[i] = 1.0 if x < 0 else (0.0 if x == x else np.nan)
        y = dv[i]
        vup[i] = y if y > 0 else (0.0 if y == y else np.nan)
        vdown[i] = -y if y < 0 else (0.0 if y == y else np.nan)
        vad[i] = abs(y)
    nan_c, nan_h, nan_l, nan_v = _last_nan(c), _last_nan(h), _last_nan(low), _last_nan(v)
    nan_dc, nan_dv = _last_nan(dc), _last_nan(dv)
    nan_cl = np.maximum(nan_c, _last_nan(lv))
    nan_rl = np.maximum(_last_nan(ret), _last_nan(lvr))
    nan_wv = _last_nan(wv)

    # ---- KBAR and PRICE ----------------------------------------------------------------------
    for i in range(n):
        oi, hi, li, ci = o[i], h[i], low[i], c[i]
        rng = hi - li + EPS
        top, bot = _present_max_min(oi, ci)
        out[i, 0] = _fin((ci - oi) / oi)
        out[i, 1] = _fin((hi - li) / oi)
        out[i, 2] = _fin((ci - oi) / rng)
        out[i, 3] = _fin((hi - top) / oi)
        out[i, 4] = _fin((hi - top) / rng)
        out[i, 5] = _fin((bot - li) / oi)
        out[i, 6] = _fin((bot - li) / rng)
        out[i, 7] = _fin((2 * ci - hi - li) / oi)
        out[i, 8] = _fin((2 * ci - hi - li) / rng)
        out[i, 9] = _fin(oi / ci)
        out[i, 10] = _fin(hi / ci)
        out[i, 11] = _fin(li / ci)
        out[i, 12] = _fin((hi + li + ci) / 3.0 / ci)

    # ---- rolling operators -------------------------------------------------------------------
    # One pass per row, newest bar to oldest, in segments: window k (ascending) is emitted
    # once its d_k bars are in, and the next window only adds its older bars.
    # Second moments are taken about the row's own value (shifted data: no cancellation worth
    # a float32 digit, and a flat window's variance is exactly 0), plain sums as they are.
    qbuf = np.empty((nw, dmax))  # per window: its closes, sorted (quantiles)
    for i in range(n):
        ci, vi, li, wi = c[i], v[i], lv[i], wv[i]
        ri, qi = ret[i], lvr[i]
        inv_c, inv_v = 1.0 / ci, 1.0 / (vi + EPS)  # multiplications below, not divisions
        for k in range(nw):  # slide each window's sorted buffer
            d = wins[k]
            if i >= d:
                _remove_sorted(qbuf[k], d, c[i - d])
            _insert_sorted(qbuf[k], d - 1 if i >= d else i, ci)
        s_c = s_v = s_up = s_dn = s_ad = s_vup = s_vdn = s_vad = s_cu = s_cd = 0.0
        y_c = yy_c = ay_c = y_v = yy_v = y_w = yy_w = y_l = yy_l = y_cl = 0.0
        y_r = yy_r = y_q = yy_q = y_rq = 0.0
        hmax, lmin = -np.inf, np.inf
        amax = amin = 0
        below = ties = 0.0
        a0 = 0
        for k in range(nw):
            d = wins[k]
            if d > i + 1:
                break
            for a in range(a0, d):  # the bars window k adds to window k - 1
                j = i - a
                s_c += c[j]
                s_v += v[j]
                s_up += up[j]
                s_dn += down[j]
                s_ad += ad[j]
                s_vup += vup[j]
                s_vdn += vdown[j]
                s_vad += vad[j]
                s_cu += cup[j]
                s_cd += cdn[j]
                xc, xl = c[j] - ci, lv[j] - li
                xv, xw = v[j] - vi, wv[j] - wi
                xr, xq = ret[j] - ri, lvr[j] - qi
                y_c += xc
                yy_c += xc * xc
                ay_c += a * xc
                y_v += xv
                yy_v += xv * xv
                y_w += xw
                yy_w += xw * xw
                y_l += xl
                yy_l += xl * xl
                y_cl += xc * xl
                y_r += xr
                yy_r += xr * xr
                y_q += xq
                yy_q += xq * xq
                y_rq += xr * xq
                if h[j] >= hmax:  # >=: the oldest of equal highs wins, as np.argmax's first
                    hmax, amax = h[j], a
                if low[j] <= lmin:
                    lmin, amin = low[j], a
                if a > 0:
                    if c[j] < ci:
                        below += 1.0
                    elif c[j] == ci:
                        ties += 1.0
            a0 = d  # window k is complete: emit it
            inv_d, inv_d1 = 1.0 / d, 1.0 / (d - 1)
            col = 13 + order[k]
            lo_ok = i - d + 1
            if nan_c[i] < lo_ok:
                out[i, col + MA * nw] = _fin(s_c * inv_d * inv_c)
                qb = qbuf[k]
                out[i, col + QTLU * nw] = _fin(_quantile_sorted(qb, d, 0.8) * inv_c)
                out[i, col + QTLD * nw] = _fin(_quantile_sorted(qb, d, 0.2) * inv_c)
                out[i, col + RANK * nw] = _fin((below + 1.0 + 0.5 * ties) * inv_d)
                var = _centred(yy_c, y_c, y_c, d) * inv_d1
                # slope on k = d - a (oldest first): sum (k - kbar) x = (d-1)/2 sum y - sum a y
                sxx = d * (d * d - 1) / 12.0
                cw = (d - 1) / 2.0 * y_c - ay_c
                slope = cw / sxx
                out[i, col + STD * nw] = _fin(np.sqrt(var) * inv_c)
                out[i, col + BETA * nw] = _fin(slope * inv_c)
                if var > STD_ATOL * STD_ATOL:
                    out[i, col + RSQR * nw] = _fin(cw * cw / (sxx * var * (d - 1)))
                mean_c = ci + y_c * inv_d
                out[i, col + RESI * nw] = _fin((ci - (mean_c + slope * ((d - 1) / 2.0))) * inv_c)
            ok_h, ok_l = nan_h[i] < lo_ok, nan_l[i] < lo_ok
            if ok_h:
                out[i, col + MAX * nw] = _fin(hmax * inv_c)
                out[i, col + IMAX * nw] = _fin((d - amax) * inv_d)
            if ok_l:
                out[i, col + MIN * nw] = _fin(lmin * inv_c)
                out[i, col + IMIN * nw] = _fin((d - amin) * inv_d)
            if ok_h and ok_l:
                out[i, col + RSV * nw] = _fin((ci - lmin) / (hmax - lmin + EPS))
                out[i, col + IMXD * nw] = _fin((amin - amax) * inv_d)
            if nan_dc[i] < lo_ok:
                out[i, col + CNTP * nw] = _fin(s_cu * inv_d)
                out[i, col + CNTN * nw] = _fin(s_cd * inv_d)
                out[i, col + CNTD * nw] = _fin(s_cu * inv_d - s_cd * inv_d)
                inv_a = 1.0 / (s_ad + EPS)
                out[i, col + SUMP * nw] = _fin(s_up * inv_a)
                out[i, col + SUMN * nw] = _fin(s_dn * inv_a)
                out[i, col + SUMD * nw] = _fin((s_up - s_dn) * inv_a)
            if nan_dv[i] < lo_ok:
                inv_a = 1.0 / (s_vad + EPS)
                out[i, col + VSUMP * nw] = _fin(s_vup * inv_a)
                out[i, col + VSUMN * nw] = _fin(s_vdn * inv_a)
                out[i, col + VSUMD * nw] = _fin((s_vup - s_vdn) * inv_a)
            if nan_v[i] < lo_ok:
                out[i, col + VMA * nw] = _fin(s_v * inv_d * inv_v)
                out[i, col + VSTD * nw] = _fin(np.sqrt(_centred(yy_v, y_v, y_v, d) * inv_d1) * inv_v)
            if nan_wv[i] < lo_ok:
                std_w = np.sqrt(_centred(yy_w, y_w, y_w, d) * inv_d1)
                out[i, col + WVMA * nw] = _fin(std_w / (wi + y_w * inv_d + EPS))
            if nan_cl[i] < lo_ok:
                out[i, col + CORR * nw] = _corr(
                    _centred(y_cl, y_c, y_l, d), _centred(yy_c, y_c, y_c, d),
                    _centred(yy_l, y_l, y_l, d), d)
            if nan_rl[i] < lo_ok:
                out[i, col + CORD * nw] = _corr(
                    _centred(y_rq, y_r, y_q, d), _centred(yy_r, y_r, y_r, d),
                    _centred(yy_q, y_q, y_q, d), d)
            if i >= d:
                out[i, col + ROC * nw] = _fin(c[i - d] * inv_c)


def _aot_alpha158_bars(o: np.ndarray, h: np.ndarray, low: np.ndarray, c: np.ndarray, v: np.ndarray,
                       windows: np.ndarray, out: np.ndarray) -> None:
    """The ahead-of-time build's entry (``moola.features._aot``): it calls the jitted kernel, so
    the kernel is compiled with this module's options rather than pycc's defaults."""
    alpha158_bars(o, h, low, c, v, windows, out)


# what ``moola features compile`` exports: name -> (Numba signature, entry)
AOT_EXPORTS = {
    # out C-contiguous: column-major output was slower on the whole build (more cache lines
    # and pages touched per row), though it saves the table's transpose
    "alpha158_bars": ("void(f8[:], f8[:], f8[:], f8[:], f8[:], i8[:], f4[:, ::1])", _aot_alpha158_bars),
}
