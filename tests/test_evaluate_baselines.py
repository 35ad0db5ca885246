"""``moola evaluate`` reuses the run's baselines when the data is the same, and says so.

* ``moola train`` stores each baseline's test probabilities (``baselines_test.parquet`` and a
  ``.json`` key: training-window and row fingerprints, baseline settings); no model is pickled.
* ``evaluate`` of the same rows reuses them (no baseline is fitted: fitting raises here) and
  scores them to the same numbers train reported; other rows or settings refit, naming why; a
  refit is stored, so the next evaluate of that split reuses it.
* Baselines fit one at a time under a bar; one slower than the model's fit says so.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

import moola.evaluation.baselines as bl
from _train_helpers import ROOT
from moola.evaluation import BaselineResult, load_baseline_probabilities, save_baseline_probabilities
from moola.pipelines.train import RunConfig, run_evaluate, run_train

DEMO = ROOT / "configs" / "direction_demo.yaml"
TINY = ["train.epochs=1", "data.stride=20", "baselines=[majority,logistic]", "train.device=cpu",
        "train.num_threads=1"]

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("ignore::moola.training.guards.GuardWarning")]


def _console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=200, force_terminal=False), buf


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("eval_base")
    cfg = RunConfig.from_yaml(DEMO, [f"out_dir={out}", "name=eb", *TINY])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run_train(cfg, console=Console(quiet=True), show_progress=False).run_dir


def _no_fitting(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*a: object, **k: object) -> None:
        raise AssertionError("a baseline was fitted although the run's could be reused")

    for name in ("logistic_baseline", "majority_baseline", "minirocket_baseline", "lightgbm_baseline"):
        monkeypatch.setattr(bl, name, refuse)


def test_train_stores_the_baselines_test_probabilities(run: Path) -> None:
    meta = json.loads((run / "baselines_test.json").read_text())
    assert [b["name"] for b in meta["baselines"]] == ["majority", "logistic"]
    assert set(meta["key"]) == {"split", "train", "rows", "baselines", "baseline_lags", "seed",
                                "dead_zone_bps"}
    assert (run / "baselines_test.parquet").is_file()


def test_evaluate_reuses_them_and_scores_the_same_numbers(run: Path, monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    trained = {r["model"]: r for r in json.loads((run / "metrics.json").read_text())["baselines"]}
    _no_fitting(monkeypatch)
    console, buf = _console()
    out = run_evaluate(run, console=console, show_progress=False)
    text = buf.getvalue()
    assert "baselines on test: reused the run's (majority, logistic; same training windows" in text
    for name, m in out["test"]["baselines"].items():
        assert m["accuracy"] == pytest.approx(trained[name]["accuracy"], abs=1e-12)
        assert m["log_loss"] == pytest.approx(trained[name]["log_loss"], abs=1e-12)


def test_other_rows_refit_naming_why_and_the_refit_is_reused_next_time(
        run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    console, buf = _console()
    run_evaluate(run, split="val", console=console, show_progress=False)
    assert "baselines on val: fitting (no stored baselines (baselines_val.json))" in buf.getvalue()
    _no_fitting(monkeypatch)
    console, buf = _console()
    run_evaluate(run, split="val", console=console, show_progress=False)
    assert "baselines on val: reused the run's" in buf.getvalue()


def test_a_key_that_differs_is_named(tmp_path: Path) -> None:
    y = np.array([0, 1, 1, 0])
    res = BaselineResult("majority", np.full((4, 2), 0.5), {}, 0.01, {"prior": [0.5, 0.5]})
    key = {"split": "test", "train": "aaaa", "rows": "bbbb", "baselines": ["majority"]}
    path = tmp_path / "baselines_test.parquet"
    save_baseline_probabilities(path, [res], key)
    got, why = load_baseline_probabilities(path, key, y, ["down", "up"])
    assert why == "reused" and got is not None and got[0].metrics["accuracy"] == 0.5
    np.testing.assert_array_equal(got[0].proba_test, res.proba_test)
    got, why = load_baseline_probabilities(path, {**key, "train": "cccc"}, y, ["down", "up"])
    assert got is None and "train: 'aaaa' then, 'cccc' now" in why
    path.rename(tmp_path / "moved.parquet")
    got, why = load_baseline_probabilities(path, key, y, ["down", "up"])
    assert got is None and "baselines_test.parquet is missing" in why
    (tmp_path / "baselines_test.json").write_text("{not json")
    got, why = load_baseline_probabilities(path, key, y, ["down", "up"])
    assert got is None and "unreadable" in why


def test_a_baseline_slower_than_the_model_says_so(run: Path) -> None:
    from moola.datasets.tasks import resolve_store
    from moola.pipelines.train import fit_baselines, prepare_data

    cfg = RunConfig.from_yaml(run / "config.yaml")
    data = prepare_data(cfg.data, resolve_store(cfg.data, Path(cfg.out_dir)))
    console, buf = _console()
    base = fit_baselines(cfg, data, "test", console=console, show_progress=True, model_seconds=0.0)
    text = " ".join(buf.getvalue().split())
    assert [b.name for b in base] == ["majority", "logistic"]
    assert "baseline logistic took" in text and "longer than the model's 0.0 s fit" in text
    assert "baselines on test" in text and "2/2" in text  # the bar ran to the end
