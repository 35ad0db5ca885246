"""A run directory that already holds a run is never silently overwritten.

* ``moola train`` into a directory holding a run refuses (exit 2), naming the directory and the
  ways out, before any data is read or an MLflow run is opened; ``--overwrite`` replaces it.
* A replacement is staged beside the old run and swapped in only when complete: a rerun that
  fails or is interrupted part-way leaves the old run byte-for-byte as it was (never new config
  with old weights), and the staging directory is gone.
* The same refusal holds for ``pretrain`` (through the shared helper), ``rank train/compare``,
  ``train --arrays`` and the helper itself, property-style over what the old directory holds.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from _data_helpers import cli
from _train_helpers import ROOT
from moola.pipelines.train import RunConfig, run_train
from moola.training import Callback, RunExistsError, replace_directory, run_directory

DEMO = ROOT / "configs" / "direction_demo.yaml"
TINY = ["train.epochs=2", "data.stride=20", "baselines=[majority]", "train.device=cpu",
        "train.num_threads=1"]

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("ignore::moola.training.guards.GuardWarning")]


def _digest(d: Path) -> dict[str, str]:
    """Every file under ``d`` (relative path -> sha256): a byte-level picture of a run."""
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


def _cfg(out: Path, *extra: str) -> RunConfig:
    return RunConfig.from_yaml(DEMO, [f"out_dir={out}", "name=r", *TINY, *extra])


def _train(cfg: RunConfig, **kw: object) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run_train(cfg, console=Console(quiet=True), show_progress=False, **kw).run_dir  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rundir")
    return _train(_cfg(out))


class _Interrupt(Callback):
    """Raises KeyboardInterrupt at the end of the first epoch: Ctrl-C in the middle of a rerun."""

    def on_epoch_end(self, trainer: object, epoch: int, logs: dict[str, float]) -> None:
        raise KeyboardInterrupt


def test_a_second_run_into_the_same_directory_is_refused_before_any_data_is_read(
        first_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = _digest(first_run)
    import moola.pipelines.train as tr

    def no_data(*a: object, **k: object) -> None:
        raise AssertionError("data was prepared before the run directory was checked")

    monkeypatch.setattr(tr, "prepare_data", no_data)
    with pytest.raises(RunExistsError) as e:
        _train(_cfg(first_run.parent, "train.seed=7"))
    msg = str(e.value)
    assert str(first_run) in msg and "--overwrite" in msg and "complete run" in msg
    assert "--resume" in msg  # the run has checkpoints: resuming is a way out too
    assert _digest(first_run) == before


def test_the_cli_refuses_with_exit_2_naming_the_directory(first_run: Path) -> None:
    before = _digest(first_run)
    res = cli("train", "--config", str(DEMO), f"out_dir={first_run.parent}", "name=r", *TINY)
    assert res.exit_code == 2, res.stdout + res.stderr
    text = " ".join((res.stdout + res.stderr).split())
    assert "already holds a complete run" in text and "--overwrite" in text and "r" in text
    assert "Traceback" not in text
    assert _digest(first_run) == before
    both = cli("train", "--config", str(DEMO), "--resume", "--overwrite", f"out_dir={first_run.parent}",
               "name=r", *TINY)
    assert both.exit_code == 2 and "give one of them" in " ".join((both.stdout + both.stderr).split())


def test_an_interrupted_overwrite_leaves_the_old_run_whole(first_run: Path) -> None:
    before = _digest(first_run)
    cfg = _cfg(first_run.parent, "train.seed=11", "train.epochs=3")
    with pytest.raises(KeyboardInterrupt), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_train(cfg, console=Console(quiet=True), show_progress=False, overwrite=True,
                  callbacks=[_Interrupt()])
    assert _digest(first_run) == before  # old config AND old weights, nothing of the new run
    assert not [p for p in first_run.parent.iterdir() if p.name.startswith(".r.")], "staging left behind"


def test_overwrite_replaces_the_run_with_the_new_one(tmp_path: Path) -> None:
    run = _train(_cfg(tmp_path))
    old = _digest(run)
    again = _train(_cfg(tmp_path, "train.seed=5"), overwrite=True)
    assert again == run
    new = _digest(run)
    assert new["weights.safetensors"] != old["weights.safetensors"]
    assert "seed: 5" in (run / "config.yaml").read_text()
    assert (run / "manifest.json").is_file() and (run / "report.html").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_new_name_is_a_new_run(first_run: Path) -> None:
    other = _train(_cfg(first_run.parent, "name=r2", "train.epochs=1"))
    assert other == first_run.parent / "r2" and (other / "manifest.json").is_file()


# ------------------------------------------------------------------------- the helper


@settings(max_examples=25, deadline=None)
@given(files=st.lists(st.sampled_from(["manifest.json", "config.yaml", "weights.safetensors",
                                       "ckpt/latest.json", "notes.txt"]), min_size=1, unique=True),
       fail=st.booleans())
def test_the_helper_refuses_replaces_or_keeps_whatever_the_directory_holds(
        tmp_path_factory: pytest.TempPathFactory, files: list[str], fail: bool) -> None:
    root = tmp_path_factory.mktemp("helper")
    final = root / "run"
    for f in files:
        (final / f).parent.mkdir(parents=True, exist_ok=True)
        (final / f).write_text(f"old {f}")
    before = _digest(final)
    with pytest.raises(RunExistsError, match="already holds"), run_directory(final):
        raise AssertionError("the block ran")
    assert _digest(final) == before

    class Boom(Exception):
        """A run failing part-way."""

    with contextlib.suppress(Boom), run_directory(final, overwrite=True) as work:
        assert work != final and work.parent == final.parent and not any(work.iterdir())
        (work / "config.yaml").write_text("new")
        assert _digest(final) == before  # readers still see the old run while the new one runs
        if fail:
            raise Boom
        (work / "weights.safetensors").write_text("new weights")
    expected = before if fail else {k: hashlib.sha256(b"new").hexdigest() if k == "config.yaml"
                                    else hashlib.sha256(b"new weights").hexdigest()
                                    for k in ("config.yaml", "weights.safetensors")}
    assert _digest(final) == expected
    assert [p.name for p in root.iterdir()] == ["run"]


def test_the_helper_writes_in_place_for_new_empty_or_resumed_directories(tmp_path: Path) -> None:
    new = tmp_path / "a" / "new"
    with run_directory(new) as work:
        assert work == new and new.is_dir()
    empty = tmp_path / "empty"
    empty.mkdir()
    with run_directory(empty) as work:
        assert work == empty
    (empty / "ckpt").mkdir()
    with run_directory(empty, resume=True) as work:
        assert work == empty
    with pytest.raises(ValueError, match="exclude each other"), run_directory(empty, resume=True,
                                                                              overwrite=True):
        raise AssertionError("the block ran")
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(RunExistsError, match="not a directory"), run_directory(f):
        raise AssertionError("the block ran")


def test_leftovers_of_a_killed_replacement_are_cleared(tmp_path: Path) -> None:
    """A staging directory whose process is gone (SIGKILL) is removed by the next run; one of a
    live process is left alone."""
    final = tmp_path / "run"
    final.mkdir()
    (final / "manifest.json").write_text("{}")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    stale = tmp_path / f".run.staging-{dead}-deadbeef"
    live = tmp_path / f".run.staging-{os.getpid()}-cafef00d"
    stale.mkdir()
    live.mkdir()
    with run_directory(final, overwrite=True) as work:
        (work / "manifest.json").write_text('{"new": 1}')
    assert not stale.exists() and live.exists()
    assert (final / "manifest.json").read_text() == '{"new": 1}'


def test_replace_directory_puts_the_old_one_back_when_the_swap_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    (dst / "old").write_text("old")
    real = Path.rename

    def flaky(self: Path, target: str | os.PathLike[str]) -> Path:
        if self == src:
            raise OSError("simulated failure of the second rename")
        return real(self, target)

    monkeypatch.setattr(Path, "rename", flaky)
    with pytest.raises(OSError, match="simulated"):
        replace_directory(src, dst)
    assert (dst / "old").read_text() == "old" and src.is_dir()


# --------------------------------------------------------------- the other run commands


def test_train_arrays_refuses_before_fitting_and_overwrites_on_request(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 16, 2)).astype(np.float32)
    y = (x[:, -1, 0] > 0).astype(np.int64)
    npz = tmp_path / "a.npz"
    np.savez(npz, X=x, y=y)
    out = tmp_path / "runs" / "a"
    args = ("train", "--arrays", str(npz), "--out", str(out), "min_steps=20", "n_seeds=1")
    assert cli(*args).exit_code == 0
    before = _digest(out)
    res = cli(*args)
    assert res.exit_code == 2 and "already holds" in " ".join((res.stdout + res.stderr).split())
    assert _digest(out) == before
    assert cli(*args, "--overwrite").exit_code == 0
    assert (out / "manifest.json").is_file()


def test_rank_train_refuses_an_existing_run(tmp_path: Path) -> None:
    from moola.pipelines.rank import RankConfig, run_rank_train

    run = tmp_path / "runs" / "rk"
    run.mkdir(parents=True)
    (run / "manifest.json").write_text("{}")
    cfg = RankConfig.from_yaml(ROOT / "configs" / "rank_demo.yaml", [f"out_dir={tmp_path / 'runs'}",
                                                                     "name=rk"])
    with pytest.raises(RunExistsError, match="rk"):
        run_rank_train(cfg, console=Console(quiet=True), show_progress=False)
    assert (run / "manifest.json").read_text() == "{}"


@pytest.mark.parametrize("command", ["oof", "pretrain", "rank compare"])
def test_oof_pretrain_and_rank_compare_refuse_an_existing_run(tmp_path: Path, command: str) -> None:
    """Each refuses through the CLI with exit 2 before reading any data; the old file is kept."""
    config = {"oof": "oof_demo.yaml", "pretrain": "pretrain_demo.yaml", "rank compare": "rank_demo.yaml"}
    name = {"oof": "oof_demo", "pretrain": "pretrain_demo", "rank compare": "rk"}[command]
    run = tmp_path / name
    run.mkdir()
    (run / "config.yaml").write_text("old: true\n")
    extra = ["arms=[scratch]"] if command == "oof" else []  # no pretrained encoder needed
    res = cli(*command.split(), "--config", str(ROOT / "configs" / config[command]),
              f"out_dir={tmp_path}", f"name={name}", *extra)
    text = " ".join((res.stdout + res.stderr).split())
    assert res.exit_code == 2 and "already holds an unfinished run or other files" in text, text
    assert "--overwrite" in text and "Traceback" not in text
    assert (run / "config.yaml").read_text() == "old: true\n"
