"""Resumable training and self-describing checkpoints.

* A training SUBPROCESS is SIGKILLed at a random step (seeded per run), resumed, and its final
  ``weights.safetensors`` are bitwise those of an uninterrupted run; history.jsonl holds every
  epoch exactly once, with the uninterrupted run's numbers.
* A checkpoint directory describes itself (config, weights, metrics, meta with schema hash, data
  fingerprint, version, git SHA) and ``from_checkpoint`` rebuilds a model with identical outputs.
* Weights load strictly by name and shape; state files load with ``torch.load(weights_only=True)``
  and no code path unpickles arbitrary objects.
"""

from __future__ import annotations

import ast
import json
import os
import pickle
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from rich.console import Console
from safetensors.torch import load_file

import moola
from _train_helpers import ROOT, SRC, ohlc_windows, quiet_config, seeded_model, states_equal
from moola.models import build_model, lstm_classifier, preset_config
from moola.training import (
    Callback,
    ClassificationObjective,
    GuardWarning,
    TensorData,
    Trainer,
    data_fingerprint,
    from_checkpoint,
    load_weights,
    save_weights,
)
from moola.training.checkpoint import load_state

TESTS = Path(__file__).resolve().parent


pytestmark = pytest.mark.usefixtures("one_torch_thread")

# The training script run in a subprocess: a seeded model on real windows, fit with run_dir.
SCRIPT = textwrap.dedent("""
    import sys, warnings
    sys.path.insert(0, {tests!r})
    import torch
    from rich.console import Console
    from _train_helpers import direction_windows, ohlc_windows, quiet_config, seeded_model
    from moola.training import (ClassificationObjective, DirectionObjective, GuardWarning,
                                TensorData, Trainer)

    warnings.simplefilter("ignore", GuardWarning)
    run_dir, variant, resume = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    torch.set_num_threads(1)
    if variant == "classifier":
        # pointer head, dropout, AdamW, warm-up + cosine restarts, early stopping keeping the best
        train = TensorData(ohlc_windows(48, pointers=True))
        val = TensorData(ohlc_windows(16, symbols=("MSFT", "KO"), pointers=True))
        model = seeded_model("jade_compact", seed=3)
        objective = ClassificationObjective(2)
        cfg = quiet_config(
            epochs=4, batch_size=8, seed=3, num_threads=1, checkpoint_every=2,
            optimizer={{"name": "adamw", "lr": 3e-3}},
            scheduler={{"name": "cosine_warm_restarts", "T_0": 2, "warmup_steps": 3}},
            early_stopping={{"metric": "val_loss", "patience": 10, "restore_best": True}},
        )
    else:
        # transformer with dropout, SGD + momentum, a plateau scheduler on val_loss
        train = TensorData(direction_windows(48))
        val = TensorData(direction_windows(16, offset=60 * 105))
        model = seeded_model("direction_transformer", seed=5)
        objective = DirectionObjective()
        cfg = quiet_config(
            epochs=4, batch_size=8, seed=5, num_threads=1, checkpoint_every=2,
            optimizer={{"name": "sgd", "lr": 1e-2, "momentum": 0.9}},
            scheduler={{"name": "plateau", "patience": 0, "factor": 0.5}},
        )
    trainer = Trainer(model, objective, cfg, run_dir=run_dir, show_progress=False,
                      console=Console(quiet=True))
    trainer.fit(train, val, resume=resume)
""")
STEPS = {"classifier": 4 * 6, "direction": 4 * 6}  # epochs * batches per epoch
TIMING_KEYS = {"epoch_seconds", "samples_per_s"}


def _script(tmp_path: Path) -> Path:
    p = tmp_path / "train_script.py"
    p.write_text(SCRIPT.format(tests=str(TESTS)))
    return p


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    return env


def _popen(script: Path, run_dir: Path, variant: str, resume: bool) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(script), str(run_dir), variant, "1" if resume else "0"],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _finish(proc: subprocess.Popen, timeout: float = 300) -> None:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"training subprocess failed ({proc.returncode}):\n{out[-4000:]}"


def _latest_step(run_dir: Path) -> int:
    latest = run_dir / "ckpt" / "latest.json"
    if not latest.is_file():
        return -1
    return int(json.loads(latest.read_text())["step"])  # written atomically: never partial


