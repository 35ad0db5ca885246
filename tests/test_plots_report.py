"""Run plots and the per-run HTML report / metrics.json."""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest

from moola.evaluation.baselines import baseline_table, run_baselines
from moola.evaluation.calibration import expected_calibration_error
from moola.evaluation.metrics import classification_metrics
from moola.evaluation.plots import (
    plot_baselines,
    plot_confusion_matrix,
    plot_learning_curves,
    plot_reliability,
)
from moola.evaluation.run_report import write_run_report

CLASSES = ["down", "flat", "up"]
HISTORY = [
    {"epoch": e, "train_loss": 1.1 / e, "val_loss": 1.2 / e + 0.05 * e, "train_accuracy": 0.4 + 0.05 * e,
     "val_accuracy": 0.38 + 0.03 * e, "lr": 1e-3 * 0.9**e}
    for e in range(1, 7)
]


@pytest.fixture(scope="module")
def case() -> dict:
    rng = np.random.default_rng(0)
    n_train, n_test, t, f = 120, 60, 12, 2
    y_train = rng.integers(0, 3, n_train)
    y_test = rng.integers(0, 3, n_test)
    # windows carry a weak class signal so the logistic baseline is not trivial
    X_train = (rng.normal(size=(n_train, t, f)) + 0.4 * y_train[:, None, None]).astype(np.float32)
    X_test = (rng.normal(size=(n_test, t, f)) + 0.4 * y_test[:, None, None]).astype(np.float32)
    logits = rng.normal(size=(n_test, 3)) + 1.5 * np.eye(3)[y_test]
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    results = run_baselines(X_train, y_train, X_test, y_test, CLASSES, which=("majority", "logistic"))
    metrics = classification_metrics(y_test, proba, CLASSES)
    return {"y": y_test, "proba": proba, "results": results, "metrics": metrics}


def _texts(fig: plt.Figure) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def test_learning_curves_panels() -> None:
    fig = plot_learning_curves(HISTORY)
    visible = [ax for ax in fig.axes if ax.axison]
    assert [ax.get_title() for ax in visible] == ["loss", "accuracy", "lr"]
    loss_ax = visible[0]
    assert sorted(line.get_label() for line in loss_ax.get_lines()) == ["train_loss", "val_loss"]
    np.testing.assert_allclose(loss_ax.get_lines()[0].get_xdata(), range(1, 7))
    assert all(ax.get_xlabel() == "epoch" and ax.get_legend() is not None for ax in visible)
    plt.close(fig)
    # validation every other epoch: the val line only has those points
    sparse = [{k: v for k, v in r.items() if not (k.startswith("val") and r["epoch"] % 2)} for r in HISTORY]
    fig = plot_learning_curves(sparse)
    val = next(line for line in fig.axes[0].get_lines() if line.get_label() == "val_loss")
    np.testing.assert_allclose(val.get_xdata(), [2, 4, 6])
    plt.close(fig)
    plt.close(plot_learning_curves([]))


def test_confusion_matrix_annotations() -> None:
    cm = [[5, 1, 0], [2, 2, 0], [0, 0, 0]]
    fig = plot_confusion_matrix(cm, CLASSES)
    texts = _texts(fig)
    assert len(texts) == 9
    assert texts[0] == "5\n(83%)" and texts[3] == "2\n(50%)" and texts[8] == "0\n(0%)"
    ax = fig.axes[0]
    assert ax.get_xlabel() == "predicted class" and ax.get_ylabel() == "true class"
    assert "n=10" in ax.get_title()
    shade = ax.images[0].get_array()
    np.testing.assert_allclose(shade[0], [5 / 6, 1 / 6, 0])  # row-normalised colour
    plt.close(fig)
    with pytest.raises(ValueError, match="cm"):
        plot_confusion_matrix([[1, 2], [3, 4]], CLASSES)


def test_reliability_plot_shows_ece(case: dict) -> None:
    fig = plot_reliability(case["y"], case["proba"])
    ece = expected_calibration_error(case["y"], case["proba"])
    title = fig.axes[0].get_title()
    assert f"ECE = {ece:.4f}" in title
    counts = [p.get_height() for p in fig.axes[1].patches]
    assert sum(counts) == len(case["y"])
    assert fig.axes[0].get_legend() is not None and fig.axes[1].get_ylabel() == "count"
    plt.close(fig)


