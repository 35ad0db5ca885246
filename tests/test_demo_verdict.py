"""The demo's data report opens with its verdicts: what the data holds and what validation did
with it, the direction model against its baselines, and the pretraining verdict's first line."""

from __future__ import annotations

from pathlib import Path

from moola.data import Store, Timeframe
from moola.datasets.tasks import bundled_dir
from moola.demo import demo_verdict
from moola.pipelines.data import run_ingest, run_validate


def test_the_demo_verdict_counts_what_validation_found_on_the_bundled_data(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    run_ingest([bundled_dir() / "sp500_subset.parquet"], store_dir)
    run_ingest([bundled_dir() / "binanceus_BTCUSD_1m.csv"], store_dir)
    val = run_validate(store_dir)
    store = Store(store_dir)
    daily, minute = store.read(Timeframe.D1), store.read(Timeframe.M1)
    verdict = {"lines": ["Test verdict: balanced accuracy 0.5100; the model does NOT beat ..."]}
    rejected = sum(store.read_rejects(tf).height for tf in store.timeframes())
    lines = demo_verdict(val, daily, minute, verdict, "NO: no pretrained arm beats scratch\nline two",
                         rejected=rejected)
    totals = val.reports[Timeframe.D1].totals()
    assert totals, "the bundled S&P subset has known warts"
    first = lines[0]
    assert first.startswith(f"Data: {daily['symbol'].n_unique()} daily symbols ({daily.height:,} bars)")
    for reason, n in totals.items():
        assert f"{reason} {n:,}" in first
    # the bundled subset's 538 all-null rows are dropped; one duplicate key's losing copy is set aside
    dropped = sum(r["count"] for rep in val.reports.values() for r in rep.rows if r["action"] == "drop")
    assert rejected >= dropped > 0 and f"({rejected:,} rows set aside in the store's rejects" in first
    assert lines[1] == "Direction model: Test verdict: balanced accuracy 0.5100; the model does NOT beat ..."
    assert lines[2] == "Pretraining: NO: no pretrained arm beats scratch"