def _kill_at(script: Path, run_dir: Path, variant: str, resume: bool, k: int,
             delay: float) -> int:
    """Start (or resume) training, SIGKILL it once latest.json reaches step ``k`` (after an
    extra ``delay``, so the kill lands mid-step); return the checkpointed step at the kill."""
    proc = _popen(script, run_dir, variant, resume)
    deadline = time.monotonic() + 300
    try:
        while _latest_step(run_dir) < k:
            assert proc.poll() is None, (
                f"training ended before step {k}:\n{proc.communicate()[0][-4000:]}")
            assert time.monotonic() < deadline, "no checkpoint progress"
            time.sleep(0.002)
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    return _latest_step(run_dir)


def _history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]


def _strip_timing(h: list[dict]) -> list[dict]:
    return [{k: v for k, v in rec.items() if k not in TIMING_KEYS} for rec in h]


@pytest.mark.slow
@pytest.mark.parametrize(("variant", "n_kills"), [("classifier", 2), ("direction", 1)])
def test_sigkill_then_resume_is_bitwise_identical_to_an_uninterrupted_run(tmp_path, variant, n_kills):
    script = _script(tmp_path)
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "killed"
    ref = _popen(script, ref_dir, variant, resume=False)  # uninterrupted, runs alongside

    # kill points: random per run, from a seed printed for a rerun (MOOLA_KILL_SEED=...);
    # each kill leaves at least 6 steps to go, so the run cannot finish before the kill
    seed = int(os.environ.get("MOOLA_KILL_SEED", time.time_ns() % 2**31))
    print(f"kill seed {seed}")
    rng = random.Random(seed)
    total = STEPS[variant]
    done = 0
    resumed_from = []
    for i in range(n_kills):
        if done + 1 > total - 6:
            break
        k = rng.randint(done + 1, total - 6)
        got = _kill_at(script, run_dir, variant, resume=i > 0, k=k, delay=rng.uniform(0, 0.05))
        assert got >= k, f"kill seed {seed}"
        resumed_from.append(got)
        done = got
    assert resumed_from
    final = _popen(script, run_dir, variant, resume=True)
    _finish(final)
    _finish(ref)

    a = load_file(str(ref_dir / "weights.safetensors"))
    b = load_file(str(run_dir / "weights.safetensors"))
    assert states_equal(a, b), f"resumed weights differ (kill seed {seed}, checkpoints {resumed_from})"
    assert (ref_dir / "weights.safetensors").read_bytes() == (run_dir / "weights.safetensors").read_bytes()

    hist, ref_hist = _history(run_dir), _history(ref_dir)
    epochs = [h["epoch"] for h in hist]
    assert epochs == list(range(1, len(hist) + 1)), f"duplicated/missing epochs {epochs}"
    assert len(hist) == 4
    # same numbers as the uninterrupted run (timings aside), loss sums included
    assert _strip_timing(hist) == _strip_timing(ref_hist), f"kill seed {seed}"
    # the model really trained across the kill
    assert hist[-1]["step"] == total
    assert not states_equal(b, seeded_model(
        "jade_compact" if variant == "classifier" else "direction_transformer",
        seed=3 if variant == "classifier" else 5).state_dict())


class Crash(Callback):
    """Dies (as a kill would) right after optimizer step ``step``, before its checkpoint, or
    right after epoch ``epoch`` was appended to history.jsonl but before its checkpoint."""

    def __init__(self, step: int | None = None, epoch: int | None = None) -> None:
        self.step, self.epoch = step, epoch

    def on_batch_end(self, trainer, step, loss, batch_size):
        if step == self.step:
            raise KeyboardInterrupt(f"simulated kill after step {step}")

    def on_epoch_end(self, trainer, epoch, logs):
        if epoch == self.epoch:
            raise KeyboardInterrupt(f"simulated kill after logging epoch {epoch + 1}")


