"""``python -m moola.cli``: the same as the ``moola`` script (used where the script is not on PATH)."""

from moola.cli import app

app()
