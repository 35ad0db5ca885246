"""alpha360: Qlib's Alpha360 raw-history set, 6 fields x 60 daily lags, as Polars expressions.

Formulas follow ``qlib/contrib/data/loader.py`` (``Alpha360DL.get_feature_config``): for
d = 59 .. 1 then 0, ``Ref($close, d)/$close`` (CLOSE59 .. CLOSE0), the same over ``$close`` for
open, high, low and vwap, and ``Ref($volume, d)/($volume+1e-12)`` (VOLUME59 .. VOLUME0), in that
field-major order: a model reshapes the 360 columns to (6, 60) and transposes to 60 steps of 6
fields (``RankingModelConfig.input_layout: lags``). Deviations, as in ``alpha158``: ``$vwap`` is
the typical price (high + low + close) / 3, since our bars have no VWAP; the builder adjusts prices
by adj_close / close; a missing or non-finite input gives NaN, and a stock's first ``d`` bars
have no ``d``-lag (warm-up, NaN) instead of Qlib's forward fill.
"""

from __future__ import annotations

import polars as pl

from moola.features._registry import FeatureSet, FeatureSpec

OP, H, L, C, V = (pl.col(c) for c in ("open", "high", "low", "close", "volume"))
EPS = 1e-12
DEFAULT_LAGS = 60
FIELDS: tuple[str, ...] = ("CLOSE", "OPEN", "HIGH", "LOW", "VWAP", "VOLUME")


def _finite(x: pl.Expr) -> pl.Expr:
    return pl.when(x.is_finite()).then(x)


def _specs(lags: int) -> list[FeatureSpec]:
    vwap = (H + L + C) / 3.0
    prices = {"CLOSE": (C, "$close"), "OPEN": (OP, "$open"), "HIGH": (H, "$high"), "LOW": (L, "$low"),
              "VWAP": (vwap, "$vwap")}
    specs: list[FeatureSpec] = []
    for name, (x, q) in prices.items():
        for d in range(lags - 1, -1, -1):
            formula = f"Ref({q}, {d})/$close" if d else f"{q}/$close"
            specs.append(FeatureSpec(f"{name}{d}", formula, d, _finite(x.shift(d) / C)))
    for d in range(lags - 1, -1, -1):
        formula = f"Ref($volume, {d})/($volume+1e-12)" if d else "$volume/($volume+1e-12)"
        specs.append(FeatureSpec(f"VOLUME{d}", formula, d, _finite(V.shift(d) / (V + EPS))))
    return specs


def feature_set(lags: int = DEFAULT_LAGS) -> FeatureSet:
    """Build ``alpha360``: 6 fields x ``lags`` lags (360 by default), Qlib's names and order."""
    if int(lags) != lags or lags < 1:
        raise ValueError(f"alpha360 lags must be an integer >= 1, got {lags}")
    lags = int(lags)
    return FeatureSet(
        name="alpha360",
        description=(
            f"Qlib Alpha360: open/high/low/close/vwap over the latest close and volume over the latest "
            f"volume, for each of the last {lags} days (field-major, oldest lag first: CLOSE{lags - 1} "
            "... CLOSE0, OPEN..., VOLUME0), for sequence models reading (lags, 6) steps. VWAP is the "
            "typical price (high+low+close)/3; warm-up lags are NaN (Qlib forward-fills)."
        ),
        specs=tuple(_specs(lags)),
        params={"lags": lags},
        kind="per_symbol",
        make=feature_set,
    )
