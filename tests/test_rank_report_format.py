"""The rank comparison table shows every metric with four decimals, mean ± std over seeds, so the
digits line up down a column (it mixed 0.5 ± 0.0157, 1.808 ± 0.2198 and 0.0)."""

from __future__ import annotations

import re

import polars as pl

from moola.pipelines._rank_report import TABLE_METRICS, _table_for_report


def test_every_cell_has_four_decimals_and_one_seed_has_no_spread() -> None:
    rows = []
    for arm, seeds in (("demo_gat", 2), ("lightgbm", 1)):
        row = {"horizon": 1, "arm": arm, "seeds": seeds}
        for i, (key, _) in enumerate(TABLE_METRICS):
            row[key] = [0.5, 1.808, 0.0, -2.9321, 0.0143][i % 5]
            row[f"{key}_std"] = [0.0157, 0.2198, 0.0, 1.7703, 0.0042][i % 5] if seeds > 1 else None
        rows.append(row)
    shown = _table_for_report(pl.DataFrame(rows))
    for _, label in TABLE_METRICS:
        gat, lgbm = shown[label].to_list()
        assert re.fullmatch(r"-?\d+\.\d{4} ± \d+\.\d{4}", gat), gat
        assert re.fullmatch(r"-?\d+\.\d{4}", lgbm), lgbm
    assert shown["IC"].to_list() == ["0.5000 ± 0.0157", "0.5000"]
