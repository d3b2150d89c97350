"""``clipag draw``: CLIPDraw from the command line. Only argparse is imported here (``clipag --help`` stays fast)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from clipag import cli_options
from clipag.scale.cli import add_scale_options

__all__ = ["register_draw"]


def cmd_draw(args: argparse.Namespace) -> int:
    import dataclasses

    from clipag.extras import require

    require("clipdraw", "clipag draw")

    from clipag.images import (
        Outputs,
        check_output,
        labelled_grid,
        model_label,
        numbered,
        result_path,
        save_gif,
        save_png,
    )
    from clipag.scale.cli import ScaleRun

    from .drawer import DrawConfig, Drawer, DrawingInterrupted

    cli_options.apply_threads(args)
    output = Path(args.output or cli_options.default_output(args.prompts[:1], ".svg"))
    grid_path = Path(args.grid) if args.grid else numbered(output.with_suffix(".png"), "grid")
    try:
        scale = ScaleRun.from_args(args)
        if not args.prompts and not scale.prompt_file:
            raise ValueError("give a prompt, e.g. \"a watercolor painting of a fox\", or --prompts FILE --out DIR")
        for option, path, suffixes in (("-o/--output", output, (".svg",)), ("--png", args.png, (".png",)),
                                       ("--frames", args.frames, (".gif",)), ("--grid", args.grid, (".png",))):
            check_output(None if scale.prompt_file else path, option, suffixes)
        if any(not p.strip() for p in args.prompts):
            raise ValueError("a prompt is empty: describe the drawing, e.g. \"a watercolor painting of a fox\"")
        knobs = {k: v for k, v in (("strokes", args.strokes), ("size", args.size), ("keep", args.keep),
                                   ("augmentations", args.augmentations)) if v is not None}
        config = dataclasses.replace(DrawConfig(), steps=args.steps, normalize=args.normalize,
                                     negative=args.negative, amp=args.amp, **knobs, **scale.knobs)
        drawers = [(args.model, Drawer(args.model, device=args.device, config=config))]
        if args.compare:
            drawers.append((args.compare, Drawer(args.compare, device=args.device, config=config)))
    except (ValueError, TypeError) as e:
        print(f"clipag draw: error: {e}", file=sys.stderr)
        return 2
    if scale.prompt_file:
        return scale.run(drawers[0][1])
    jobs = [(prompt, args.seed + k) for prompt in args.prompts for k in range(args.count)]
    several = len(jobs) > 1 or len(drawers) > 1
    if not args.quiet:
        device = drawers[0][1].device
        print(f"{len(jobs)} drawing(s) x {len(drawers)} model(s), {config.strokes} strokes, {config.steps} steps, "
              f"{device}", file=sys.stderr)
    outputs = Outputs("clipag draw")
    cells: dict[str, list] = {prompt: [] for prompt in args.prompts}
    status = 0
    for m, (_, drawer) in enumerate(drawers):
        for i, (prompt, seed) in enumerate(jobs):
            try:
                result = drawer.run(prompt, seed=seed, progress=not args.quiet)
            except DrawingInterrupted as stop:
                result, status = stop.result, 130
            outputs.write(result.save_svg, result_path(output, i, several, compare=m > 0))
            if args.png:
                outputs.write(save_png, result.image, result_path(args.png, i, several, compare=m > 0))
            if args.frames and result.frames:
                outputs.write(save_gif, [*result.frames, result.image],
                              result_path(args.frames, i, several, compare=m > 0))
            cells[prompt].append(result.image)
            if status:
                print(f"interrupted at step {result.steps_done}: wrote the {config.keep} drawing so far "
                      f"(--keep {config.keep})", file=sys.stderr)
                return outputs.status(status)
    if several:
        grid = labelled_grid([cells[p] for p in args.prompts], row_labels=list(args.prompts),
                             group_labels=[model_label(name) for name, _ in drawers], group_size=args.count)
        outputs.write(save_png, grid, grid_path)
    return outputs.status(status)


def register_draw(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("draw", help="CLIPDraw: optimize vector strokes so CLIP(AG) sees the prompt; writes SVG",
                       description="CLIPDraw (kvfrans/clipdraw) with any model clipag.load takes, with a pure-PyTorch "
                                   "rasterizer (no diffvg). Defaults are upstream's: 256 strokes, 1000 steps.")
    p.add_argument("prompts", nargs="*", metavar="PROMPT", help="one or more prompts, or --prompts FILE")
    cli_options.add_common(p, steps=1000, steps_source="upstream's", output_kind="SVG", count="drawings")
    p.add_argument("--compare", default=None, metavar="MODEL",
                   help="also draw with MODEL from the same seeds and start strokes; writes a labelled grid")
    p.add_argument("--png", default=None, help="also write the drawing as PNG (numbered like -o)")
    p.add_argument("--grid", default=None, help="where to write the grid (default FILE-grid.png)")
    p.add_argument("--strokes", type=int, default=None, help="number of strokes (default 256)")
    p.add_argument("--size", type=int, default=None, help="canvas side in pixels (default 224)")
    p.add_argument("--augmentations", type=int, default=None, help="augmented views per step (default 4)")
    p.add_argument("--negative", action="store_true", help="upstream's negative prompts at weight 0.3")
    p.add_argument("--normalize", action="store_true", help="normalize views with the model's mean/std "
                                                            "(upstream's default is not to)")
    p.add_argument("--keep", choices=("last", "best"), default=None,
                   help="keep the last drawing (default, as upstream) or the lowest-loss one; Ctrl-C keeps the same")
    add_scale_options(p, "draw")
    p.set_defaults(func=cmd_draw)
