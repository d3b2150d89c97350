"""``clipag generate`` and ``clipag prior build``. Only argparse is imported here: torch-heavy modules load when
a command runs, so ``clipag models`` stays fast."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from . import cli_options
from .scale.cli import add_scale_options

__all__ = ["register_generate", "register_prior"]


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
    from .images import Outputs, check_output, make_grid, numbered, result_path, save_gif, save_png
    from .scale.cli import ScaleRun

    cli_options.apply_threads(args)
    output = Path(args.output or cli_options.default_output(args.prompts[:1], ".png"))
    try:
        scale = ScaleRun.from_args(args)
        if not args.prompts and not scale.prompt_file:
            raise ValueError("give a prompt, e.g. \"a red apple on a table\", or --prompts FILE --out DIR")
        if not scale.prompt_file:  # with --prompts the files go to --out, which from_args checked
            check_output(output, "-o/--output", (".png",))
            check_output(args.frames, "--frames", (".gif",))
        knobs = _parse_set(args.set or []) | scale.knobs
        for key, value in (("size", args.size), ("global_views", args.views), ("patch_views", args.patches),
                           ("init", args.init), ("lr", args.lr)):
            if value is not None:
                knobs[key] = value
        if args.amp != "auto" or "amp" not in knobs:  # --amp's default leaves a --set amp=... alone
            knobs["amp"] = args.amp
        if args.compile:
            knobs["compile"] = True
        config = dataclasses.replace(GenerateConfig(), steps=args.steps, **knobs)
        if any(not p.strip() for p in args.prompts):
            raise ValueError("a prompt is empty: describe the image to generate, e.g. \"a red apple on a table\"")
        prior = None if args.no_prior else (args.prior or "auto")
        generator = Generator(args.model, device=args.device, prior=prior, config=config)
    except ValueError as e:
        print(f"clipag generate: error: {e}", file=sys.stderr)
        return 2
    if scale.prompt_file:
        return scale.run(generator)
    jobs = [(prompt, args.seed + k) for prompt in args.prompts for k in range(args.count)]
    several = len(jobs) > 1
    if not args.quiet:
        if generator.prior is not None:
            start = "prior " + (generator.prior.source or "file")
        else:  # "auto" without a prior is the noise start: say so, not "init=auto"
            start = "noise (no prior)" if config.init in ("auto", "noise") else f"init={config.init}"
        print(f"{len(jobs)} image(s), {config.steps} steps, {config.global_views}+{config.patch_views} views, "
              f"{generator.device}, start: {start}", file=sys.stderr)
    outputs = Outputs("clipag generate")
    images = []
    status = 0
    for i, (prompt, seed) in enumerate(jobs):
        try:
            result = generator.run(prompt, seed=seed, progress=not args.quiet)
        except GenerationInterrupted as stop:
            result, status = stop.result, 130
        outputs.write(save_png, result.image, result_path(output, i, several))
        images.append(result.image)
        if args.frames and result.frames:
            outputs.write(save_gif, [*result.frames, result.image], result_path(args.frames, i, several))
        if status:
            print(f"interrupted at step {result.steps_done}: wrote the best image so far (step {result.best_step})",
                  file=sys.stderr)
            break
    if several:
        grid = make_grid(images, columns=args.count if len(args.prompts) > 1 and args.count > 1 else None)
        outputs.write(save_png, grid, numbered(output, "grid"))
    return outputs.status(status)


def register_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="text to image with no generator: optimize pixels through CLIPAG",
                       description="Generate an image from text by optimizing pixels through a robust CLIP "
                                   "(the CLIPAG notebook's algorithm). Any GenerateConfig knob: --set KEY=VALUE.")
    p.add_argument("prompts", nargs="*", metavar="PROMPT", help="one or more prompts (quote each), or --prompts FILE")
    cli_options.add_common(p, steps=100, steps_source="the notebook's", count="images")
    p.add_argument("--prior", default=None, metavar="FILE", help="start-image prior (default: the cached one "
                                                                 "`clipag prior build` wrote, if any)")
    p.add_argument("--no-prior", action="store_true", help="ignore any prior; start from --init")
    p.add_argument("--init", default=None, help="start image without a prior: noise (default), gray, dark or a file")
    p.add_argument("--size", type=int, default=None, help="canvas side in pixels (default: the model's input size)")
    p.add_argument("--views", type=int, default=None, help="global views per step (default 32)")
    p.add_argument("--patches", type=int, default=None, help="patch crops per step (default 32)")
    p.add_argument("--lr", type=float, default=None, help="AdamW learning rate (default 0.0175)")
    p.add_argument("--compile", action="store_true", help="torch.compile the encoder (CUDA graphs on GPU): "
                                                          "slower first image, faster steps after it")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="any GenerateConfig field, repeatable")
    add_scale_options(p, "generate")
    p.set_defaults(func=cmd_generate)


def cmd_prior_build(args: argparse.Namespace) -> int:
    from .images import check_output
    from .prior import build_prior, default_prior_path

    output = args.output or default_prior_path()
    try:
        check_output(output, "-o/--output", (".safetensors",))
        prior = build_prior(args.source, resolution=args.resolution, jitter=args.jitter, split=args.split,
                            image_column=args.image_column, label_column=args.label_column,
                            max_per_class=args.max_per_class, progress=True)
    except ValueError as e:
        print(f"clipag prior build: error: {e}", file=sys.stderr)
        return 2
    path = prior.save(output)
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
