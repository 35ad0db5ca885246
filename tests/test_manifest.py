"""``manifest.json`` of ``moola train`` runs: every key filled from the run itself and
documented; a real pre-manifest run directory (``meta.json``) migrated on read; the feature
schema hash covers the features' code (a changed formula changes it, a comment does not)."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from _train_helpers import ROOT
from moola.data import Store
from moola.datasets.tasks import DataConfig, prepare_data, resolve_store
from moola.features import FeatureMatrix, FeatureSet, build_features, compute_features, get_feature_set
from moola.features._registry import formula_modules
from moola.pipelines.train import RunConfig, run_train
from moola.training import data_fingerprint
from moola.training.manifest import FORMAT_VERSION, Manifest, periods_by_symbol, read_manifest
from moola.training.separation import evaluated_intervals

DEMO = ROOT / "configs" / "train_demo.yaml"
FIXTURE = ROOT / "tests" / "fixtures" / "old_run_v1"
SYMBOLS = ["AAPL", "JPM", "MSFT", "XOM"]
OVERRIDES = ["train.epochs=1", "data.stride=20", "baselines=[majority]", "train.device=cpu",
             "train.num_threads=1", f"data.symbols=[{','.join(SYMBOLS)}]"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, RunConfig]:
    out = tmp_path_factory.mktemp("manifest_run")
    cfg = RunConfig.from_yaml(DEMO, [f"out_dir={out}", *OVERRIDES])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outcome = run_train(cfg, show_progress=False)
    return outcome.run_dir, cfg


def test_train_run_manifest_describes_the_run(run):
    run_dir, cfg = run
    assert (run_dir / "manifest.json").is_file() and not (run_dir / "meta.json").exists()
    m = read_manifest(run_dir)
    assert (m.kind, m.format_version) == ("train_run", FORMAT_VERSION)
    data = prepare_data(cfg.data, Path(m.store))
    # inputs: everything a Predictor needs to rebuild them
    assert m.feature_set == "ohlc4"
    assert m.feature_names == list(data.feature_names) == ["open_lr", "high_lr", "low_lr", "close_lr"]
    assert m.feature_schema_hash == data.schema_hash == get_feature_set("ohlc4").schema_hash
    assert (m.window, m.horizon, m.timeframe, m.task) == (105, 1, "1d", "direction")
    assert m.symbols == sorted(SYMBOLS)
    assert m.bar_columns == ["symbol", "ts", "open", "high", "low", "close", "volume", "adj_close"]
    assert m.classes == ["down", "up"]
    assert m.label is not None and "log return" in m.label and "> 0" in m.label
    assert m.normalizer == json.loads((run_dir / "normalizer.json").read_text())
    assert data.normalizer is not None and m.normalizer == data.normalizer.to_dict()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert m.temperature == metrics["run"]["temperature"] and m.temperature > 0
    # what the model saw: the exact time range of every split per symbol
    for split in ("train", "val", "test"):
        assert m.periods[split] == periods_by_symbol(data.meta[split]), split
        assert sorted(m.periods[split]) == sorted(SYMBOLS)
    env = {k: m.period_envelope(k) for k in ("train", "val", "test")}
    assert env["train"].end < env["val"].start and env["val"].end < env["test"].start
    assert m.normalizer_fit == evaluated_intervals(data.meta["train"])
    assert m.embargo_bars == cfg.data.split.embargo_bars == 5
    # provenance
    assert m.data_fingerprint == data_fingerprint(data.x["train"], data.y["train"])
    assert m.n_params == metrics["run"]["n_params"] and m.n_train == len(data.y["train"])
    assert m.torch_version == torch.__version__ and m.created is not None
    assert m.git_sha == "unknown" or re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", m.git_sha), m.git_sha


def test_every_manifest_key_is_documented():
    doc = (ROOT / "docs" / "manifest.md").read_text()
    missing = [k for k in Manifest.model_fields if f"| `{k}` |" not in doc]
    assert not missing, f"docs/manifest.md does not document {missing}"


# ------------------------------------------------------------------- old directories


def test_a_real_pre_manifest_run_directory_migrates_on_read():
    """tests/fixtures/old_run_v1 was written by moola at 90b239b (meta.json, no manifest)."""
    assert not (FIXTURE / "manifest.json").exists()
    before = sorted(p.name for p in FIXTURE.iterdir())
    m = read_manifest(FIXTURE)
    assert sorted(p.name for p in FIXTURE.iterdir()) == before  # read-only migration
    meta = json.loads((FIXTURE / "meta.json").read_text())
    assert m.kind == "train_run" and m.extra["migrated_from"].startswith("meta.json")
    assert (m.feature_set, m.feature_names) == ("ohlc4", ["open_lr", "high_lr", "low_lr", "close_lr"])
    # its hash is the older names-and-parameters one, not today's (which covers the code too)
    ohlc4 = get_feature_set("ohlc4")
    assert m.feature_schema_hash == meta["feature_schema_hash"] == ohlc4.legacy_schema_hash
    assert m.feature_schema_hash != ohlc4.schema_hash
    assert (m.window, m.horizon, m.task, m.embargo_bars) == (30, 1, "direction", 5)
    assert m.symbols == ["AAPL", "MSFT", "XOM"] and m.classes == ["down", "up"]
    assert m.normalizer == json.loads((FIXTURE / "normalizer.json").read_text())
    assert m.temperature == json.loads((FIXTURE / "metrics.json").read_text())["run"]["temperature"]
    assert (m.git_sha, m.n_params, m.n_train) == (meta["git_sha"], meta["n_params"], meta["n_train"])
    assert m.git_sha.startswith("90b239b")
    assert m.timeframe is None and m.periods == {} and m.bar_columns == []  # unknown in v1


# ------------------------------------------------------------------ schema hash


TEMPLATE = '''"""A one-feature set for the schema-hash test ({doc})."""
import polars as pl

from moola.features._registry import FeatureSet, FeatureSpec


def feature_set() -> FeatureSet:
    """Build it."""
    # {comment}
    return FeatureSet(
        name="tiny", description="close log ratio",
        specs=(FeatureSpec("close_lr", "log(close_t / close_(t-k))", 2, {expr}),),
        params={{}}, kind="per_symbol", make=feature_set)
'''
SHIFT1 = '(pl.col("close") / pl.col("close").shift(1)).log()'
SHIFT2 = '(pl.col("close") / pl.col("close").shift(2)).log()'


def _set_from_source(tmp_path: Path, monkeypatch, name: str, expr: str, *, comment: str = "c",
                     doc: str = "d") -> FeatureSet:
    path = tmp_path / f"{name}.py"
    path.write_text(TEMPLATE.format(expr=expr, comment=comment, doc=doc))
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module.feature_set()


def test_a_changed_formula_changes_the_schema_hash(tmp_path, monkeypatch):
    base = _set_from_source(tmp_path, monkeypatch, "moola_hash_a", SHIFT1)
    other = _set_from_source(tmp_path, monkeypatch, "moola_hash_b", SHIFT2)
    reworded = _set_from_source(tmp_path, monkeypatch, "moola_hash_c", SHIFT1,
                                comment="a different comment", doc="another docstring")
    # same name, names, lookback and parameters: the old hash cannot tell them apart ...
    assert base.names == other.names and base.legacy_schema_hash == other.legacy_schema_hash
    # ... the code hash can, and comments or docstrings do not count
    assert base.schema_hash != other.schema_hash
    assert base.schema_hash == reworded.schema_hash
    # and the formulas really differ on real bars
    bars = Store(resolve_store(DataConfig(), tmp_path / "cache")).read("1d", ["AAPL"])
    a, b = compute_features(bars, base), compute_features(bars, other)
    assert not np.allclose(a.values[2:], b.values[2:])
    assert (a.schema_hash, b.schema_hash) == (base.schema_hash, other.schema_hash)


def test_the_hash_covers_the_modules_a_set_draws_helpers_from():
    assert formula_modules(get_feature_set("ohlc4").make) == ("moola.features.ohlc4",)
    # relative11 reuses ohlc4's specs and alpha158's rolling mean: a change there changes it
    assert formula_modules(get_feature_set("relative11").make) == (
        "moola.features.alpha158", "moola.features.ohlc4", "moola.features.relative11")
    hashes = {fs.name: fs.schema_hash for fs in (get_feature_set(n) for n in
                                                  ("ohlc4", "relative11", "crypto39", "alpha158"))}
    assert len(set(hashes.values())) == 4
    assert get_feature_set("relative11", atr=10).schema_hash != hashes["relative11"]  # parameters


def test_feature_matrices_carry_the_set_s_hash_through_save_and_load(tmp_path):
    bars = Store(resolve_store(DataConfig(), tmp_path / "cache")).read("1d", ["AAPL", "MSFT"])
    fm = build_features(bars, "ohlc4")
    assert fm.schema_hash == get_feature_set("ohlc4").schema_hash
    again = FeatureMatrix.load(fm.save(tmp_path / "f.parquet"))
    assert again.schema_hash == fm.schema_hash and again.code_hash == fm.code_hash
    side = json.loads((tmp_path / "f.parquet.schema.json").read_text())
    assert side["code_hash"] == get_feature_set("ohlc4").code_hash
    assert pl.read_parquet(tmp_path / "f.parquet").height == bars.height


def test_a_corrupt_manifest_names_the_file_and_the_fault(tmp_path):
    from moola._io import JsonFileError

    (tmp_path / "manifest.json").write_text('{"kind": "train_run",')
    with pytest.raises(JsonFileError, match=r"manifest\.json: not valid JSON at line 1 column 22"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text('{"kind": "train_run"}')
    with pytest.raises(JsonFileError, match=r"manifest\.json: missing key 'format_version'"):
        read_manifest(tmp_path)
