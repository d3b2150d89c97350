"""``python -m clipag.demo [--out DIR] [--quick] [--seed S]``: run the PAG demo and print its table.

The full demo writes to ``runs/pag_demo``, the quick one to ``runs/pag_demo_quick``, so a quick run never
overwrites (or is mistaken for) a full one. Each run folder holds ``vanilla/export`` and ``robust/export``, two
models every clipag command takes as ``--model``.
"""

from __future__ import annotations

import sys
from dataclasses import replace

from ..cli_options import ArgumentParser

FULL_OUT, QUICK_OUT = "runs/pag_demo", "runs/pag_demo_quick"


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m clipag.demo",
                            description="Train a small CLIP and its adversarially finetuned copy on rendered shapes, "
                                        "on the CPU with nothing downloaded; measure both, clean and under attack, "
                                        "and how often an independent judge recognises what each one generates.")
    parser.add_argument("--out", default=None, help=f"output folder (default: {FULL_OUT}, or {QUICK_OUT} with "
                                                    "--quick)")
    parser.add_argument("--quick", action="store_true", help="the reduced version the test suite runs (~3 min alone "
                                                             "on one core, instead of ~13)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from ..extras import MissingExtra, require

    try:  # the demo writes its dataset as webdataset shards and trains on them
        require("train", "python -m clipag.demo", ["webdataset"])
    except MissingExtra as e:
        raise SystemExit(f"python -m clipag.demo: error: {e}") from None
    from ..images import check_output_folder
    from .pipeline import QUICK, DemoConfig, run_demo
    from .report import format_table
    from .shapes import BACKGROUNDS, COLORS, SHAPES

    out = args.out or (QUICK_OUT if args.quick else FULL_OUT)
    try:  # before minutes of training
        check_output_folder(out, "--out")
    except ValueError as e:
        parser.error(str(e))
    cfg = replace(QUICK if args.quick else DemoConfig(), seed=args.seed)
    results = run_demo(out, cfg, log=lambda message: print(message, file=sys.stderr))
    print(format_table(results))
    print(f"\nresults: {out}/results.json   grid: {out}/grid.png")
    print(f"models: {out}/vanilla/export and {out}/robust/export (use either as --model)")
    print(f"prompts they know: a {{{'|'.join(COLORS)}}} {{{'|'.join(SHAPES)}}} on a {{{'|'.join(BACKGROUNDS)}}} "
          "background")
    return 0


if __name__ == "__main__":
    sys.exit(main())
