"""Pipelines: the end-to-end jobs the CLI runs, composed from the library layers."""

from moola.pipelines._progress import frame_table, progress_bar

__all__ = ["frame_table", "progress_bar"]