def test_resume_after_a_kill_at_every_step_and_epoch_end_is_bitwise_identical(tmp_path):
    """Deterministic complement of the SIGKILL test: 3 epochs x 3 batches, checkpoints every
    2 steps; a kill after each step and after each logged epoch, then a resume."""
    train = TensorData(ohlc_windows(24, pointers=True))
    val = TensorData(ohlc_windows(8, symbols=("MSFT",), pointers=True))
    # a high peak LR: val_loss is best after epoch 1, so the restored final weights must come
    # from best.safetensors of a checkpoint taken before the kill
    cfg = quiet_config(epochs=3, batch_size=8, seed=0, checkpoint_every=2,
                       optimizer={"lr": 3e-2}, scheduler={"name": "one_cycle"},
                       early_stopping={"metric": "val_loss", "patience": 5})

    def fit(run_dir: Path, resume: bool, callbacks=()) -> None:
        m = seeded_model("jade_compact", seed=0)
        t = Trainer(m, ClassificationObjective(2), cfg, run_dir=run_dir, callbacks=callbacks,
                    show_progress=False,
                    console=Console(quiet=True))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", GuardWarning)
            t.fit(train, val, resume=resume)

    ref = tmp_path / "ref"
    fit(ref, resume=False)
    ref_hist = _strip_timing(_history(ref))
    vloss = [h["val_loss"] for h in ref_hist]
    assert int(np.argmin(vloss)) == 0, vloss
    ref_weights = (ref / "weights.safetensors").read_bytes()
    kills = [{"step": k} for k in range(1, 9)] + [{"epoch": e} for e in (0, 1)]
    for kill in kills:
        run_dir = tmp_path / "_".join(f"{k}{v}" for k, v in kill.items())
        with pytest.raises(KeyboardInterrupt):
            fit(run_dir, resume=False, callbacks=[Crash(**kill)])
        if "epoch" in kill:  # the log is one epoch ahead of the latest checkpoint
            assert len(_history(run_dir)) == kill["epoch"] + 1
            assert _latest_step(run_dir) < 3 * (kill["epoch"] + 1)
        fit(run_dir, resume=True)
        hist = _history(run_dir)
        assert [h["epoch"] for h in hist] == [1, 2, 3], kill
        assert _strip_timing(hist) == ref_hist, kill
        assert (run_dir / "weights.safetensors").read_bytes() == ref_weights, kill


def test_resume_without_checkpoint_starts_from_scratch_and_equals_a_fresh_run(tmp_path):
    """A run directory with no checkpoint (absent, or holding a stale history.jsonl from a
    run that never checkpointed) starts from scratch and keeps only this run's epochs."""
    d = TensorData(ohlc_windows(16))
    cfg = quiet_config(epochs=1, batch_size=8, seed=1, num_threads=1)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "history.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n')
    outs = []
    for resume, name in ((False, "a"), (True, "b"), (True, "c")):
        m = seeded_model("jade_compact", seed=1)
        t = Trainer(m, ClassificationObjective(2), cfg, run_dir=tmp_path / name, show_progress=False,
                    console=Console(quiet=True))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", GuardWarning)
            t.fit(d, resume=resume)
        outs.append(load_file(str(tmp_path / name / "weights.safetensors")))
        assert [h["epoch"] for h in _history(tmp_path / name)] == [1]
    assert states_equal(outs[0], outs[1]) and states_equal(outs[0], outs[2])
    assert _strip_timing(_history(tmp_path / "a")) == _strip_timing(_history(tmp_path / "c"))
    with pytest.raises(ValueError, match="run_dir"):
        Trainer(seeded_model("jade_compact"), ClassificationObjective(2), cfg,
                show_progress=False).fit(d, resume=True)


# ------------------------------------------------------------------ checkpoint contents


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """An in-process fit with run_dir, early stopping keeping the best, and a config.yaml."""
    run_dir = tmp_path_factory.mktemp("ckpt_run")
    cfg_model = preset_config("jade_compact", n_features=4)
    torch.manual_seed(0)
    model, train = _fit_checkpointed(run_dir, epochs=2)
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"model": cfg_model.to_dict()}))
    return run_dir, model, train


def test_trainer_checkpoint_directory_layout(trained_run):
    run_dir, _, _ = trained_run
    assert (run_dir / "weights.safetensors").is_file()
    assert len(_history(run_dir)) == 2
    latest = json.loads((run_dir / "ckpt" / "latest.json").read_text())
    step_dir = run_dir / "ckpt" / latest["dir"]
    assert latest["step"] == 4  # 2 epochs x 2 batches
    names = {p.name for p in step_dir.iterdir()}
    assert {"model.safetensors", "torch_state.pt", "loop.json", "best.safetensors"} <= names
    # no temporary directories or files left behind, at most `keep` step directories
    ck = sorted(p.name for p in (run_dir / "ckpt").iterdir())
    assert not [n for n in ck if n.startswith(".")], ck
    assert len([n for n in ck if n.startswith("step-")]) <= 2
    loop = json.loads((step_dir / "loop.json").read_text())
    assert loop["global_step"] == 4 and loop["epoch"] == 2 and loop["batch"] == 0


