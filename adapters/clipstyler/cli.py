"""``clipag style``: CLIPStyler from the command line. Only argparse is imported here; torch loads when it runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from clipag.precision import AMP_MODES
from clipag.scale.cli import add_scale_options

__all__ = ["register_style"]


def cmd_style(args: argparse.Namespace) -> int:
    import dataclasses

    from clipag.generation_cli import _slug
    from clipag.images import labelled_grid, model_label, numbered, save_png
    from clipag.scale.cli import ScaleRun

    from .styler import StyleConfig, StyleInterrupted, Styler, load_content

    try:
        scale = ScaleRun.from_args(args)
        knobs = {key: value for key, value in (("crops", args.crops), ("crop_size", args.crop_size),
                                                ("lr", args.lr), ("amp", args.amp)) if value is not None}
        config = dataclasses.replace(StyleConfig(), steps=args.steps, size=tuple(args.size), **knobs,
                                     **scale.knobs, contrast=None if args.raw else 1.5)
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
    jobs = [(text, m) for text in args.texts for m in range(len(models))]
    output = Path(args.output or f"{Path(args.content).stem}-{_slug(args.texts[0])}.png")
    several = len(jobs) > 1
    if not args.quiet:
        width, height = config.size
        print(f"{len(jobs)} image(s): {width}x{height}, {config.steps} steps, {config.crops} crops of "
              f"{config.crop_size} px, {stylers[0].device}, seed {args.seed}", file=sys.stderr)
    results: list = []
    for i, (text, m) in enumerate(jobs):
        try:
            result = stylers[m].run(content, text, seed=args.seed, progress=not args.quiet)
        except StyleInterrupted as stop:
            result = stop.result
        target = numbered(output, i) if several else output
        print(save_png(result.image, target))
        results.append(result)
        if result.interrupted:
            print(f"interrupted at step {result.steps_done} of {config.steps}: wrote the current result",
                  file=sys.stderr)
            return 130
    if several:
        from clipag.images import to_pil

        rows = [[to_pil(content), *(r.image for r in results[k:k + len(models)])]
                for k in range(0, len(results), len(models))]
        grid = labelled_grid(rows, row_labels=list(args.texts), group_labels=["content", *map(model_label, models)],
                             group_size=1, cell_size=min(256, config.size[0]))
        print(save_png(grid, numbered(output, "grid")))
    return 0


def register_style(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("style", help="text-driven style transfer of a photo (CLIPStyler) with CLIPAG",
                       description="Train CLIPStyler's StyleNet on CONTENT so CLIP sees TEXT's style in it, keeping "
                                   "the content through VGG19 (upstream's defaults: 200 steps, 512x512, 64 crops). "
                                   "VGG19's ImageNet weights come from torchvision's cache ($TORCH_HOME).")
    p.add_argument("content", help="the content image (any format Pillow reads)")
    p.add_argument("texts", nargs="*", metavar="TEXT", help="style description(s), e.g. \"an oil painting\", or "
                                                         "--prompts FILE")
    p.add_argument("--model", default="ViT-B/32", help="CLIP: registry name, hf-hub: id, folder or checkpoint file")
    p.add_argument("--compare", default=None, metavar="MODEL",
                   help="also style with MODEL (same seed) and write a labelled side-by-side grid")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--size", type=int, nargs=2, default=(512, 512), metavar=("W", "H"),
                   help="output size, multiples of 8 (the content image is resized to it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("-o", "--output", default=None,
                   help="PNG path (default CONTENT-TEXT.png); several images are numbered NAME-000.png ... plus "
                        "NAME-grid.png")
    p.add_argument("--crops", type=int, default=None, help="patch crops per step (default 64)")
    p.add_argument("--crop-size", type=int, default=None, help="patch crop side in pixels (default 128)")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (default 5e-4)")
    p.add_argument("--amp", choices=AMP_MODES, default=None,
                   help="autocast for CLIP (default auto: bf16/fp16 on CUDA, off on CPU; bf16 on a CPU with "
                        "native bf16 is about 1.5x faster, not exact)")
    p.add_argument("--raw", action="store_true",
                   help="write StyleNet's output as is (default: contrast x1.5 and stretched, as upstream saves)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_scale_options(p, "style")
    p.set_defaults(func=cmd_style)
