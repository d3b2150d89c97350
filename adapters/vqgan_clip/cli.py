"""``clipag vqgan``: VQGAN+CLIP from the command line. Only argparse at import; torch loads when it runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from clipag.precision import AMP_MODES
from clipag.scale.cli import add_scale_options

__all__ = ["register_vqgan", "cmd_vqgan"]


def cmd_vqgan(args: argparse.Namespace) -> int:
    import torch

    from clipag.generation_cli import _slug
    from clipag.images import save_gif, save_png
    from clipag.scale.cli import ScaleRun

    from .loop import VQGANCLIP, VQGANCLIPConfig, VQGANCLIPInterrupted

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        scale = ScaleRun.from_args(args)
    except ValueError as e:
        print(f"clipag vqgan: error: {e}", file=sys.stderr)
        return 2
    if not (args.prompt or "").strip() and not args.image_prompt and not scale.prompt_file:
        print("clipag vqgan: error: give a prompt (\"text:weight:stop|...\") or an --image-prompt", file=sys.stderr)
        return 2
    if (args.vqgan_config is None) != (args.vqgan_checkpoint is None):
        print("clipag vqgan: error: --vqgan-config and --vqgan-checkpoint go together", file=sys.stderr)
        return 2
    try:
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
    output = Path(args.output or f"{_slug(args.prompt or 'image-prompt', fallback='vqgan')}.png")
    if not args.quiet:
        print(f"{settings.steps} steps, {gen.cut_size}px x {settings.cutn} cutouts, VQGAN f{gen.factor}, "
              f"{gen.device}, seed {args.seed}", file=sys.stderr)
    status = 0
    try:
        result = gen.run(args.prompt or [], seed=args.seed, progress=not args.quiet)
    except VQGANCLIPInterrupted as stop:
        result, status = stop.result, 130
    print(save_png(result.image, output))
    if args.frames and result.frames:
        print(save_gif([*result.frames, result.image], args.frames))
    if status:
        print(f"interrupted after {result.steps_done} steps: wrote the image as it was", file=sys.stderr)
    return status


def register_vqgan(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("vqgan", help="VQGAN+CLIP: optimize a VQGAN latent so CLIP finds the prompt in its image",
                       description="VQGAN+CLIP with VQGAN-CLIP's defaults (Adam lr 0.1, 32 'latest' cutouts with "
                                   "affine/perspective/jitter/erasing, spherical-distance loss). Prompts are "
                                   "'text:weight:stop' separated by '|'.")
    p.add_argument("prompt", nargs="?", default=None, help="e.g. \"a castle in the clouds|dark:-0.5\"")
    p.add_argument("--model", default="ViT-B/32", help="CLIP: registry name, hf-hub: id, folder or checkpoint file")
    p.add_argument("--vqgan", default="vqgan_imagenet_f16_16384",
                   help="a VQGAN name (`clipag download NAME` fetches it), default %(default)s")
    p.add_argument("--vqgan-config", default=None, metavar="YAML", help="a taming config file, with --vqgan-checkpoint")
    p.add_argument("--vqgan-checkpoint", default=None, metavar="CKPT", help="its .ckpt (Lightning) or .safetensors")
    p.add_argument("-s", "--size", nargs=2, type=int, default=[256, 256], metavar=("W", "H"))
    p.add_argument("--steps", type=int, default=500, help="optimization steps (VQGAN-CLIP's -i), default %(default)s")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("-o", "--output", default=None, help="PNG path (default: the prompt as a file name)")
    p.add_argument("--frames", default=None, metavar="GIF", help="also write the optimization as an animated GIF")
    p.add_argument("--frame-every", type=int, default=10, help="steps between GIF frames (default %(default)s)")
    p.add_argument("--image-prompt", action="append", default=[], metavar="PATH[:W[:STOP]]",
                   help="an image target, repeatable (VQGAN-CLIP's -ip)")
    p.add_argument("--init-image", default=None, help="start from this image's latent (VQGAN-CLIP's -ii)")
    p.add_argument("--init-weight", type=float, default=0.0, help="VQGAN-CLIP's -iw")
    p.add_argument("--cutn", type=int, default=32, help="cutouts per step (default %(default)s)")
    p.add_argument("--lr", type=float, default=0.1, help="Adam learning rate (default %(default)s)")
    p.add_argument("--augments", nargs="+", default=["Af", "Pe", "Ji", "Er"], metavar="CODE",
                   help="VQGAN-CLIP's -aug codes: Ji Sh Gn Pe Ro Af Et Ts Cr Er Re (default: Af Pe Ji Er)")
    p.add_argument("--amp", choices=AMP_MODES, default="auto",
                   help="CLIP under autocast (default auto: bf16/fp16 on CUDA, off on CPU; bf16 on a CPU with "
                        "native bf16 is about 1.6x faster, not exact)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_scale_options(p, "vqgan")
    p.set_defaults(func=cmd_vqgan)
