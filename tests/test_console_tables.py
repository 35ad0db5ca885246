"""Console tables fit the terminal: a column that does not fit goes to a continuation table with
the key column repeated; headers wrap at their words; no value is cut or replaced by an ellipsis."""

from __future__ import annotations

import polars as pl
import pytest
from rich.console import Console

from moola.pipelines._progress import frame_table

FRAME = pl.DataFrame({
    "model": ["model", "majority", "persistence", "logistic"],
    "kind": ["model", "baseline", "baseline", "baseline"],
    "accuracy": [0.5005, 0.506, 0.48, 0.507], "balanced_accuracy": [0.5002, 0.5, 0.4798, 0.5052],
    "macro_f1": [0.5001, 0.336, 0.4798, 0.4948], "roc_auc": [0.503, 0.5, 0.4798, 0.4996],
    "log_loss": [0.6933, 0.6944, 0.6931, 0.7166], "brier": [0.2501, 0.2506, 0.25, 0.2605],
    "ece": [0.0102, 0.026, 0.02, 0.0805], "fit_seconds": [None, 0.0001, 0.0001, 2.7634],
})


@pytest.mark.parametrize("width", [60, 80, 100, 160])
def test_every_value_shows_whole_within_the_terminal_width(width: int) -> None:
    console = Console(width=width, record=True)
    console.print(frame_table(FRAME, title="test split: model vs baselines"))
    text = console.export_text()
    assert max(len(line.rstrip()) for line in text.splitlines()) <= width
    assert "…" not in text
    cells = " ".join(text.split())
    for row in FRAME.iter_rows():
        for v in row[2:]:
            if v is not None:
                assert f"{v:.4f}" in cells, (width, v)
    n_tables = text.count("┏")
    assert text.count("│ logistic") == n_tables  # the key column repeats in every part
    assert (n_tables == 1) == (width >= 160)
