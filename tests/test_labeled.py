"""Labels joined to real daily bars: good rows accepted exactly, every bad row explained."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from _datasets_data import sp500_matrix
from moola.datasets.labeled import LabeledWindows, load_labels, save_labels
from moola.datasets.windows import WindowSet
from moola.features._matrix import FeatureMatrix

W = 20
CLASSES = ["down", "up"]


def utc(y: int, m: int, d: int) -> datetime:
    return datetime(y, m, d, tzinfo=UTC)


@pytest.fixture(scope="module")
def fm() -> FeatureMatrix:
    # UA starts 2015-07-01 and misses 2015-11-09 (a real gap); AAPL/MMC are long.
    return sp500_matrix(["AAPL", "MMC", "UA"])


@pytest.fixture(scope="module")
def good(fm: FeatureMatrix) -> pl.DataFrame:
    """30 real windows labelled by their own return (up/down), with pointers."""
    ws = WindowSet.from_matrix(fm, W, stride=37)
    pick = np.random.default_rng(1).choice(len(ws), 30, replace=False)
    meta = ws.meta[np.sort(pick)]
    ret = np.array([ws.batch([int(i)])[0, :, 3].sum() for i in np.sort(pick)])
    rng = np.random.default_rng(2)
    a = rng.integers(0, W, 30)
    b = rng.integers(0, W, 30)
    return pl.DataFrame(
        {
            "symbol": meta["symbol"],
            "end_ts": meta["end_ts"],
            "label": np.where(ret > 0, "up", "down"),
            "pointer_start": np.minimum(a, b),
            "pointer_end": np.maximum(a, b),
        }
    )


# (label row, expected reason prefix); end_ts values are real trading days unless noted.
BAD_ROWS: list[tuple[dict, str]] = [
    ({"symbol": "ZZZZ", "end_ts": utc(2016, 3, 1)}, "unknown symbol"),
    ({"symbol": "AAPL", "end_ts": utc(2016, 1, 2)}, "no bar at end_ts"),  # a Saturday
    ({"symbol": "UA", "end_ts": utc(2015, 7, 10)}, "not enough history"),  # UA's 8th day
    ({"symbol": "UA", "end_ts": utc(2015, 11, 12)}, "gap inside window"),  # 11-09 missing
    ({"symbol": "AAPL", "end_ts": utc(2013, 1, 4)}, "NaN inside window"),  # 20th bar: warm-up
    ({"symbol": "AAPL", "end_ts": utc(2016, 3, 1), "pointer_end": W}, "pointer outside window"),
    (
        {"symbol": "MMC", "end_ts": utc(2016, 3, 1), "pointer_start": 7, "pointer_end": 4},
        "pointer start > end",
    ),
    ({"symbol": "MMC", "end_ts": utc(2016, 3, 2), "label": "sideways"}, "unknown label"),
]


def with_bad_rows(good: pl.DataFrame) -> tuple[pl.DataFrame, dict[int, str]]:
    """Good rows with the bad ones interleaved; returns expected {file row: reason}."""
    rows: list[tuple[dict, str | None]] = [(r, None) for r in good.to_dicts()]
    for k, (patch, reason) in enumerate(BAD_ROWS):
        row = {"label": "up", "pointer_start": 0, "pointer_end": 3, **patch}
        rows.insert(3 * k + 1, (row, reason))
    expected = {i + 1: reason for i, (_, reason) in enumerate(rows) if reason is not None}
    return pl.DataFrame([r for r, _ in rows], schema=good.schema), expected


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_good_file_accepted(
    fm: FeatureMatrix, good: pl.DataFrame, tmp_path: Path, suffix: str
) -> None:
    path = save_labels(good, tmp_path / f"labels{suffix}")
    labels = load_labels(path)
    assert labels.schema["end_ts"] == pl.Datetime("ns", "UTC")
    assert labels.schema["pointer_start"] == pl.Int64
    lw = LabeledWindows.from_labels(fm, labels, W, CLASSES)
    assert lw.rejected.height == 0
    assert len(lw) == 30
    assert lw.X.shape == (30, W, 4)
    assert lw.X.dtype == np.float32 and lw.X.flags["C_CONTIGUOUS"]
    assert not np.shares_memory(lw.X, fm.values)
    np.testing.assert_array_equal(lw.y, [CLASSES.index(v) for v in good["label"]])
    assert lw.pointers is not None and lw.pointers.dtype == np.int64
    np.testing.assert_array_equal(lw.pointers[:, 0], good["pointer_start"].to_numpy())
    np.testing.assert_array_equal(lw.pointers[:, 1], good["pointer_end"].to_numpy())
    assert (lw.meta["end_ts"] == good["end_ts"]).all()
    assert (lw.meta["symbol"] == good["symbol"]).all()
    ts = fm.keys.get_column("ts")
    for k in range(len(lw)):
        end = int(lw.meta["end_row"][k])
        assert ts[end] == good["end_ts"][k]
        np.testing.assert_array_equal(lw.X[k], fm.values[end - W + 1 : end + 1])
        # the label agrees with the window's own return: content is the labelled window
        assert (lw.X[k, :, 3].sum() > 0) == (good["label"][k] == "up")


def test_classes_default_to_sorted_unique(fm: FeatureMatrix, good: pl.DataFrame) -> None:
    lw = LabeledWindows.from_labels(fm, good.drop("pointer_start", "pointer_end"), W)
    assert lw.classes == sorted(set(good["label"]))
    assert lw.pointers is None
    assert lw.class_counts() == {
        c: int((good["label"] == c).sum()) for c in lw.classes
    }


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_each_bad_row_rejected_with_reason(
    fm: FeatureMatrix, good: pl.DataFrame, tmp_path: Path, suffix: str
) -> None:
    df, expected = with_bad_rows(good)
    assert len(expected) == len(BAD_ROWS)
    path = save_labels(df, tmp_path / f"labels{suffix}")
    lw = LabeledWindows.from_labels(fm, load_labels(path), W, CLASSES)
    assert len(lw) == 30
    got = dict(zip(lw.rejected["row"].to_list(), lw.rejected["reason"].to_list(), strict=True))
    assert sorted(got) == sorted(expected)
    for row, reason in expected.items():
        assert got[row].startswith(reason), (row, got[row], reason)
    assert lw.rejected.columns == ["row", "symbol", "end_ts", "reason"]
    # the rejected frame names the offending row's own symbol and time
    for row in expected:
        rej = lw.rejected.filter(pl.col("row") == row)
        assert rej["symbol"][0] == df["symbol"][row - 1]
        assert rej["end_ts"][0] == df["end_ts"][row - 1]


def test_gap_allowed_when_asked(fm: FeatureMatrix) -> None:
    labels = pl.DataFrame(
        {"symbol": ["UA"], "end_ts": [utc(2015, 11, 12)], "label": ["up"]}
    )
    assert LabeledWindows.from_labels(fm, labels, W).rejected.height == 1
    lw = LabeledWindows.from_labels(fm, labels, W, allow_gaps=True)
    assert len(lw) == 1 and lw.rejected.height == 0
    # a window may start on the bar right after the gap: nothing is missing inside it
    ua = fm.keys.with_row_index().filter(pl.col("symbol") == "UA")
    first = ua.filter(pl.col("ts") == utc(2015, 11, 10))["index"][0]
    assert ua.filter(pl.col("index") == first)["gap_before"][0]
    end_ts = fm.keys["ts"][first + W - 1]
    starts_at_gap = pl.DataFrame({"symbol": ["UA"], "end_ts": [end_ts], "label": ["up"]})
    lw = LabeledWindows.from_labels(fm, starts_at_gap, W)
    assert len(lw) == 1 and lw.meta["start_ts"][0] == utc(2015, 11, 10)


def test_strict_mode_lists_every_bad_row(
    fm: FeatureMatrix, good: pl.DataFrame, tmp_path: Path
) -> None:
    df, expected = with_bad_rows(good)
    path = save_labels(df, tmp_path / "labels.csv")
    with pytest.raises(ValueError) as err:
        LabeledWindows.from_labels(fm, load_labels(path), W, CLASSES, strict=True)
    msg = str(err.value)
    assert f"{len(expected)} of {df.height} label rows rejected" in msg
    for row, reason in expected.items():
        assert f"{path}: row {row} " in msg
        assert reason in msg
    # a clean file passes strict mode
    clean = save_labels(good, tmp_path / "clean.csv")
    assert len(LabeledWindows.from_labels(fm, load_labels(clean), W, CLASSES, strict=True)) == 30


def test_handwritten_csv_parsing(fm: FeatureMatrix, tmp_path: Path) -> None:
    """Spellings people type: +00:00, date only, 'T' and Z; blank pointers; bad cells."""
    path = tmp_path / "hand.csv"
    path.write_text(
        "symbol,end_ts,label,pointer_start,pointer_end\n"
        "AAPL,2016-03-01 00:00:00+00:00,up,1,2\n"
        "AAPL,2016-03-02,down,0,19\n"
        "MMC,2016-03-02T00:00:00Z,up,5,5\n"
        "MMC,not-a-date,up,1,2\n"
        "MMC,2016-03-03,up,x,2\n"
        "MMC,2016-03-04,up,,\n"
        "AAPL,2016-03-01,down,1,2\n"
    )
    labels = load_labels(path)
    assert labels["file_row"].to_list() == [1, 2, 3, 4, 5, 6, 7]
    assert labels["end_ts"][1] == utc(2016, 3, 2)
    lw = LabeledWindows.from_labels(fm, labels, W)
    assert len(lw) == 3
    got = dict(zip(lw.rejected["row"].to_list(), lw.rejected["reason"].to_list(), strict=True))
    assert got[4].startswith("unparsable end_ts 'not-a-date'")
    assert got[5].startswith("unparsable pointer_start 'x'")
    assert got[6].startswith("pointer missing")
    assert got[7].startswith("duplicate of row 1")


def test_integer_labels_map_to_classes(fm: FeatureMatrix, tmp_path: Path) -> None:
    df = pl.DataFrame(
        {"symbol": ["AAPL", "MMC", "MMC"], "end_ts": [utc(2016, 3, 1)] * 3, "label": [1, 0, 7]}
    )
    df = df.with_columns(pl.Series("end_ts", [utc(2016, 3, 1), utc(2016, 3, 1), utc(2016, 3, 2)]))
    df.write_parquet(tmp_path / "int.parquet")
    labels = load_labels(tmp_path / "int.parquet", classes=CLASSES)
    assert labels["label"].to_list() == ["up", "down", "7"]
    lw = LabeledWindows.from_labels(fm, labels, W, CLASSES)
    assert lw.y.tolist() == [1, 0]
    assert lw.rejected["reason"][0].startswith("unknown label '7'")


def test_save_load_roundtrip(good: pl.DataFrame, tmp_path: Path) -> None:
    for suffix in (".csv", ".parquet"):
        back = load_labels(save_labels(good, tmp_path / f"rt{suffix}"))
        assert back.select(good.columns).equals(good.with_columns(pl.col(pl.Int64)))
        assert back["parse_error"].null_count() == back.height
    with pytest.raises(ValueError, match="required column"):
        save_labels(good.drop("label"), tmp_path / "x.csv")
    (tmp_path / "bad.csv").write_text("symbol,label\nAAPL,up\n")
    with pytest.raises(ValueError, match="end_ts"):
        load_labels(tmp_path / "bad.csv")
    with pytest.raises(ValueError, match=r"csv or \.parquet"):
        load_labels(tmp_path / "labels.json")


def test_spans(fm: FeatureMatrix, good: pl.DataFrame) -> None:
    lw = LabeledWindows.from_labels(fm, good, W, CLASSES)
    start, end = lw.spans()
    ts = fm.keys.get_column("ts").dt.epoch("ns").to_numpy()
    np.testing.assert_array_equal(start, ts[lw.meta["start_row"].to_numpy()])
    np.testing.assert_array_equal(end, good["end_ts"].dt.epoch("ns").to_numpy())
    _, end1 = lw.spans(horizon=1)
    np.testing.assert_array_equal(end1, ts[lw.meta["end_row"].to_numpy() + 1])
    assert (end1 > end).all()
