"""moola._io: atomic writes (unique temp per process, fsync then rename, nothing left on failure)
and strict JSON (NaN/inf written as null, each listed under ``_nulls`` with its reason)."""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import moola._io as io_mod
from moola._io import NULLS_KEY, atomic_write, atomic_write_json, atomic_write_text, dumps_json

ROUNDS = 60  # writes per process in the race; bounded so the test always ends


def _payload(tag: str) -> str:
    """~400 KB of JSON per writer: big enough that two unsynchronised writes interleave."""
    return json.dumps({"writer": tag, "data": [tag * 8] * 40_000})


def _strict_loads(text: str) -> object:
    def reject(token: str) -> None:
        raise ValueError(f"non-standard JSON constant {token}")

    return json.loads(text, parse_constant=reject)


def _race_writer(target: str, tag: str, other: str, barrier: object, errors: object) -> None:
    """Write ``target`` ROUNDS times; after each write the file must be one whole payload."""
    valid = {_payload(tag), _payload(other)}
    mine = _payload(tag)
    barrier.wait()  # type: ignore[attr-defined]
    bad = 0
    for _ in range(ROUNDS):
        try:
            atomic_write_text(target, mine)
            if Path(target).read_text() not in valid:
                bad += 1
        except OSError:  # e.g. a temp file another process renamed away
            bad += 1
    errors.put((tag, bad))  # type: ignore[attr-defined]


def test_temp_names_differ_per_process_and_thread(tmp_path: Path) -> None:
    target = tmp_path / "x.json"
    here = io_mod.temp_path(target)
    assert here.parent == target.parent and here.name.startswith(".x.json.") and here.suffix == ".tmp"
    code = f"import pathlib, moola._io as m; print(m.temp_path(pathlib.Path({str(target)!r})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert Path(out.stdout.strip()) != here


def test_two_processes_writing_one_target_never_corrupt_it(tmp_path: Path) -> None:
    target = tmp_path / "shared.json"
    ctx = multiprocessing.get_context("spawn")
    barrier, errors = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_race_writer, args=(str(target), a, b, barrier, errors))
             for a, b in (("a", "b"), ("b", "a"))]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    results = dict(errors.get(timeout=10) for _ in procs)
    assert results == {"a": 0, "b": 0}, f"torn or failed writes per writer: {results}"
    final = _strict_loads(target.read_text())
    assert isinstance(final, dict) and final["writer"] in ("a", "b")
    assert [p.name for p in tmp_path.iterdir()] == ["shared.json"]  # no temp left behind


def test_fsync_happens_before_the_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "m.json"
    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        calls.append("fsync")
        real_fsync(fd)

    def replace(src: str | Path, dst: str | Path) -> None:
        assert Path(src) == io_mod.temp_path(target) and Path(dst) == target
        assert Path(src).read_text() == '{\n  "v": 2\n}'  # complete before it becomes visible
        calls.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(io_mod.os, "fsync", fsync)
    monkeypatch.setattr(io_mod.os, "replace", replace)
    atomic_write_json(target, {"v": 2})
    assert calls == ["fsync", "replace"]
    assert _strict_loads(target.read_text()) == {"v": 2}


@pytest.mark.parametrize("fail", ["writer", "fsync", "rename", "interrupt"])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail: str
) -> None:
    target = tmp_path / "state.json"
    atomic_write_json(target, {"v": 1})

    def half_then_fail(tmp: Path) -> None:
        tmp.write_text('{"v": 2, "trunc')
        raise (KeyboardInterrupt if fail == "interrupt" else OSError)("disk full (simulated)")

    def broken(*_a: object) -> None:
        raise OSError(f"{fail} failed (simulated)")

    if fail in ("fsync", "rename"):
        monkeypatch.setattr(io_mod.os, "fsync" if fail == "fsync" else "replace", broken)
        with pytest.raises(OSError):
            atomic_write_json(target, {"v": 2})
    else:
        with pytest.raises(KeyboardInterrupt if fail == "interrupt" else OSError):
            atomic_write(target, half_then_fail)
    monkeypatch.undo()
    assert _strict_loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