def test_baselines_chart_has_majority_line(case: dict) -> None:
    table = baseline_table(case["results"], model_metrics=case["metrics"])
    fig = plot_baselines(table)
    ax = fig.axes[0]
    maj = table.filter(table["model"] == "majority")["accuracy"].item()
    dashed = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert len(dashed) == 1 and dashed[0].get_ydata()[0] == pytest.approx(maj)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["model", "majority", "logistic"]
    assert ax.get_ylabel() and ax.get_title()
    plt.close(fig)


def test_write_run_report(tmp_path: Path, case: dict) -> None:
    run_dir = tmp_path / "run1"
    table = baseline_table(case["results"], model_metrics=case["metrics"])
    path = write_run_report(
        run_dir,
        history=HISTORY,
        metrics=case["metrics"],
        classes=CLASSES,
        y_true=case["y"],
        proba=case["proba"],
        baseline_table=table,
        title="test run <1>",
        notes=["guard: 3 windows dropped at the split boundary"],
    )
    assert path == run_dir / "report.html" and path.exists()
    html = path.read_text()
    imgs = re.findall(r'<img src="([^"]+)"', html)
    assert set(imgs) == {"baselines.png", "learning_curves.png", "confusion_matrix.png", "reliability.png"}
    for name in imgs:
        png = run_dir / name
        assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "guard: 3 windows dropped" in html and "test run &lt;1&gt;" in html
    assert "logistic" in html and "majority" in html
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert [b["model"] for b in saved["baselines"]] == ["model", "majority", "logistic"]
    assert saved["model"]["accuracy"] == case["metrics"]["accuracy"]
    assert saved["baselines"][2]["accuracy"] == case["results"][1].metrics["accuracy"]
    assert saved["notes"] == ["guard: 3 windows dropped at the split boundary"]
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]  # atomic write left no temp


def test_write_run_report_from_results(tmp_path: Path, case: dict) -> None:
    write_run_report(
        tmp_path, history=[], metrics=case["metrics"], classes=CLASSES, y_true=case["y"],
        proba=case["proba"], baseline_table=case["results"], title="r", notes=[],
    )
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert set(saved["baseline_metrics"]) == {"majority", "logistic"}
    assert saved["baseline_metrics"]["logistic"]["confusion_matrix"] == \
        case["results"][1].metrics["confusion_matrix"]
    assert [b["model"] for b in saved["baselines"]] == ["model", "majority", "logistic"]


def _first_section(html: str) -> str:
    """The report's first block after the title."""
    body = html.split("</h1>", 1)[1]
    return body[: body.index("</div>")]


def test_report_opens_with_the_test_verdict(tmp_path: Path, case: dict) -> None:
    """A model with signal (0.689) between majority (0.333) and logistic (0.721): the first
    lines say it beats the one and not the other, and that it has not collapsed."""
    path = write_run_report(tmp_path, history=HISTORY, metrics=case["metrics"], classes=CLASSES,
                            y_true=case["y"], proba=case["proba"], baseline_table=case["results"],
                            extra={"run": {"epochs_run": 6}})
    first = _first_section(path.read_text())
    assert "Test verdict: balanced accuracy" in first and "COLLAPSED" not in first
    saved = json.loads((tmp_path / "metrics.json").read_text())
    v = saved["verdict"]
    assert saved["run"] == {"epochs_run": 6, "collapsed": False}
    assert v["collapsed_on"] == [] and v["predicted_class"] is None
    ba = case["metrics"]["balanced_accuracy"]
    for r in case["results"]:
        assert v["baselines"][r.name] == pytest.approx(r.metrics["balanced_accuracy"])
        assert v["beats"][r.name] == (ba > r.metrics["balanced_accuracy"])
    assert v["beats"] == {"majority": True, "logistic": False}
    assert v["beats_beyond_noise"] == {"majority": True, "logistic": False}
    # one standard error of a chance-level balanced accuracy: sqrt(sum 0.25 / n_c) / C
    support = np.bincount(case["y"], minlength=3)
    assert v["noise_se"] == pytest.approx(np.sqrt((0.25 / support).sum()) / 3)
    assert "the model beats the majority baseline" in first
    assert "does NOT beat the logistic baseline" in first


