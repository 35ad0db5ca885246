"""The ahead-of-time build of the alpha158 kernel (``moola features compile``) against its JIT.

The build must give the JIT's values bit for bit on real and broken bars, load without importing
Numba or LLVM (the point of it), be keyed by the kernel's source, the CPU and NumPy so a stale
build is never loaded, and name its file when a build is corrupt.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

import moola.features
from _real_data import load_crypto, load_daily
from moola.cli import app
from moola.features import _aot, adjusted_bars

MODULE = "moola.features._alpha158_numba"
WINDOWS = np.array([5, 10, 20, 30, 60], dtype=np.int64)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One build for the module (~4-8 s: Numba's compile plus the C compiler's link); a build
    of an older key beside it is removed."""
    directory = tmp_path_factory.mktemp("aot")
    old = directory / "_alpha158_numba_aot_0123456789abcdef.so"
    old.write_bytes(b"an older build")
    [kernel] = _aot.compile_kernels(directory)
    assert kernel.built and kernel.module == MODULE and kernel.path.exists()
    assert not old.exists() and [p.name for p in directory.iterdir()] == [kernel.path.name]
    return directory


def _ext(directory: Path) -> ModuleType:
    ext = _aot.load(MODULE, directory)
    assert ext is not None
    return ext


def _columns(df: pl.DataFrame) -> list[np.ndarray]:
    bars = adjusted_bars(df)
    return [np.array(bars.get_column(c).to_numpy(), dtype=np.float64)
            for c in ("open", "high", "low", "close", "volume")]


def _broken(df: pl.DataFrame) -> pl.DataFrame:
    """Missing closes and opens, zero opens (x / 0 must give inf -> NaN, not an exception), zero
    volume and a flat stretch."""
    rng = np.random.default_rng(3)
    holes = rng.choice(df.height, size=40, replace=False)
    idx = pl.int_range(pl.len())
    return df.with_columns(
        pl.when(idx.is_in(holes[:10])).then(None).otherwise(pl.col("close")).alias("close"),
        pl.when(idx.is_in(holes[10:20])).then(0.0)
        .when(idx.is_in(holes[20:25])).then(None).otherwise(pl.col("open")).alias("open"),
        pl.when(idx.is_in(holes[25:40]) | ((idx > 100) & (idx < 130)))
        .then(0.0).otherwise(pl.col("volume")).alias("volume"),
        pl.when((idx > 200) & (idx < 280)).then(42.0).otherwise(pl.col("high")).alias("high"),
        pl.when((idx > 200) & (idx < 280)).then(42.0).otherwise(pl.col("low")).alias("low"),
    )


@pytest.mark.parametrize("bars", ["daily", "crypto", "broken"])
def test_the_build_equals_the_jit_bit_for_bit(built: Path, bars: str) -> None:
    from moola.features._alpha158_numba import alpha158_bars

    df = {"daily": lambda: load_daily(("AAPL", "BHF")).filter(pl.col("symbol") == "BHF"),
          "crypto": lambda: load_crypto(5000),
          "broken": lambda: _broken(load_daily(("AAPL",)))}[bars]()
    cols = _columns(df)
    jit = np.empty((df.height, 158), np.float32)
    aot = np.empty((df.height, 158), np.float32)
    alpha158_bars(*cols, WINDOWS, jit)
    _ext(built).alpha158_bars(*cols, WINDOWS, aot)
    np.testing.assert_array_equal(aot, jit)
    assert np.isfinite(aot).any(axis=0).all() and not np.isinf(aot).any()
    with pytest.raises(ValueError, match="out must be"):
        _ext(built).alpha158_bars(*cols, WINDOWS, np.empty((df.height, 157), np.float32))


def test_the_build_loads_without_numba(built: Path) -> None:
    """What the build is for: a process that runs it never imports Numba or LLVM."""
    code = (
        "import sys; from pathlib import Path; import numpy as np\n"
        "from moola.features import _aot\n"
        f"ext = _aot.load({MODULE!r}, Path({str(built)!r}))\n"
        "x = np.linspace(10, 20, 300); out = np.empty((300, 158), np.float32)\n"
        "ext.alpha158_bars(x, x * 1.01, x * 0.99, x, x * 1e4, np.array([5, 10, 20, 30, 60]), out)\n"
        "assert np.isfinite(out[100]).sum() > 150, out[100]\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('numba', 'llvmlite')))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_the_build_releases_the_gil(built: Path) -> None:
    """A build's worker threads run the kernel side by side: while a call runs, a Python thread
    keeps ticking. Were the GIL held, its ticks would stop for the whole call, so the longest
    pause between them would be at least one call's duration."""
    df = load_crypto(100_000)
    cols = _columns(df)
    out = np.empty((df.height, 158), np.float32)
    ext = _ext(built)
    ticks: list[float] = []
    stop = threading.Event()

    def tick() -> None:
        while not stop.is_set():
            ticks.append(time.perf_counter())

    calls = []
    ticker = threading.Thread(target=tick)
    ticker.start()
    try:
        for _ in range(3):
            t0 = time.perf_counter()
            ext.alpha158_bars(*cols, WINDOWS, out)
            calls.append(time.perf_counter() - t0)
    finally:
        stop.set()
        ticker.join()
    longest_pause = float(np.diff(ticks).max())
    assert longest_pause < 0.5 * min(calls), (
        f"the other thread stood still for {longest_pause:.3f} s during calls of {min(calls):.3f} s")


def test_a_stale_build_is_never_loaded(built: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """An edited kernel, another CPU or another NumPy gives another name: the build is not found
    and the set runs through the JIT of the new source."""
    assert _aot.load(MODULE, built) is not None
    name = _aot.artefact_name(MODULE)
    edited = tmp_path / "_alpha158_numba.py"
    edited.write_bytes(_aot._source(MODULE).read_bytes() + b"\n# edited\n")
    with monkeypatch.context() as m:
        m.setattr(_aot, "_source", lambda module: edited)
        assert _aot.artefact_name(MODULE) != name
        assert _aot.load(MODULE, built) is None
    with monkeypatch.context() as m:
        m.setattr(_aot, "_cpu", lambda: ("another-cpu", "host"))
        assert _aot.artefact_name(MODULE) != name
    with monkeypatch.context() as m:
        m.setattr(np, "__version__", "0.0.1")
        assert _aot.artefact_name(MODULE) != name
    assert _aot.artefact_name(MODULE) == name


def test_a_corrupt_build_is_named(tmp_path: Path) -> None:
    path = _aot.artefact_path(MODULE, tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not a shared object")
    with pytest.raises(ImportError, match=rf"{path.name}.*moola features compile"):
        _aot.load(MODULE, tmp_path)


def test_compile_keeps_an_up_to_date_build(built: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    [again] = _aot.compile_kernels(built)
    assert not again.built
    real = _aot.compile_kernels
    monkeypatch.setattr(moola.features, "compile_kernels", lambda: real(built))
    res = CliRunner().invoke(app, ["features", "compile"])
    assert res.exit_code == 0, res.output
    assert f"{MODULE}: up to date" in res.output.replace("\n", "")
