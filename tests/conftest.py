"""Suite-wide settings.

* MLflow tracking is off unless a test turns it on (tests/test_tracking.py does, against a store
  in its tmp dir), so ordinary tests neither write ./mlflow.db nor pay for it.
* Runs in this process set torch's thread count (``train.num_threads=1``); it is put back
  after each module so one module's runs do not slow the next.
* ``mlflow_store``: a fresh SQLite MLflow store; ``pg_url`` / ``db_url``: a fresh, empty ledger
  database (a PostgreSQL schema on ``MOOLA_TEST_POSTGRES_URL``, which CI sets; skipped when unset).
* ``one_torch_thread``: one intra-op thread for a test (deterministic, and on a shared 2-core
  machine far faster), restored afterwards; modules opt in with ``pytest.mark.usefixtures``.
"""

from __future__ import annotations

import os
import uuid
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


@pytest.fixture(scope="module")
def one_torch_thread_quiet() -> Iterator[None]:
    """A whole module of tiny training sets: one intra-op thread and no GuardWarning (their
    guards fire by design), both restored after the module."""
    import warnings

    import torch

    from moola.training import GuardWarning

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GuardWarning)
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


# ------------------------------------------------------------- ledger databases (runtime tests)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL schema of its own on the server of ``MOOLA_TEST_POSTGRES_URL`` (dropped after),
    so every test starts from an empty database and migrates it."""
    base = os.environ.get("MOOLA_TEST_POSTGRES_URL")
    if not base:
        pytest.skip("MOOLA_TEST_POSTGRES_URL is not set (e.g. postgresql://moola:moola@127.0.0.1:5432/moola)")
    import sqlalchemy as sa

    from moola.runtime import ledger_url

    schema = f"ledger_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(ledger_url(base))
    with admin.begin() as c:
        c.execute(sa.text(f"CREATE SCHEMA {schema}"))
    url = sa.engine.make_url(ledger_url(base)).update_query_dict({"options": f"-csearch_path={schema}"})
    yield url.render_as_string(hide_password=False)
    with admin.begin() as c:
        c.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """A fresh, empty ledger database on each backend: a SQLite file, or a PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    url: str = request.getfixturevalue("pg_url")
    return url
