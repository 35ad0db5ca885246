"""Suite-wide settings.

* MLflow tracking is off unless a test turns it on (tests/test_tracking.py does, against a store
  in its tmp dir), so ordinary tests neither write ./mlflow.db nor pay for it.
* Runs in this process set torch's thread count (``train.num_threads=1``); it is put back
  after each module so one module's runs do not slow the next.
* ``one_torch_thread``: one intra-op thread for a test (deterministic, and on a shared 2-core
  machine far faster), restored afterwards; modules opt in with ``pytest.mark.usefixtures``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

os.environ.setdefault("MOOLA_TRACKING", "off")


@pytest.fixture(scope="module", autouse=True)
def _restore_torch_threads() -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    """A fresh sqlite MLflow store (tracking and registry) in tmp_path; the cwd is an empty
    directory that must stay empty (nothing may fall back to ./mlruns or ./mlflow.db)."""
    from mlflow.tracking import MlflowClient

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(cwd)
    yield MlflowClient()
    assert not list(cwd.iterdir()), "MLflow wrote into the working directory"
