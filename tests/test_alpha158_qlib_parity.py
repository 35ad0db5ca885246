"""alpha158 with ``align="calendar"`` against values computed once by pyqlib 0.9.7 and stored.

tests/fixtures/qlib_alpha158/ holds the input bars of 13 S&P symbols (four with missing days
inside their span: BHF 531, UA 5, ESS 1, MMC 1; four late starters) and Qlib's Alpha158 values
on ~2,850 of their rows (provenance.json: version, command, input, rows). pyqlib is not needed.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from moola.features import FeatureMatrix, build_features, get_feature_set

FIXTURE = Path(__file__).parent / "fixtures" / "qlib_alpha158"
TOL = 1e-5  # |moola - qlib| <= TOL * max(|qlib|, 1): relative, absolute below 1
# Where Qlib's float32 arithmetic loses digits before a rolling std / corr: WVMA multiplies
# $close/Ref($close,1)-1 (float32) by volume, CORR correlates with Log($volume+1) (float32).
# Checked once on the whole panel (all 607,620 shared rows x 158): only WVMA5 (1 row, 1.4e-5)
# and CORR5 (27 rows, <= 2.3e-5) exceed 1e-5; every other feature is within it everywhere.
LOOSER = {f"{op}{d}": 1e-4 for op in ("WVMA", "CORR") for d in (5, 10, 20, 30, 60)}


def _bars() -> pl.DataFrame:
    """The fixture's input as canonical bars (ts as UTC ns, sorted)."""
    raw = pl.read_parquet(FIXTURE / "bars.parquet")
    return raw.select(
        "symbol", pl.col("date").cast(pl.Datetime("ns", "UTC")).alias("ts"),
        *[c for c in raw.columns if c not in ("symbol", "date")],
    ).sort("symbol", "ts")


@lru_cache(maxsize=1)
def _joined() -> tuple[pl.DataFrame, tuple[str, ...]]:
    """Qlib's stored rows joined with moola's calendar-aligned values on (symbol, date)."""
    fm = build_features(_bars(), "alpha158", align="calendar")
    ours = fm.keys.select("symbol", pl.col("ts").dt.date().alias("date")).hstack(
        pl.DataFrame({f"{n}_moola": fm.values[:, i] for i, n in enumerate(fm.names)}))
    qlib = pl.read_parquet(FIXTURE / "qlib_alpha158.parquet")
    return qlib.join(ours, on=["symbol", "date"], how="left"), fm.names


def test_fixture_provenance_names_version_and_command() -> None:
    meta = json.loads((FIXTURE / "provenance.json").read_text())
    assert meta["pyqlib"] == "0.9.7"
    assert "bench_alpha158_qlib.py --make-fixture" in meta["command"]
    q = pl.read_parquet(FIXTURE / "qlib_alpha158.parquet")
    assert list(q.shape) == meta["shape"]
    # the subset holds the symbols with missing days, and rows right after them
    assert {"BHF", "UA", "ESS", "MMC"} <= set(q.get_column("symbol").unique())


def test_every_stored_row_is_a_moola_row_and_names_match_qlib() -> None:
    joined, names = _joined()
    assert joined.height == pl.read_parquet(FIXTURE / "qlib_alpha158.parquet").height
    assert joined.get_column("KMID_moola").null_count() == 0  # every Qlib row found in ours
    qlib_cols = [c for c in pl.read_parquet(FIXTURE / "qlib_alpha158.parquet").columns
                 if c not in ("symbol", "date")]
    assert list(names) == qlib_cols


@pytest.mark.parametrize("name", get_feature_set("alpha158", align="calendar").names)
def test_calendar_alpha158_matches_qlib(name: str) -> None:
    joined, _ = _joined()
    q = joined.get_column(name).to_numpy().astype(np.float64)
    m = joined.get_column(f"{name}_moola").to_numpy().astype(np.float64)
    # missing values agree: Qlib's NaN (and inf, which moola turns into NaN) where ours is NaN
    assert np.array_equal(np.isfinite(q), np.isfinite(m)), (
        f"{name}: finite in one only at {np.flatnonzero(np.isfinite(q) != np.isfinite(m))[:5]}")
    ok = np.isfinite(q)
    tol = LOOSER.get(name, TOL)
    err = np.abs(m[ok] - q[ok]) / np.maximum(np.abs(q[ok]), 1.0)
    worst = int(np.argmax(err)) if err.size else 0
    assert err.size == 0 or err[worst] <= tol, (
        f"{name}: {int((err > tol).sum())} rows off by more than {tol}; worst {err[worst]:.2e} at "
        f"{joined.filter(pl.Series(ok))[worst].select('symbol', 'date').row(0)}")


def test_rows_after_missing_days_are_compared() -> None:
    """The windows that hold an empty slot are where the alignments differ: the bar-count mode
    must disagree with Qlib there, the calendar mode (above) agrees."""
    joined, _ = _joined()
    bhf = joined.filter(pl.col("symbol") == "BHF")
    bars_fm = build_features(_bars().filter(pl.col("symbol") == "BHF"), "alpha158")
    ours = dict(zip(bars_fm.keys.get_column("ts").dt.date().to_list(),
                    bars_fm.values[:, bars_fm.names.index("ROC5")], strict=True))
    q = bhf.get_column("ROC5").to_numpy()
    b = np.array([ours[d] for d in bhf.get_column("date").to_list()], dtype=np.float64)
    both = np.isfinite(q) & np.isfinite(b)
    assert (np.abs(q[both] - b[both]) > 1e-3).sum() >= 1


def test_align_is_part_of_the_schema_hash_and_saved() -> None:
    bars = _bars().filter(pl.col("symbol").is_in(["ESS", "AAPL"]))
    cal = get_feature_set("alpha158", align="calendar")
    default = get_feature_set("alpha158")
    assert default.params["align"] == "bars" and cal.params["align"] == "calendar"
    assert cal.schema_hash != default.schema_hash
    fm = build_features(bars, "alpha158", align="calendar")
    assert fm.schema_hash == cal.schema_hash


def test_calendar_matrix_round_trips(tmp_path: Path) -> None:
    fm = build_features(_bars().filter(pl.col("symbol") == "ESS"), "alpha158", align="calendar")
    back = FeatureMatrix.load(fm.save(tmp_path / "f.parquet"))
    assert back.params["align"] == "calendar" and back.schema_hash == fm.schema_hash
    assert np.array_equal(back.values, fm.values, equal_nan=True)


def test_unknown_align_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="bars, calendar"):
        get_feature_set("alpha158", align="trading_days")
