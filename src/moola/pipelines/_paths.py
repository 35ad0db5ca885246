"""Where the repository's bundled data and example configs are (the package is installed
editable from the repository)."""

from __future__ import annotations

from pathlib import Path


def bundled_data_dir() -> Path:
    """The repo's ``data/bundled`` (the package is installed editable from the repo)."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        cand = parent / "data" / "bundled"
        if (cand / "sp500_subset.parquet").is_file():
            return cand
    raise FileNotFoundError(
        "bundled data not found (data/bundled/sp500_subset.parquet); pass --data DIR"
    )


def configs_dir() -> Path:
    """The repo's ``configs/`` beside ``data/bundled``."""
    return bundled_data_dir().parent.parent / "configs"