_KILLED_WRITER = textwrap.dedent(
    """
    import sys, time
    from moola._io import atomic_write

    def slow(tmp):
        with open(tmp, "w") as fh:
            fh.write('{"v": 2, "half": "')
            fh.flush()
            print("HALF", flush=True)
            time.sleep(300)

    atomic_write(sys.argv[1], slow)
    """
)


def test_sigkill_mid_write_leaves_the_old_content(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    atomic_write_json(target, {"v": 1})
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(target)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "HALF"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert _strict_loads(target.read_text()) == {"v": 1}
    # only the killed writer's own temp file is left (the store and sweeps clean theirs up)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left[1:] == ["state.json"], left
    assert left[0].startswith(f".state.json.{proc.pid}.") and left[0].endswith(".tmp"), left


def test_nan_and_inf_are_written_as_null_with_a_reason(tmp_path: Path) -> None:
    obj = {"loss": 0.5, "auc": float("nan"), "curve": {"ys": [1.0, math.inf, -math.inf]},
           "f32": np.float32("nan"), "arr": np.array([1.5, np.nan]), "n": np.int64(3)}
    p = atomic_write_json(tmp_path / "metrics.json", obj)
    text = p.read_text()
    assert "NaN" not in text.replace('"NaN"', "") and "Infinity" not in text
    back = _strict_loads(text)
    assert back == {
        "loss": 0.5, "auc": None, "curve": {"ys": [1.0, None, None]}, "f32": None, "arr": [1.5, None],
        "n": 3,
        NULLS_KEY: {"auc": "NaN", "curve.ys[1]": "+inf", "curve.ys[2]": "-inf", "f32": "NaN",
                    "arr[1]": "NaN"},
    }
    # finite data gains no "_nulls"; a non-mapping top level is wrapped so the reasons have a home
    assert _strict_loads(dumps_json({"a": 1.0})) == {"a": 1.0}
    assert _strict_loads(dumps_json([float("nan")])) == {"value": [None], NULLS_KEY: {"[0]": "NaN"}}


# ------------------------------------------------------------------ reading JSON back, redaction


def test_read_json_names_the_file_and_the_position_or_missing_key(tmp_path: Path) -> None:
    from moola._io import JsonFileError, read_json

    p = tmp_path / "latest.json"
    p.write_text('{"step": ')
    with pytest.raises(JsonFileError, match=r"latest\.json: not valid JSON at line 1 column 10"):
        read_json(p)
    p.write_text("")
    with pytest.raises(JsonFileError, match=r"latest\.json: not valid JSON \(the file is empty\)"):
        read_json(p)
    p.write_bytes(b'{"dir": "\xff"}')
    with pytest.raises(JsonFileError, match=r"latest\.json: not valid JSON \(not UTF-8"):
        read_json(p)
    p.write_text('{"dir": "step-00000001"}')
    with pytest.raises(JsonFileError, match=r"latest\.json: missing key 'step'"):
        read_json(p, keys=("step", "dir"))
    p.write_text("[1, 2]")
    with pytest.raises(JsonFileError, match=r"latest\.json: expected a JSON object"):
        read_json(p, keys=("step",))
    p.write_text('{"step": 1, "dir": "x"}')
    assert read_json(p, keys=("step", "dir")) == {"step": 1, "dir": "x"}
    with pytest.raises(FileNotFoundError):
        read_json(tmp_path / "absent.json")


@pytest.mark.parametrize(("text", "shown"), [
    ("postgresql://user:secret@127.0.0.1:1/db", "postgresql://user:***@127.0.0.1:1/db"),
    ("to 'postgresql+psycopg2://u:s%40cret@h/db' failed", "to 'postgresql+psycopg2://u:***@h/db' failed"),
    ("postgresql://user:se@cret@host/db", "postgresql://user:***@host/db"),
    ("redis://:secret@host:6379", "redis://:***@host:6379"),
    ("host=h password=secret user=u", "host=h password=*** user=u"),
    ("sqlite:///runs/optuna.db and https://host:8080/x", "sqlite:///runs/optuna.db and https://host:8080/x"),
])
def test_redact_urls_hides_every_password(text: str, shown: str) -> None:
    from moola._io import redact_urls

    assert redact_urls(text) == shown
    assert "secret" not in redact_urls(text) and "cret" not in redact_urls(text)
