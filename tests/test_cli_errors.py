"""The CLI's error contract (docs/errors.md): every foreseeable failure (bad input, OS errors such
as a read-only directory, a full disk or a name too long, a corrupt checkpoint, an unreachable
database) is one red ``error:`` line and exit 2; a password in a URL is never printed; only a bug
shows a traceback, then a line asking to report it with the moola version, and exit 3."""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner, Result

import moola
from moola.cli import app
from moola.cli._app import _friendly_errors

SECRET = "s3cr3t-pw"
PG_DOWN = f"postgresql://user:{SECRET}@127.0.0.1:1/db"  # port 1: refused at once, no server there


def cli(*args: str | Path) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def _raising(exc: BaseException) -> Result:
    """Run a one-command app, wrapped like every moola command, whose body raises ``exc``."""
    probe = typer.Typer()

    @probe.command()
    @_friendly_errors
    def boom() -> None:
        raise exc

    @probe.command()
    def other() -> None:  # two commands, so `boom` is addressed by name
        pass

    return CliRunner().invoke(probe, ["boom"], catch_exceptions=False)


def _one_error_line(res: Result) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output, res.output
    assert lines and lines[0].startswith("error: "), res.stderr
    return " ".join(lines)  # one message, soft-wrapped by rich at most


@pytest.mark.parametrize(("exc", "expect"), [
    (PermissionError(errno.EACCES, "Permission denied", "/runs/ro/ckpt"),
     r"permission denied: /runs/ro/ckpt"),
    (OSError(errno.EROFS, "Read-only file system", "/mnt/store/1d"), r"read-only file system: /mnt/store/1d"),
    (OSError(errno.ENOSPC, "No space left on device", "/runs/a/weights.safetensors"),
     r"no space left on device .*/runs/a/weights\.safetensors"),
    (OSError(errno.ENAMETOOLONG, "File name too long", "/runs/" + "x" * 300),
     r"file name too long: /runs/x+ \(306 characters, 300 characters in its longest part\)"),
    (OSError(errno.EIO, "Input/output error", "/runs/a"), r"input/output error: /runs/a"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "cfg.yaml"),
     r"no such file or directory: cfg\.yaml"),
    (MemoryError(), r"out of memory"),
])
def test_os_errors_are_one_line_and_exit_2(exc: BaseException, expect: str) -> None:
    import re

    msg = _one_error_line(_raising(exc))
    assert re.search(expect, msg, re.IGNORECASE), msg


def test_an_os_error_wrapped_in_another_error_is_still_named() -> None:
    try:
        raise OSError(errno.ENOSPC, "No space left on device", "/runs/a/history.jsonl")
    except OSError as inner:
        wrapped = RuntimeError("write failed")
        wrapped.__cause__ = inner
    msg = _one_error_line(_raising(wrapped))
    assert "no space left on device" in msg.lower() and "/runs/a/history.jsonl" in msg


def test_a_truncated_checkpoint_is_one_line_naming_the_file(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from moola.training.checkpoint import load_tensors

    path = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(64, 64)}, str(path))
    path.write_bytes(path.read_bytes()[:100])
    try:
        load_tensors(path)
    except Exception as e:  # the loader's own error, as a command would meet it
        exc = e
    msg = _one_error_line(_raising(exc))
    assert f"checkpoint file {path} is truncated or corrupt" in msg


def test_a_bug_shows_the_traceback_then_asks_for_a_report_without_the_password() -> None:
    res = _raising(RuntimeError(f"unexpected state talking to {PG_DOWN}"))
    assert res.exit_code == 3, res.output
    assert "Traceback" in res.stderr and "RuntimeError" in res.stderr
    assert SECRET not in res.output
    assert "postgresql://user:***@127.0.0.1:1/db" in res.stderr
    last = [ln for ln in res.stderr.splitlines() if ln.strip()][-1]
    assert "bug" in last and "report" in last and moola.__version__ in last


@pytest.mark.parametrize("exc", [ValueError(f"bad storage {PG_DOWN}"), KeyError(f"no key in {PG_DOWN}"),
                                 OSError(errno.EACCES, "Permission denied", f"{PG_DOWN}")])
def test_no_message_prints_a_password(exc: BaseException) -> None:
    res = _raising(exc)
    assert res.exit_code == 2
    assert SECRET not in res.output and "user:***@127.0.0.1" in res.stderr


def test_exits_and_usage_errors_pass_through_untouched() -> None:
    assert _raising(typer.Exit(1)).exit_code == 1
    res = _raising(typer.BadParameter("give --x"))
    assert res.exit_code == 2 and "give --x" in res.output and "Traceback" not in res.output


# ------------------------------------------------------------------------------ real commands


def test_a_file_name_too_long_is_one_line(tmp_path: Path) -> None:
    msg = _one_error_line(cli("demo", "--out", tmp_path / ("d" * 300)))
    assert "file name too long" in msg


def test_a_read_only_directory_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import moola.demo

    def denied(out: Path, **_: object) -> None:  # as root, chmod cannot make a directory read-only
        raise PermissionError(errno.EACCES, "Permission denied", str(out / "store"))

    monkeypatch.setattr(moola.demo, "run_demo", denied)
    msg = _one_error_line(cli("demo", "--out", tmp_path / "ro"))
    assert f"permission denied: {tmp_path / 'ro' / 'store'}" in msg


def test_an_unreachable_runtime_database_is_one_line_without_the_password(
        monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("psycopg2")
    import moola.runtime._ledger as ledger
    from moola.runtime import RetryConfig

    monkeypatch.setattr(ledger, "DEFAULT_RETRY", RetryConfig(timeout_s=2.0, max_retries=0))  # no waiting
    res = cli("runtime", "status", "--db", PG_DOWN)
    msg = _one_error_line(res)
    assert SECRET not in res.output
    assert "could not read the ledger" in msg and "127.0.0.1" in msg and "Connection refused" in msg


def test_an_unreachable_tune_storage_is_one_line_without_the_password(tmp_path: Path) -> None:
    pytest.importorskip("psycopg2")
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"params": {"train.optimizer.lr": {"float": [1e-3, 1e-2]}}}))
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"name": "t", "data": {"bundled": "sp500_daily", "window": 32}}))
    res = cli("tune", cfg, "--space", space, "--trials", "1", "--storage", PG_DOWN, "--out", tmp_path / "o")
    msg = _one_error_line(res)
    assert SECRET not in res.output
    assert "database" in msg.lower() and "127.0.0.1" in msg


def _commands(group: typer.Typer, prefix: str = "moola") -> list[tuple[str, Callable[..., object]]]:
    out = []
    if group.registered_callback is not None and group.registered_callback.callback is not None \
            and prefix != "moola":
        out.append((prefix, group.registered_callback.callback))
    for c in group.registered_commands:
        assert c.callback is not None
        out.append((f"{prefix} {c.name or c.callback.__name__}", c.callback))
    for g in group.registered_groups:
        assert g.typer_instance is not None
        out += _commands(g.typer_instance, f"{prefix} {g.name}")
    return out


def test_every_command_goes_through_the_error_handler() -> None:
    cmds = _commands(app)
    assert len(cmds) > 25 and any(name == "moola runtime status" for name, _ in cmds)
    bare = [name for name, fn in cmds if not getattr(fn, "__moola_friendly_errors__", False)]
    assert not bare, f"commands without _friendly_errors: {bare}"


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