def test_a_single_class_model_is_called_collapsed_first(tmp_path: Path, case: dict) -> None:
    """Predicting 'up' for every test window: the banner opens with COLLAPSED, metrics.json says
    run.collapsed, and the model does not beat the majority class in balanced accuracy."""
    proba = np.tile([0.3, 0.2, 0.5], (len(case["y"]), 1))
    metrics = classification_metrics(case["y"], proba, CLASSES)
    path = write_run_report(tmp_path, history=HISTORY, metrics=metrics, classes=CLASSES,
                            y_true=case["y"], proba=proba, baseline_table=case["results"])
    first = _first_section(path.read_text())
    lines = re.findall(r"<b>(.*?)</b>", first)
    assert lines[0].startswith("COLLAPSED: the model predicts only &#x27;up&#x27; on the test split")
    assert "does NOT beat the majority baseline" in lines[1]
    assert "#c0392b" in first  # red
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["run"]["collapsed"] is True
    assert saved["verdict"]["collapsed_on"] == ["test"] and saved["verdict"]["predicted_class"] == "up"
    assert saved["verdict"]["beats"]["majority"] is False


def test_a_guard_collapse_on_validation_reaches_the_banner(tmp_path: Path, case: dict) -> None:
    """The training guard's single-class warning (about validation) is repeated in the banner and
    marks the run collapsed even when the test predictions use several classes; the milder
    low-recall warning does not."""
    from moola.training.guards import COLLAPSE, ONE_CLASS

    one = f"{COLLAPSE}: the kept model (epoch 2 of 4 run) {ONE_CLASS} 1 on validation"
    low = f"{COLLAPSE}: validation recall below 0.3 for class(es) 0 (0.12)"
    for notes, collapsed in (([low], False), ([low, one], True)):
        path = write_run_report(tmp_path, history=HISTORY, metrics=case["metrics"],
                                classes=CLASSES, y_true=case["y"], proba=case["proba"],
                                baseline_table=case["results"], notes=notes)
        saved = json.loads((tmp_path / "metrics.json").read_text())
        assert saved["run"]["collapsed"] is collapsed
        assert (f"COLLAPSED on validation: {one}" in _first_section(path.read_text())) is collapsed


def _test_ci(case: dict) -> dict:
    """What ``moola train`` passes as ``test_ci``: model accuracy and its paired difference from
    the best baseline, block-bootstrapped on the same test rows."""
    from moola.evaluation.resampling import accuracy_ci, paired_difference_ci

    y, pred = case["y"], case["proba"].argmax(1)
    best = max(case["results"], key=lambda r: r.metrics["accuracy"])
    return {"accuracy": accuracy_ci(y, pred).to_dict(), "method": "moving-block bootstrap",
            "horizon_rows": 1, "best_baseline": best.name,
            "baseline_accuracy": accuracy_ci(y, best.proba_test.argmax(1)).to_dict(),
            "difference": paired_difference_ci(y, pred, best.proba_test.argmax(1)).to_dict()}


def test_the_verdict_box_names_the_best_baseline_with_a_bootstrap_ci(tmp_path: Path, case: dict) -> None:
    ci = _test_ci(case)
    path = write_run_report(tmp_path, history=HISTORY, metrics=case["metrics"], classes=CLASSES,
                            y_true=case["y"], proba=case["proba"], baseline_table=case["results"],
                            test_ci=ci)
    first = _first_section(path.read_text())
    d = ci["difference"]
    assert d["low"] < d["estimate"] < d["high"]
    word = "beats" if d["low"] > 0 else "is beaten by" if d["high"] < 0 else "is not distinguishable from"
    assert (f"Against the best baseline ({ci['best_baseline']}, test accuracy "
            f"{ci['baseline_accuracy']['estimate']:.4f}): the model {word} it, accuracy difference "
            f"{d['estimate']:+.4f}, 95% block-bootstrap CI [{d['low']:+.4f}, {d['high']:+.4f}]") in first


