"""Pipelines: the end-to-end jobs the CLI runs, composed from the library layers."""
