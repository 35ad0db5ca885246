"""Ahead-of-time builds of the feature sets' Numba kernels, so a build does not pay for the JIT.

Loading a kernel through Numba costs every process ~0.3 s of import, ~0.45 s on the first call
of its cached machine code and ~170 MB of memory: a quarter of ``moola features build --set
alpha158`` on the full panel. ``compile_kernels`` (``moola features compile``, run by ``make
install``) turns each kernel module into an extension module (``numba.pycc``) that loads in a
millisecond and imports neither Numba nor LLVM. The artefact's name carries a hash of the kernel's
source file, the CPU's instruction-set flags and NumPy's version, so an edited kernel, another
machine or another NumPy never loads a stale build: it falls back to the JIT of the same source.
tests/test_features_aot.py holds the two equal bit for bit.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import sys
import sysconfig
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from moola.features._registry import FeatureSet


def _source(module: str) -> Path:
    """The kernel module's file, found without importing it (importing it imports Numba)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"kernel module {module!r} has no source file")
    return Path(spec.origin)


@cache
def _cpu() -> tuple[str, str]:
    """(key, Numba target CPU): the host's own instruction set where its flags can be read
    (Linux), else generic code for the architecture, which any machine of it runs."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            flags = next(line for line in f if line.startswith(("flags", "Features")))
        return hashlib.sha256(flags.encode()).hexdigest()[:12], "host"
    except (OSError, StopIteration):
        return "generic", ""


def artefact_name(module: str) -> str:
    """Extension module name: the kernel's name plus a hash of what its machine code depends on
    (the kernel's source, how this module builds it, the CPU, NumPy)."""
    key = hashlib.sha256(_source(module).read_bytes() + Path(__file__).read_bytes())
    key.update(f"{_cpu()[0]} numpy {np.__version__}".encode())
    return f"{_stem(module)}_aot_{key.hexdigest()[:16]}"


def _stem(module: str) -> str:
    """A kernel module's own name, the prefix of every build of it."""
    return module.rsplit(".", 1)[1]


def artefact_path(module: str, directory: Path | None = None) -> Path:
    """Where the build of ``module`` lives: beside its source in ``__pycache__`` (as Numba's own
    cache and .pyc files) unless ``directory`` is given."""
    folder = directory if directory is not None else _source(module).parent / "__pycache__"
    return folder / (artefact_name(module) + sysconfig.get_config_var("EXT_SUFFIX"))


def load(module: str, directory: Path | None = None) -> ModuleType | None:
    """The ahead-of-time build of ``module`` for this source, CPU and NumPy, or None if there is
    none; a build that exists but does not load raises, naming its file."""
    path = artefact_path(module, directory)
    if not path.exists():
        return None
    name = path.name.split(".", 1)[0]
    loader = importlib.machinery.ExtensionFileLoader(name, str(path))
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    assert spec is not None
    try:
        ext = importlib.util.module_from_spec(spec)
        loader.exec_module(ext)
    except ImportError as e:
        raise ImportError(f"{path}: the compiled kernel of {module} does not load ({e}); delete it "
                          f"and run `moola features compile`") from e
    return ext


@cache
def kernel_function(module: str, name: str) -> Callable[..., Any]:
    """``module.name`` from its ahead-of-time build when there is one, else through Numba's JIT."""
    ext = load(module)
    if ext is None:
        return getattr(importlib.import_module(module), name)
    if not hasattr(ext, name):
        raise ImportError(f"{ext.__file__} has no {name!r}; delete it and run `moola features compile`")
    return getattr(ext, name)


def compile_kernel(module: str, directory: Path | None = None) -> Path:
    """Build ``module``'s exports into an extension module (Numba's pycc and the C compiler),
    written atomically so concurrent builds and readers never see half a file."""
    with warnings.catch_warnings():  # pycc is "pending deprecation" with no replacement yet
        warnings.simplefilter("ignore")
        from numba.pycc import CC

    kernels = importlib.import_module(module)
    path = artefact_path(module, directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    cc = CC(path.name.split(".", 1)[0])
    cc.target_cpu = _cpu()[1]
    cc.verbose = False
    # each export is a plain entry calling the jitted kernel, which keeps its own options
    # (NumPy's error model: x / 0 is inf); pycc would compile a kernel's own body with defaults
    for name, (signature, entry) in kernels.AOT_EXPORTS.items():
        cc.export(name, signature)(entry)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp, _releasing_the_gil():
        cc.output_dir = tmp
        cc.output_file = path.name
        cc.compile()
        os.replace(Path(tmp) / path.name, path)
    for stale in path.parent.glob(f"{_stem(module)}_aot_*"):  # older keys' builds
        if stale != path:
            stale.unlink(missing_ok=True)
    return path


@contextmanager
def _releasing_the_gil() -> Iterator[None]:
    """pycc has no ``nogil`` option: its exports would hold the GIL, and a build's worker
    threads would run the kernel one at a time (two threads: 1.0x, against the JIT's 1.8x).
    Its compiler takes a fresh ``Flags()`` per export; for this build that one releases the
    GIL around the call, as ``@njit(nogil=True)`` does. tests/test_features_aot.py checks it."""
    from numba.core.compiler import Flags
    from numba.pycc import compiler

    def releasing() -> Flags:
        flags = Flags()
        flags.release_gil = True
        return flags

    compiler.Flags = releasing
    try:
        yield
    finally:
        compiler.Flags = Flags


def kernel_modules(fs: FeatureSet | None = None) -> list[str]:
    """The compiled kernel modules ``fs`` runs (its module's ``KERNEL_MODULES``), or every
    registered set's."""
    from moola.features._registry import list_feature_sets

    found: dict[str, None] = {}
    for one in [fs] if fs is not None else list_feature_sets():
        found.update(dict.fromkeys(getattr(sys.modules[one.make.__module__], "KERNEL_MODULES", ())))
    return list(found)


def compiled_kernels(fs: FeatureSet | None = None) -> dict[str, Path | None]:
    """Each kernel module ``fs`` (default: every set) runs -> its up-to-date ahead-of-time
    build, or None where it runs through the JIT (``moola features compile`` makes one)."""
    return {m: (p if (p := artefact_path(m)).exists() else None) for m in kernel_modules(fs)}


@dataclass(frozen=True)
class CompiledKernel:
    """One kernel module's ahead-of-time build: where it is and whether this call made it."""

    module: str
    path: Path
    built: bool


def compile_kernels(directory: Path | None = None) -> list[CompiledKernel]:
    """Build every kernel module the feature sets run; an existing build of the same key is kept."""
    out = []
    for module in kernel_modules():
        path = artefact_path(module, directory)
        built = not path.exists()
        out.append(CompiledKernel(module, compile_kernel(module, directory) if built else path, built))
    return out
