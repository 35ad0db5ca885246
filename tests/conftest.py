"""Suite-wide settings: MLflow tracking is off unless a test turns it on (tests/test_tracking.py
does, against a store in its tmp dir), so ordinary tests neither write ./mlflow.db nor pay for it."""

import os

os.environ.setdefault("MOOLA_TRACKING", "off")
