"""``clipag generate`` and ``clipag prior build``. Only argparse is imported here: torch-heavy modules load when
a command runs, so ``clipag models`` stays fast."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from .precision import AMP_MODES
from .scale.cli import add_scale_options

__all__ = ["register_generate", "register_prior"]


def _slug(text: str, limit: int = 60, fallback: str = "clipag") -> str:
    """A default output name from a prompt (``clipag generate``, ``vqgan`` and ``style`` share it)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].rstrip("-") or fallback


def _parse_set(items: list[str]) -> dict[str, Any]:
    """``--set key=value`` pairs for any GenerateConfig field, converted to the field's type."""
    from dataclasses import fields

    from .generation import GenerateConfig

    defaults = GenerateConfig()
    names = {f.name for f in fields(GenerateConfig)}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in names:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE with KEY one of {sorted(names)}")
        default = getattr(defaults, key)
        if isinstance(default, bool):
            out[key] = value.strip().lower() in ("1", "true", "yes", "on")
        elif isinstance(default, tuple):
            out[key] = tuple(float(v) for v in value.split(","))
        elif isinstance(default, int) or default is None:
            out[key] = int(value)
        else:
            out[key] = type(default)(value)
    return out


def cmd_generate(args: argparse.Namespace) -> int:
    import dataclasses

    from .generation import GenerateConfig, GenerationInterrupted, Generator
    from .images import make_grid, numbered, save_gif, save_png
    from .scale.cli import ScaleRun

    try:
        scale = ScaleRun.from_args(args)
        knobs = _parse_set(args.set or []) | scale.knobs
        for key, value in (("size", args.size), ("global_views", args.views), ("patch_views", args.patches),
                           ("init", args.init), ("amp", args.amp), ("lr", args.lr)):
            if value is not None:
                knobs[key] = value
        if args.compile:
            knobs["compile"] = True
        config = dataclasses.replace(GenerateConfig(), steps=args.steps, **knobs)
        if not args.prompts and not scale.prompt_file:
            raise ValueError("give a prompt, e.g. \"a red apple on a table\", or --prompts FILE --out DIR")
        if any(not p.strip() for p in args.prompts):
            raise ValueError("a prompt is empty: describe the image to generate, e.g. \"a red apple on a table\"")
        prior = None if args.no_prior else (args.prior or "auto")
        generator = Generator(args.model, device=args.device, prior=prior, config=config)
    except ValueError as e:
        print(f"clipag generate: error: {e}", file=sys.stderr)
        return 2
    if scale.prompt_file:
        return scale.run(generator)
    jobs = [(prompt, args.seed + k) for prompt in args.prompts for k in range(args.n)]
    output = Path(args.output or f"{_slug(args.prompts[0])}.png")
    several = len(jobs) > 1
    if not args.quiet:
        start = "prior " + (generator.prior.source or "file") if generator.prior is not None else f"init={config.init}"
        print(f"{len(jobs)} image(s), {config.steps} steps, {config.global_views}+{config.patch_views} views, "
              f"{generator.device}, start: {start}", file=sys.stderr)
    images = []
    status = 0
    for i, (prompt, seed) in enumerate(jobs):
        try:
            result = generator.run(prompt, seed=seed, progress=not args.quiet)
        except GenerationInterrupted as stop:
            result, status = stop.result, 130
        target = numbered(output, i) if several else output
        print(save_png(result.image, target))
        images.append(result.image)
        if args.frames and result.frames:
            frames_path = numbered(args.frames, i) if several else Path(args.frames)
            print(save_gif([*result.frames, result.image], frames_path))
        if status:
            print(f"interrupted at step {result.steps_done}: wrote the best image so far (step {result.best_step})",
                  file=sys.stderr)
            break
    if several:
        print(save_png(make_grid(images, columns=args.n if len(args.prompts) > 1 and args.n > 1 else None),
                       numbered(output, "grid")))
    return status


def register_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="text to image with no generator: optimize pixels through CLIPAG",
                       description="Generate an image from text by optimizing pixels through a robust CLIP "
                                   "(the CLIPAG notebook's algorithm). Any GenerateConfig knob: --set KEY=VALUE.")
    p.add_argument("prompts", nargs="*", metavar="PROMPT", help="one or more prompts (quote each), or --prompts FILE")
    p.add_argument("--model", default="ViT-B/32", help="registry name, hf-hub: id, folder or checkpoint file")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=1, help="images per prompt (seeds SEED, SEED+1, ...)")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("-o", "--output", default=None, help="PNG path (default: the prompt as a file name); several "
                                                        "images are numbered NAME-000.png plus NAME-grid.png")
    p.add_argument("--frames", default=None, metavar="GIF", help="also write the optimization as an animated GIF")
    p.add_argument("--prior", default=None, metavar="FILE", help="start-image prior (default: the cached one "
                                                                 "`clipag prior build` wrote, if any)")
    p.add_argument("--no-prior", action="store_true", help="ignore any prior; start from --init")
    p.add_argument("--init", default=None, help="start image without a prior: noise (default), gray, dark or a file")
    p.add_argument("--size", type=int, default=None, help="canvas side in pixels (default: the model's input size)")
    p.add_argument("--views", type=int, default=None, help="global views per step (default 32)")
    p.add_argument("--patches", type=int, default=None, help="patch crops per step (default 32)")
    p.add_argument("--lr", type=float, default=None, help="AdamW learning rate (default 0.0175)")
    p.add_argument("--amp", choices=AMP_MODES, default=None,
                   help="autocast (default auto: bf16/fp16 on CUDA, off on CPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile the encoder (CUDA graphs on GPU): "
                                                          "slower first image, faster steps after it")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="any GenerateConfig field, repeatable")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_scale_options(p, "generate")
    p.set_defaults(func=cmd_generate)


def cmd_prior_build(args: argparse.Namespace) -> int:
    from .prior import build_prior, default_prior_path

    try:
        prior = build_prior(args.source, resolution=args.resolution, jitter=args.jitter, split=args.split,
                            image_column=args.image_column, label_column=args.label_column,
                            max_per_class=args.max_per_class, progress=True)
    except ValueError as e:
        print(f"clipag prior build: error: {e}", file=sys.stderr)
        return 2
    path = prior.save(args.output or default_prior_path())
    print(f"{len(prior)} classes, {sum(prior.counts)} images, {prior.resolution}x{prior.resolution}, "
          f"{path.stat().st_size / 2**20:.1f} MiB", file=sys.stderr)
    print(path)
    return 0


def register_prior(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prior", help="build the start-image prior for generate")
    actions = p.add_subparsers(dest="prior_command", required=True)
    b = actions.add_parser("build", help="fit per-class Gaussians on an image folder or a Hugging Face dataset",
                           description="SOURCE is a folder with one sub-folder of images per class, or a Hugging "
                                       "Face dataset id such as Maysee/tiny-imagenet (needs `pip install datasets`).")
    b.add_argument("source")
    b.add_argument("-o", "--output", default=None, help="default: the cache's default prior, used by generate")
    b.add_argument("--split", default=None, help="dataset split (default: valid/validation/test/train, first found)")
    b.add_argument("--resolution", type=int, default=16)
    b.add_argument("--jitter", type=float, default=1e-4, help="added to each covariance's diagonal")
    b.add_argument("--image-column", default=None)
    b.add_argument("--label-column", default=None)
    b.add_argument("--max-per-class", type=int, default=None)
    b.set_defaults(func=cmd_prior_build)