def test_state_files_load_with_weights_only(trained_run):
    run_dir, _, _ = trained_run
    state, d = load_state(run_dir)
    ts = torch.load(d / "torch_state.pt", weights_only=True)
    assert {"optimizer", "scheduler", "rng_cpu"} <= set(ts)
    assert isinstance(ts["rng_cpu"], torch.Tensor)
    assert state["global_step"] == 4


class _Evil:
    """Unpickling this would create a marker file: it must never be unpickled."""

    marker = ""

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_pickled_object_in_the_state_is_refused_not_executed(trained_run, tmp_path):
    run_dir, _, _ = trained_run
    import shutil

    evil_run = tmp_path / "evil"
    shutil.copytree(run_dir, evil_run)
    _, d = load_state(evil_run)
    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.marker = str(marker)
    torch.save({"optimizer": {}, "scheduler": {}, "rng_cpu": evil}, d / "torch_state.pt")
    from moola.training import CheckpointError

    with pytest.raises(CheckpointError, match=r"torch_state\.pt is truncated or corrupt") as exc:
        load_state(evil_run)
    assert isinstance(exc.value.__cause__, pickle.UnpicklingError)  # refused by weights_only
    assert not marker.exists()


def _copy_run(trained_run, tmp_path: Path) -> Path:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run[0], run)
    return run


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("name", ["model.safetensors", "torch_state.pt", "best.safetensors"])
def test_a_truncated_state_file_is_named_as_truncated_or_corrupt(trained_run, tmp_path, name):
    from moola.training import CheckpointError

    run = _copy_run(trained_run, tmp_path)
    _, d = load_state(run)
    _truncate(d / name)
    with pytest.raises(CheckpointError, match=rf"checkpoint file {re.escape(str(d / name))} is truncated "
                                              r"or corrupt \(.+\)"):
        if name == "torch_state.pt":
            load_state(run)
        else:  # the safetensors files are read when the trainer restores the state
            loaded = load_state(run)
            assert loaded is not None
            _fit_resumed(run)


def _fit_checkpointed(run: Path, *, epochs: int, resume: bool = False) -> tuple[torch.nn.Module, TensorData]:
    """jade_compact on 32 real-shaped windows, checkpointing every epoch into ``run``."""
    model = seeded_model("jade_compact", seed=0)
    train = TensorData(ohlc_windows(32, pointers=True))
    val = TensorData(ohlc_windows(16, symbols=("MSFT", "KO"), pointers=True))
    cfg = quiet_config(epochs=epochs, batch_size=16, seed=0, num_threads=1, checkpoint_every=1,
                       early_stopping={"metric": "val_loss", "patience": 5})
    t = Trainer(model, ClassificationObjective(2), cfg, run_dir=run, show_progress=False,
                console=Console(quiet=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GuardWarning)
        t.fit(train, val, resume=resume)
    return model, train


def _fit_resumed(run: Path) -> None:
    _fit_checkpointed(run, epochs=3, resume=True)


def test_truncated_final_weights_are_named_by_from_checkpoint(trained_run, tmp_path):
    from moola.training import CheckpointError

    run = _copy_run(trained_run, tmp_path)
    _truncate(run / "weights.safetensors")
    with pytest.raises(CheckpointError,
                       match=r"checkpoint file .*weights\.safetensors is truncated or corrupt"):
        from_checkpoint(run)


@pytest.mark.parametrize(("file", "text", "message"), [
    ("latest.json", '{"step": 4, "dir"', r"latest\.json: not valid JSON at line 1 column 18"),
    ("latest.json", '{"dir": "step-00000004"}', r"latest\.json: missing key 'step'"),
    ("loop.json", '{"epoch": 2', r"loop\.json: not valid JSON at line 1 column 12"),
    ("loop.json", '{"epoch": 2}', r"loop\.json: missing keys 'batch', 'global_step'"),
])
def test_a_corrupt_latest_or_loop_json_names_the_file_and_the_fault(trained_run, tmp_path, file, text,
                                                                      message):
    from moola._io import JsonFileError

    run = _copy_run(trained_run, tmp_path)
    _, d = load_state(run)
    (run / "ckpt" / "latest.json" if file == "latest.json" else d / "loop.json").write_text(text)
    with pytest.raises(JsonFileError, match=message):
        load_state(run)


@pytest.mark.parametrize("target", ["../../other_run/ckpt/step-00000004", "ABSOLUTE", "..", ".",
                                    "LINK"])
def test_latest_json_cannot_point_outside_the_runs_own_ckpt_directory(trained_run, tmp_path, target):
    from moola.training import CheckpointError

    run = _copy_run(trained_run, tmp_path)
    other = tmp_path / "other_run"
    import shutil

    shutil.copytree(run, other)
    _, d = load_state(other)
    if target == "ABSOLUTE":
        target = str(d)
    elif target == "LINK":  # a step directory that is a symlink into another run
        (run / "ckpt" / "step-99999999").symlink_to(d)
        target = "step-99999999"
    (run / "ckpt" / "latest.json").write_text(json.dumps({"step": 4, "dir": target}))
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(run / 'ckpt' / 'latest.json'))}: points at "
                                              rf"{re.escape(repr(target))}, outside"):
        load_state(run)


