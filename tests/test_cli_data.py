"""The ``moola`` CLI: every --help works, and ingest -> validate on the bundled S&P subset prints
and writes the documented counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.main import get_command

from _data_helpers import BTC_CSV, SP500_SUBSET, cli, sp500_symbol, write_yahoo
from moola import __version__
from moola.cli import app
from moola.data import Reason
from moola.data._validate import ALLOWED, DEFAULT_POLICY


def _command_paths() -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = [()]

    def walk(cmd, prefix: tuple[str, ...]) -> None:
        for name, sub in sorted(getattr(cmd, "commands", {}).items()):
            out.append((*prefix, name))
            walk(sub, (*prefix, name))

    walk(get_command(app), ())
    return out


COMMANDS = _command_paths()


def test_data_commands_are_registered() -> None:
    for path in [("data",), ("data", "ingest"), ("data", "validate"), ("data", "policies")]:
        assert path in COMMANDS


@pytest.mark.parametrize("path", COMMANDS, ids=[" ".join(p) or "moola" for p in COMMANDS])
def test_help_of_every_command(path: tuple[str, ...]) -> None:
    res = cli(*path, "--help")
    assert res.exit_code == 0, res.output
    assert "Usage:" in res.stdout
    assert res.stderr == ""


def test_bare_moola_shows_help_and_version() -> None:
    res = cli()
    assert "Usage:" in res.output
    assert res.exit_code in (0, 2)  # no_args_is_help
    res = cli("--version")
    assert res.exit_code == 0 and __version__ in res.stdout


def test_policies_lists_every_reason_with_its_default() -> None:
    res = cli("data", "policies")
    assert res.exit_code == 0
    for r in Reason:
        assert str(r) in res.stdout
    lines = {ln.split("│")[1].strip(): ln for ln in res.stdout.splitlines() if ln.count("│") >= 4}
    for r, allowed in ALLOWED.items():
        row = [c.strip() for c in lines[str(r)].split("│")[1:-1]]
        assert row[1] == str(DEFAULT_POLICY[r])
        assert row[2] == "|".join(allowed)


def test_ingest_then_validate_subset(tmp_path: Path) -> None:
    store = tmp_path / "store"
    res = cli("data", "ingest", SP500_SUBSET, "--store", store)
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert "read 1 file(s) [yahoo]" in out
    assert "1d: 37107 rows in, 36567 valid" in out
    assert "30 partition(s) added, 0 updated, 0 unchanged; 36567 new rows, 0 replaced" in out

    report = tmp_path / "reports" / "v.json"
    res = cli("data", "validate", "--store", store, "--json", report)
    assert res.exit_code == 0, res.output
    assert "all-null rows: 538" in res.stdout
    assert "duplicate keys: 2 (1 conflicting)" in res.stdout
    assert f"report: {report}" in res.stdout
    data = json.loads(report.read_text())
    assert list(data) == ["1d"]
    d = data["1d"]
    assert d["totals"]["all_null"] == 538
    assert d["totals"]["duplicate_identical"] == 1
    assert d["totals"]["duplicate_conflicting"] == 1
    assert "gap" not in d["totals"]
    assert d["rows_out"] == 36_567 and d["rows_in"] == 37_107
    assert d["per_symbol"]["BHF"]["all_null"] == 531
    assert d["per_symbol"]["COH"]["duplicate_conflicting"] == 1
    assert set(d["reasons"]) == {str(r) for r in Reason}
    assert sum(f["count"] for f in d["findings"] if f["reason"] == "all_null") == 538

    # default report location, and --details prints the per-symbol rows
    res = cli("data", "validate", "--store", store, "--details")
    assert res.exit_code == 0
    assert (store / "validation.json").is_file()
    assert "BHF" in res.stdout and "LVLT" in res.stdout


def test_validate_store_with_two_timeframes(tmp_path: Path) -> None:
    store = tmp_path / "store"
    assert cli("data", "ingest", BTC_CSV, "--store", store).exit_code == 0
    d = tmp_path / "stocks"
    for s in ("AAPL", "KO"):
        write_yahoo(d / f"{s}_data.csv", sp500_symbol(s, 40))
    res = cli("data", "ingest", d, "--store", store)
    assert res.exit_code == 0, res.output
    assert "read 2 file(s) [yahoo]" in res.stdout
    res = cli("data", "validate", "--store", store, "--json", tmp_path / "v.json")
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "v.json").read_text())
    assert sorted(data) == ["1d", "1m"]
    assert data["1m"]["rows_out"] == 30_240
    assert data["1d"]["rows_out"] == 80
    assert res.stdout.count("all-null rows: 0; duplicate keys: 0 (0 conflicting)") == 2


def test_ingest_with_policy_and_timeframe_options(tmp_path: Path) -> None:
    store = tmp_path / "store"
    res = cli("data", "ingest", SP500_SUBSET, "--store", store, "--timeframe", "1d",
              "--policy", "duplicate_conflicting=drop", "--policy", "ohlc_inconsistent=drop")
    assert res.exit_code == 0, res.output
    assert "36566 valid" in res.stdout  # the conflicting key's both rows dropped
    res = cli("data", "validate", "--store", store, "--policy", "duplicate_conflicting=drop")
    assert res.exit_code == 0
    assert "duplicate keys: 2 (1 conflicting)" in res.stdout


def test_data_and_features_commands_do_not_load_torch(tmp_path: Path) -> None:
    """``moola data ingest`` and ``moola features build`` never import torch: it would add about
    300 MB and seconds to commands that only read bars (a fresh interpreter, as a user runs them)."""
    import subprocess
    import sys

    store, out = tmp_path / "store", tmp_path / "alpha158.parquet"
    script = (
        "import sys\n"
        "from moola.cli import app\n"
        "for argv in (['data', 'ingest', sys.argv[1], '--store', sys.argv[2]],\n"
        "             ['features', 'build', '--set', 'alpha158', '--store', sys.argv[2],\n"
        "              '--out', sys.argv[3], '--symbols', 'AAPL,BHF']):\n"
        "    try:\n"
        "        app(argv, standalone_mode=False)\n"
        "    except SystemExit as e:\n"
        "        assert not e.code, e.code\n"
        "print('torch loaded' if 'torch' in sys.modules else 'no torch')\n"
    )
    res = subprocess.run([sys.executable, "-c", script, str(SP500_SUBSET), str(store), str(out)],
                         capture_output=True, text=True, check=True)
    assert out.is_file(), res.stdout + res.stderr
    assert res.stdout.strip().splitlines()[-1] == "no torch", res.stdout
