"""Two tiny ensemble members for the runtime tests: an LSTM (streamed through its recurrent ring)
and a causal Transformer (full window each tick), one epoch of ohlc4 16-bar windows on a store,
written into an ensemble file with fixed weights."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from rich.console import Console

from moola.inference import EnsembleConfig
from moola.pipelines.train import RunConfig, run_train

MODELS = {
    "lstm": {"name": "rt_lstm", "direction": {"mlp": [16], "dropout": 0.0},
             "encoder": {"kind": "lstm", "input_size": 4, "hidden": 16, "layers": 2}},
    "transformer": {"name": "rt_tfm", "direction": {"mlp": [16], "dropout": 0.0},
                    "encoder": {"kind": "transformer", "input_size": 4, "d_model": 16, "heads": 2,
                                "layers": 1, "ff": 32, "causal": True, "max_len": 32}},
}


def train_members(store: Path, out: Path, weights: tuple[float, float]) -> tuple[Path, dict[str, Path]]:
    """(ensemble.yaml, {member name: run dir}) trained on every symbol of ``store``."""
    common = {"out_dir": str(out / "runs"), "baselines": ["majority"], "economics": None, "preset": None,
              "train": {"epochs": 1, "batch_size": 64, "device": "cpu", "num_threads": 1,
                        "early_stopping": None},
              "data": {"store": str(store), "timeframe": "1m", "stride": 10, "horizon": 1,
                       "feature_set": "ohlc4", "window": 16}}
    dirs: dict[str, Path] = {}
    for name, model in MODELS.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            done = run_train(RunConfig.from_dict({**common, "name": name, "model": model}),
                             show_progress=False, console=Console(file=io.StringIO()))
        dirs[name] = Path(done.run_dir)
    spec = out / "ensemble.yaml"
    EnsembleConfig.from_dict({"weights": "fixed", "members": [
        {"ref": str(dirs[name]), "name": name, "weight": w}
        for name, w in zip(MODELS, weights, strict=True)]}).to_yaml(spec)
    return spec, dirs