def test_no_code_path_unpickles_arbitrary_objects():
    """Every torch.load passes weights_only=True literally; no pickle/joblib/dill loading."""
    calls = []
    for path in sorted((SRC / "moola").rglob("*.py")):
        text = path.read_text()
        assert "weights_only=False" not in text.replace(" ", ""), path
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not any(m.split(".")[0] in ("pickle", "dill", "joblib", "cloudpickle")
                               for m in mods), f"{path}: imports {mods}"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr == "load" and isinstance(node.func.value, ast.Name) \
                    and node.func.value.id == "torch":
                kw = {k.arg: k.value for k in node.keywords}
                ok = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
                assert ok, f"{path}:{node.lineno}: torch.load without weights_only=True"
                calls.append(f"{path.name}:{node.lineno}")
        assert not re.search(r"\bnp\.load\([^)]*allow_pickle\s*=\s*True", text), path
    assert calls, "expected the resumable state to be read with torch.load"


def test_from_checkpoint_rebuilds_the_model_with_identical_outputs(trained_run):
    run_dir, model, train = trained_run
    rebuilt = from_checkpoint(run_dir)
    assert not rebuilt.training
    assert type(rebuilt) is type(model) and rebuilt is not model
    model.eval()
    x = train.tensors["x"]
    with torch.no_grad():
        a, b = model({"x": x}), rebuilt({"x": x})
    assert a.keys() == b.keys() == {"logits", "start_logits", "end_logits"}
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the final weights are the restored best epoch's, which the checkpoint also kept
    latest = json.loads((run_dir / "ckpt" / "latest.json").read_text())
    best = load_file(str(run_dir / "ckpt" / latest["dir"] / "best.safetensors"))
    assert states_equal(best, rebuilt.state_dict())


