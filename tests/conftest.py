"""Suite-wide settings.

* MLflow tracking is off unless a test turns it on (tests/test_tracking.py does, against a store
  in its tmp dir), so ordinary tests neither write ./mlflow.db nor pay for it.
* Runs in this process set torch's thread count (``train.num_threads=1``); it is put back
  after each module so one module's runs do not slow the next.
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
