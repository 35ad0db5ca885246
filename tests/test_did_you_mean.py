"""Unknown names list the valid ones and suggest the nearest: config keys at any depth, presets,
feature sets; each through the command line as one message and exit code 2, before any data is
read."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from moola._io import did_you_mean
from moola.cli import app
from moola.config import ConfigError
from moola.pipelines.train import RunConfig

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "direction_demo.yaml"


@pytest.mark.parametrize(("override", "suggestion"), [
    ("train.epoch=5", "did you mean train.epochs?"),
    ("train.optimizer.lrr=0.1", "did you mean train.optimizer.lr?"),
    ("data.split.vall=0.1", "did you mean data.split.val?"),
    ("baseline=[majority]", "did you mean baselines?"),
])
def test_a_mistyped_key_at_any_depth_names_the_key_it_meant(override: str, suggestion: str) -> None:
    with pytest.raises(ConfigError) as ei:
        RunConfig.from_yaml(DEMO, [override])
    text = str(ei.value)
    key = override.split("=")[0]
    assert f"{key}: Extra inputs are not permitted" in text and suggestion in text
    assert "valid keys here: " in text


def test_no_suggestion_when_nothing_is_close() -> None:
    assert did_you_mean("zzzz", ["epochs", "seed"]) == ""
    assert did_you_mean("seeed", ["epochs", "seed"]) == " (did you mean seed?)"


@pytest.mark.parametrize(("override", "says"), [
    ("preset=simple_lstmm",
     "preset: unknown model preset 'simple_lstmm' (did you mean simple_lstm?); known presets: "),
    ("data.feature_set=crypto40",
     "data.feature_set: unknown feature set 'crypto40' (did you mean crypto39?); known feature sets: "),
    ("train.epoch=5", "(did you mean train.epochs?)"),
    ("data.task=regression", "preset 'simple_lstm' cannot learn data.task: regression; no preset has a "
                             "regression head"),
    ("preset=jade", None),
])
def test_the_command_line_says_it_in_one_line_and_exits_2(override: str, says: str | None, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOOLA_TRACKING", "off")
    extra = ["baselines=[majority]"] if "regression" in override else []
    if says is None:  # a classifier preset learns a direction task: accepted (a control)
        RunConfig.from_yaml(DEMO, [override])
        return
    res = CliRunner().invoke(app, ["train", "--config", str(DEMO), f"out_dir={tmp_path}", override, *extra])
    assert res.exit_code == 2, res.output
    assert says in " ".join(res.output.split())
    assert not (tmp_path / "_bundled_btcusd_1m").exists()  # refused before any data was read