def test_from_checkpoint_refuses_a_directory_without_config(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config\.yaml"):
        from_checkpoint(tmp_path)


def test_loading_weights_into_another_architecture_names_tensors_and_shapes(tmp_path):
    src = seeded_model("jade_compact", seed=0, n_features=4)
    path = tmp_path / "w.safetensors"
    save_weights(src, path)

    wider = seeded_model("jade_compact", seed=1, n_features=5)
    before = {k: v.clone() for k, v in wider.state_dict().items()}
    with pytest.raises(ValueError) as e:
        load_weights(wider, path)
    msg = str(e.value)
    assert "encoder.rnn.weight_ih_l0" in msg and "(224, 4)" in msg and "(224, 5)" in msg, msg
    assert "shape mismatch" in msg
    assert states_equal(before, wider.state_dict()), "a refused load must not touch the model"

    # jade_compact without its pointer head: exactly one unexpected tensor, named
    no_pointer = build_model(lstm_classifier(4, hidden=56, bidirectional=True, attn_hidden=64,
                                             attn_heads=4, pointer=False))
    with pytest.raises(ValueError) as e:
        load_weights(no_pointer, path)
    msg = str(e.value)
    assert "unexpected ['heads.pointer.fc.weight', 'heads.pointer.position_prior']" in msg \
        and "missing" not in msg, msg

    # a unidirectional, wider LSTM: the reverse-direction tensors are unexpected (more than 8:
    # the cut-off list says so) and the shared names differ in shape
    other = seeded_model("simple_lstm", seed=0)
    with pytest.raises(ValueError) as e:
        load_weights(other, path)
    msg = str(e.value)
    assert "unexpected" in msg and "encoder.rnn.weight_hh_l0_reverse" in msg, msg
    assert "(10 in all)" in msg  # 8 reverse LSTM tensors + the pointer head (fc and position prior)
    assert "encoder.rnn.weight_hh_l0: file (224, 56) vs model (512, 128)" in msg, msg

    direction = seeded_model("direction_lstm", seed=0, n_features=4)
    with pytest.raises(ValueError) as e:
        load_weights(direction, path)
    msg = str(e.value)
    assert "missing" in msg and "heads.direction" in msg, msg

    # the same architecture loads, bitwise
    same = seeded_model("jade_compact", seed=7, n_features=4)
    load_weights(same, path)
    assert states_equal(same.state_dict(), src.state_dict())


# ------------------------------------------------------------------ pipeline run directory


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    """A small real pipeline run: two symbols, a stride of 10, one epoch, majority baseline."""
    from moola.pipelines.train import RunConfig, run_train

    out = tmp_path_factory.mktemp("pipe")
    cfg = RunConfig.from_dict({
        "name": "ckpt_contents", "out_dir": str(out),
        "data": {"bundled": "sp500_daily", "symbols": ["AAPL", "MSFT"], "stride": 10,
                 "feature_set": "ohlc4"},
        "preset": "jade_compact", "baselines": ["majority"],
        "train": {"epochs": 1, "batch_size": 64, "device": "cpu", "seed": 0, "num_threads": 1},
    })
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GuardWarning)
        outcome = run_train(cfg, show_progress=False)
    return cfg, outcome


def test_pipeline_run_directory_describes_itself(pipeline_run):
    from moola.datasets.tasks import load_features, prepare_data
    from moola.features import build_features
    from moola.pipelines.train import RunConfig

    _, outcome = pipeline_run
    run = outcome.run_dir
    for name in ("config.yaml", "weights.safetensors", "metrics.json", "manifest.json", "history.jsonl"):
        assert (run / name).is_file(), name
    meta = json.loads((run / "manifest.json").read_text())
    for key in ("feature_schema_hash", "data_fingerprint", "moola_version", "git_sha"):
        assert meta.get(key), key
    assert meta["moola_version"] == moola.__version__
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if head.returncode == 0:
        # the commit the code ran from: HEAD, or an ancestor if someone committed since
        assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", meta["git_sha"]), meta["git_sha"]
        sha = meta["git_sha"].removesuffix("+dirty")  # +dirty: the tree had uncommitted changes
        anc = subprocess.run(["git", "merge-base", "--is-ancestor", sha, "HEAD"],
                             cwd=ROOT, capture_output=True)
        assert anc.returncode == 0, meta["git_sha"]
    else:
        assert meta["git_sha"] == "unknown"

    # the recorded hash and fingerprint are those of the data the run trained on
    resolved = RunConfig.from_yaml(run / "config.yaml")
    assert resolved.model is not None and resolved.model.name == "jade_compact"
    store = Path(meta["store"])
    data = prepare_data(resolved.data, store)
    assert meta["feature_schema_hash"] == data.schema_hash
    fm, bars, _ = load_features(resolved.data, store)
    assert build_features(bars, "ohlc4").schema_hash == meta["feature_schema_hash"] == fm.schema_hash
    assert meta["data_fingerprint"] == data_fingerprint(data.x["train"], data.y["train"])
    shifted = data.y["train"].copy()
    shifted[0] ^= 1
    assert meta["data_fingerprint"] != data_fingerprint(data.x["train"], shifted)

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["run"]["n_train"] == len(data.y["train"]) == meta["n_train"]

    # from_checkpoint rebuilds it, and the rebuilt model reproduces the test accuracy
    model = from_checkpoint(run)
    with torch.no_grad():
        proba = torch.softmax(model({"x": torch.from_numpy(data.x["test"])})["logits"], -1).numpy()
    acc = float((proba.argmax(1) == data.y["test"]).mean())
    assert acc == pytest.approx(metrics["model"]["accuracy"], abs=1e-12)
    assert np.isfinite(proba).all()
