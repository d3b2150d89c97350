"""``clipag vqgan``: VQGAN+CLIP from the command line. Only argparse at import; torch loads when it runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from clipag import cli_options
from clipag.scale.cli import add_scale_options

__all__ = ["register_vqgan", "cmd_vqgan"]


def cmd_vqgan(args: argparse.Namespace) -> int:
    from clipag.extras import require

    require("vqgan-clip", "clipag vqgan")

    from clipag.images import Outputs, check_output, make_grid, numbered, result_path, save_gif, save_png
    from clipag.scale.cli import ScaleRun

    from .loop import VQGANCLIP, VQGANCLIPConfig, VQGANCLIPInterrupted

    cli_options.apply_threads(args)
    output = Path(args.output or cli_options.default_output([args.prompt or "image-prompt"], ".png", "vqgan"))
    try:
        scale = ScaleRun.from_args(args)
        if not scale.prompt_file:  # with --prompts the files go to --out, which from_args checked
            check_output(output, "-o/--output", (".png",))
            check_output(args.frames, "--frames", (".gif",))
        if not (args.prompt or "").strip() and not args.image_prompt and not scale.prompt_file:
            raise ValueError("give a prompt (\"text:weight:stop|...\") or an --image-prompt")
        if (args.vqgan_config is None) != (args.vqgan_checkpoint is None):
            raise ValueError("--vqgan-config and --vqgan-checkpoint go together")
        settings = VQGANCLIPConfig(steps=args.steps, size=tuple(args.size), lr=args.lr, cutn=args.cutn,
                                   augments=tuple(args.augments), init_image=args.init_image,
                                   init_weight=args.init_weight, image_prompts=tuple(args.image_prompt),
                                   frame_every=args.frame_every if args.frames else 0, amp=args.amp,
                                   **scale.knobs)
        gen = VQGANCLIP(args.model, args.vqgan, config=args.vqgan_config, checkpoint=args.vqgan_checkpoint,
                        device=args.device, settings=settings)
    except ValueError as e:
        print(f"clipag vqgan: error: {e}", file=sys.stderr)
        return 2
    if scale.prompt_file:
        return scale.run(gen)
    seeds = [args.seed + k for k in range(args.count)]
    several = len(seeds) > 1
    if not args.quiet:
        print(f"{len(seeds)} image(s), {settings.steps} steps, {gen.cut_size}px x {settings.cutn} cutouts, VQGAN "
              f"f{gen.factor}, {gen.device}, seed {args.seed}", file=sys.stderr)
    outputs = Outputs("clipag vqgan")
    images = []
    status = 0
    for i, seed in enumerate(seeds):
        try:
            result = gen.run(args.prompt or [], seed=seed, progress=not args.quiet)
        except VQGANCLIPInterrupted as stop:
            result, status = stop.result, 130
        outputs.write(save_png, result.image, result_path(output, i, several))
        images.append(result.image)
        if args.frames and result.frames:
            outputs.write(save_gif, [*result.frames, result.image], result_path(args.frames, i, several))
        if status:
            print(f"interrupted after {result.steps_done} steps: wrote the image as it was", file=sys.stderr)
            return outputs.status(status)
    if several:
        grid = make_grid(images)
        outputs.write(save_png, grid, numbered(output, "grid"))
    return outputs.status(status)


def register_vqgan(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("vqgan", help="VQGAN+CLIP: optimize a VQGAN latent so CLIP finds the prompt in its image",
                       description="VQGAN+CLIP with VQGAN-CLIP's defaults (Adam lr 0.1, 32 'latest' cutouts with "
                                   "affine/perspective/jitter/erasing, spherical-distance loss). Prompts are "
                                   "'text:weight:stop' separated by '|'.")
    p.add_argument("prompt", nargs="?", default=None, help="e.g. \"a castle in the clouds|dark:-0.5\"")
    cli_options.add_common(p, steps=500, steps_source="VQGAN-CLIP's -i", count="images",
                           amp_note="bf16 on a CPU with native bf16 is about 1.6x faster, not exact")
    p.add_argument("--vqgan", default="vqgan_imagenet_f16_16384",
                   help="a VQGAN name (`clipag download NAME` fetches it), default %(default)s")
    p.add_argument("--vqgan-config", default=None, metavar="YAML", help="a taming config file, with --vqgan-checkpoint")
    p.add_argument("--vqgan-checkpoint", default=None, metavar="CKPT", help="its .ckpt (Lightning) or .safetensors")
    p.add_argument("-s", "--size", nargs=2, type=int, default=[256, 256], metavar=("W", "H"))
    p.add_argument("--frame-every", type=int, default=10, help="steps between GIF frames (default %(default)s)")
    p.add_argument("--image-prompt", action="append", default=[], metavar="PATH[:W[:STOP]]",
                   help="an image target, repeatable (VQGAN-CLIP's -ip)")
    p.add_argument("--init-image", default=None, help="start from this image's latent (VQGAN-CLIP's -ii)")
    p.add_argument("--init-weight", type=float, default=0.0, help="VQGAN-CLIP's -iw")
    p.add_argument("--cutn", type=int, default=32, help="cutouts per step (default %(default)s)")
    p.add_argument("--lr", type=float, default=0.1, help="Adam learning rate (default %(default)s)")
    p.add_argument("--augments", nargs="+", default=["Af", "Pe", "Ji", "Er"], metavar="CODE",
                   help="VQGAN-CLIP's -aug codes: Ji Sh Gn Pe Ro Af Et Ts Cr Er Re (default: Af Pe Ji Er)")
    add_scale_options(p, "vqgan")
    p.set_defaults(func=cmd_vqgan)
