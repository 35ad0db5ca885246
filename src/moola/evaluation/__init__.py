"""Evaluation: metrics, baselines, plots and reports."""
