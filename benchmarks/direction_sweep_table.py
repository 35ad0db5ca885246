"""The direction comparison of a finished sweep as markdown, for BENCHMARKS.md.

Usage: python benchmarks/direction_sweep_table.py SWEEP_DIR [--write]
(e.g. runs/sweeps/direction_bybit after `moola sweep configs/sweep_direction_bybit.yaml`).
Prints the verdict line and one row per member: accuracy, balanced accuracy, AUC, ECE before and
after temperature, the best baseline and its accuracy, the 95% CI of the difference, net Sharpe
after costs beside buy-and-hold, and the audit. ``--write`` also (re)writes the sweep's
comparison.html / .csv / .md from the runs' metrics.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from moola.evaluation import comparison_markdown, sweep_members, write_direction_comparison


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep_dir", type=Path, help="a sweep directory (holds runs.yaml and runs/)")
    ap.add_argument("--write", action="store_true", help="also rewrite comparison.html/.csv/.md")
    args = ap.parse_args(argv)
    if not (args.sweep_dir / "runs").is_dir():
        print(f"{args.sweep_dir}: no runs/ folder; not a sweep directory (runs/sweeps/NAME)",
              file=sys.stderr)
        return 2
    if not sweep_members(args.sweep_dir):
        print(f"{args.sweep_dir}: no finished run (no runs/*/metrics.json)", file=sys.stderr)
        return 1
    print(comparison_markdown(args.sweep_dir), end="")
    if args.write:
        path = write_direction_comparison(args.sweep_dir)
        print(f"\nwrote {path}" if path else "\nno member has desk metrics; nothing written",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