def test_guard_notes_are_shown_once_as_plain_text_and_too_good_is_a_banner(tmp_path: Path,
                                                                           case: dict) -> None:
    """The trainer's console line repeats a guard warning with rich markup: the report shows the
    warning once, without markup, and a validation-above-training alarm opens the box in red."""
    from moola.training.guards import TOO_GOOD

    alarm = (f"{TOO_GOOD}: epoch 3: validation accuracy 0.900 (n=200) is 30 points above training "
             "accuracy 0.600 (n=800, both in eval mode)")
    path = write_run_report(tmp_path, history=HISTORY, metrics=case["metrics"], classes=CLASSES,
                            y_true=case["y"], proba=case["proba"], baseline_table=case["results"],
                            notes=[alarm, f"[bold red]WARNING[/] {alarm}"])
    text = path.read_text()
    assert "[bold red]" not in text and "WARNING" not in text
    assert text.count("validation accuracy 0.900 (n=200)") == 2  # the banner and the one note
    first = _first_section(text)
    assert "TOO GOOD TO BE TRUE: epoch 3" in first and "#c0392b" in first
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["notes"] == [alarm] and saved["verdict"]["too_good"] is True


def test_an_empty_table_says_no_findings_and_columns_share_one_number_format(tmp_path: Path) -> None:
    import polars as pl

    from moola.evaluation.data_report import DataReport

    rep = DataReport(tmp_path)
    rep.table(pl.DataFrame(schema={"symbol": pl.String, "count": pl.Int64}), caption="gaps")
    rep.table(pl.DataFrame({"model": ["a", "b", "c"], "accuracy": [0.5, 0.61234, 1.0],
                            "rows": [1200.0, 35.0, 7.0], "p": [1e-6, 2.5e-5, 0.0],
                            "bars": [1_234_567, 2, 3]}))
    text = rep.write().read_text()
    assert "gaps: no findings" in text and "<th>symbol</th>" not in text
    for cell in ("0.5000", "0.6123", "1.0000", "1,200", "35", "1.000e-06", "2.500e-05", "1,234,567"):
        assert f"<td>{cell}</td>" in text, cell
    assert "<div class='tbl'><table>" in text  # wide tables scroll inside their box


def test_learning_curves_put_lr_and_timings_last_with_whole_epoch_ticks() -> None:
    history = [{"epoch": e, "lr": 1e-3, "samples_per_s": 300.0, "seconds": 1.5, "train_loss": 1.0 / e,
                "val_loss": 1.1 / e,
                "train_accuracy": 0.5 + e / 100, "val_balanced_accuracy": 0.5} for e in range(1, 4)]
    fig = plot_learning_curves(history)
    titles = [ax.get_title() for ax in fig.axes if ax.axison]
    assert titles == ["loss", "accuracy", "balanced_accuracy", "lr", "seconds", "samples_per_s"]
    fig.canvas.draw()
    for ax in fig.axes:
        if ax.axison:
            ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
            assert ticks and all(float(t).is_integer() for t in ticks), (ax.get_title(), ticks)
    plt.close(fig)


def test_the_report_states_the_split_used_and_warns_when_a_segment_shrank(tmp_path: Path, case: dict) -> None:
    import polars as pl

    from moola.evaluation.run_report import split_summary

    def seg(n: int, start: str, symbols: list[str]) -> pl.DataFrame:
        base = pl.Series([f"{start} 00:00:00"] * n).str.to_datetime(time_zone="UTC")
        offs = pl.Series(range(n)).cast(pl.Duration("ms")) * 60_000
        return pl.DataFrame({"symbol": [symbols[i % len(symbols)] for i in range(n)], "end_ts": base + offs})

    meta = {"train": seg(700, "2023-03-01", ["BTCUSD", "ETHUSD"]), "val": seg(20, "2023-03-10", ["BTCUSD"]),
            "test": seg(280, "2023-03-12", ["BTCUSD", "ETHUSD"])}
    split = split_summary(meta, purged=64, embargoed=10, asked={"train": 0.6, "val": 0.2, "test": 0.2})
    assert [r["rows"] for r in split["segments"]] == [700, 20, 280] and split["total"] == 1000
    assert len(split["warnings"]) == 1 and split["warnings"][0].startswith("the val segment holds 2.0%")
    path = write_run_report(tmp_path, history=HISTORY, metrics=case["metrics"], classes=CLASSES,
                            y_true=case["y"], proba=case["proba"], baseline_table=case["results"],
                            split=split)
    text = path.read_text()
    first = _first_section(text)
    assert "SPLIT: the val segment holds 2.0% of the windows (20), much less than the 20% asked" in first
    assert "Split used" in text and "purge removed 64 and the embargo 10 windows" in text
    assert "<td>2023-03-10 00:19:00+00:00</td>" in text and "<td>BTCUSD, ETHUSD</td>" in text
    assert json.loads((tmp_path / "metrics.json").read_text())["split"]["purged"] == 64
