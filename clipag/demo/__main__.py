"""``python -m clipag.demo [--out DIR] [--quick]``: run the PAG demo and print its table."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from .pipeline import QUICK, DemoConfig, run_demo
from .report import format_table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clipag.demo", description=__doc__)
    parser.add_argument("--out", default="runs/pag_demo", help="output folder (default: runs/pag_demo)")
    parser.add_argument("--quick", action="store_true", help="the reduced version the test suite runs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    cfg = replace(QUICK if args.quick else DemoConfig(), seed=args.seed)
    results = run_demo(args.out, cfg, log=lambda message: print(message, file=sys.stderr))
    print(format_table(results))
    print(f"\nresults: {args.out}/results.json   grid: {args.out}/grid.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
