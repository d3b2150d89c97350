"""``clipag style``: CLIPStyler from the command line. Only argparse is imported here; torch loads when it runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from clipag import cli_options
from clipag.scale.cli import add_scale_options

__all__ = ["register_style"]


def cmd_style(args: argparse.Namespace) -> int:
    import dataclasses

    from clipag.extras import require

    require("clipstyler", "clipag style")

    from clipag.images import (
        Outputs,
        check_output,
        labelled_grid,
        model_label,
        numbered,
        result_path,
        save_gif,
        save_png,
        to_pil,
    )
    from clipag.scale.cli import ScaleRun

    from .styler import StyleConfig, StyleInterrupted, Styler, load_content

    cli_options.apply_threads(args)
    output = Path(args.output or cli_options.default_output([Path(args.content).stem, *args.texts[:1]], ".png"))
    try:
        scale = ScaleRun.from_args(args)
        if not scale.prompt_file:  # with --prompts the files go to --out, which from_args checked
            check_output(output, "-o/--output", (".png",))
            check_output(args.frames, "--frames", (".gif",))
        knobs = {key: value for key, value in (("crops", args.crops), ("crop_size", args.crop_size),
                                                ("lr", args.lr)) if value is not None}
        config = dataclasses.replace(StyleConfig(), steps=args.steps, size=tuple(args.size), amp=args.amp, **knobs,
                                     **scale.knobs, contrast=None if args.raw else 1.5,
                                     frame_every=10 if args.frames else 0)
        config.validate()
        if not args.texts and not scale.prompt_file:
            raise ValueError('give a style text, e.g. "an oil painting", or --prompts FILE --out DIR')
        if any(not text.strip() for text in args.texts):
            raise ValueError('a style text is empty: describe a style, e.g. "an oil painting with thick brush '
                             'strokes"')
        content = None if scale.prompt_file else load_content(args.content, config.size)
    except ValueError as e:
        print(f"clipag style: error: {e}", file=sys.stderr)
        return 2
    models = [args.model, *([args.compare] if args.compare else [])]
    stylers = []
    for model in models:  # VGG is loaded once and shared
        stylers.append(Styler(model, device=args.device, config=config, progress=not args.quiet,
                              vgg=stylers[0].vgg if stylers else None))
    if scale.prompt_file:
        return scale.run(stylers[0])
    jobs = [(text, args.seed + k) for text in args.texts for k in range(args.count)]
    several = len(jobs) > 1 or len(models) > 1
    if not args.quiet:
        width, height = config.size
        print(f"{len(jobs)} image(s) x {len(models)} model(s): {width}x{height}, {config.steps} steps, "
              f"{config.crops} crops of {config.crop_size} px, {stylers[0].device}, seed {args.seed}", file=sys.stderr)
    outputs = Outputs("clipag style")
    rows: list[list] = []
    for i, (text, seed) in enumerate(jobs):
        row = [to_pil(content)]
        for m, styler in enumerate(stylers):
            try:
                result = styler.run(content, text, seed=seed, progress=not args.quiet)
            except StyleInterrupted as stop:
                result = stop.result
            outputs.write(save_png, result.image, result_path(output, i, several, compare=m > 0))
            if args.frames and result.frames:
                outputs.write(save_gif, [*result.frames, result.image],
                              result_path(args.frames, i, several, compare=m > 0))
            row.append(result.image)
            if result.interrupted:
                print(f"interrupted at step {result.steps_done} of {config.steps}: wrote the current result",
                      file=sys.stderr)
                return outputs.status(130)
        rows.append(row)
    if several:
        labels = [text if args.count == 1 else f"{text} (seed {seed})" for text, seed in jobs]
        grid = labelled_grid(rows, row_labels=labels, group_labels=["content", *map(model_label, models)],
                             group_size=1, cell_size=min(256, config.size[0]))
        outputs.write(save_png, grid, numbered(output, "grid"))
    return outputs.status(0)


def register_style(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("style", help="text-driven style transfer of a photo (CLIPStyler) with CLIPAG",
                       description="Train CLIPStyler's StyleNet on CONTENT so CLIP sees TEXT's style in it, keeping "
                                   "the content through VGG19 (upstream's defaults: 200 steps, 512x512, 64 crops). "
                                   "VGG19's ImageNet weights come from torchvision's cache ($TORCH_HOME).")
    p.add_argument("content", help="the content image (any format Pillow reads)")
    p.add_argument("texts", nargs="*", metavar="TEXT", help="style description(s), e.g. \"an oil painting\", or "
                                                         "--prompts FILE")
    cli_options.add_common(p, steps=200, steps_source="upstream's", count="images",
                           output_default="CONTENT-TEXT.png, the photo's and the text's names",
                           amp_note="bf16 on a CPU with native bf16 is about 1.5x faster, not exact")
    p.add_argument("--compare", default=None, metavar="MODEL",
                   help="also style with MODEL (same seed) and write a labelled side-by-side grid")
    p.add_argument("--size", type=int, nargs=2, default=(512, 512), metavar=("W", "H"),
                   help="output size, multiples of 8 (the content image is resized to it)")
    p.add_argument("--crops", type=int, default=None, help="patch crops per step (default 64)")
    p.add_argument("--crop-size", type=int, default=None, help="patch crop side in pixels (default 128)")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (default 5e-4)")
    p.add_argument("--raw", action="store_true",
                   help="write StyleNet's output as is (default: contrast x1.5 and stretched, as upstream saves)")
    add_scale_options(p, "style")
    p.set_defaults(func=cmd_style)
