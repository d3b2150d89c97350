"""Seconds per step of ``clipag vqgan`` against nerdyrodent/VQGAN-CLIP's ``generate.py`` run through ``clipag run``.

Upstream code is not shipped; pass its script:

    git clone https://github.com/nerdyrodent/VQGAN-CLIP /tmp/VQGAN-CLIP
    python benchmarks/vqgan.py --upstream /tmp/VQGAN-CLIP/generate.py

Both sides use the same VQGAN (the ``vqgan_imagenet_f16_16384`` architecture with random weights, written as a
taming yaml + Lightning checkpoint), the same CLIP (random ViT-B/32 weights), image size, 32 cutouts and
augmentations, init image and seed, in this process. clipag's steps run inside upstream's loop, one after each
of its optimizer steps (a global post-step hook), so the two alternate step by step and load drift on a shared
machine hits both. An upstream step is the time between two of its optimizer steps less clipag's steps in
between; its first and last steps (they save a PNG) are left out. Also printed: the largest pixel difference
between upstream's image and clipag's exact mode (``fast=False``) after the same steps.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def make_models(folder: Path) -> tuple[Path, Path, Path]:
    """Random ViT-B/32 (OpenAI layout) and the f16-16384 VQGAN architecture, in the formats users have."""
    import open_clip
    from clipag.adapters.vqgan_clip.vqgan import VQModel
    from safetensors.torch import save_file
    from vqgan_fixtures import FIXTURE, write_lightning_ckpt, write_yaml

    torch.manual_seed(0)
    clip_path = folder / "vit_b32_random.safetensors"
    clip = open_clip.create_model("ViT-B-32")
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(clip_path))
    entry = FIXTURE["vqgan_imagenet_f16_16384"]
    params = {"embed_dim": entry["embed_dim"], "n_embed": entry["n_embed"], "ddconfig": entry["ddconfig"],
              "lossconfig": {"target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator"}}
    config = write_yaml(folder / "vqgan.yaml", {"model": {"target": "taming.models.vqgan.VQModel", "params": params}})
    vqgan = VQModel(**params)
    for p in vqgan.parameters():  # small weights keep activations in range through 30 layers
        p.data.mul_(0.3)
    ckpt = write_lightning_ckpt(folder / "vqgan.ckpt", vqgan.state_dict())
    return clip_path, config, ckpt


class Interleaver:
    """Runs one step of each clipag session right after each optimizer step of upstream's loop.

    A global optimizer post-step hook sees upstream's ``opt.step()``; clipag's own steps inside it are skipped by
    the hook (``inside``). So the two alternate step by step, and load drift on a shared machine hits both.
    """

    def __init__(self, sessions: dict, steps: int) -> None:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self.sessions, self.steps = sessions, steps
        self.upstream: list[float] = []
        self.ours: dict[str, list[float]] = {name: [] for name in sessions}
        self.calls, self.inside, self.last = 0, False, None
        self.handle = register_optimizer_step_post_hook(self.hook)

    def hook(self, *_: object) -> None:
        if self.inside:
            return
        now = time.perf_counter()
        if self.last is not None:
            self.upstream.append(now - self.last)
        if self.calls < self.steps:  # upstream runs steps + 1 updates; its image is of the first `steps`
            self.inside = True
            with torch.enable_grad():
                for name, session in self.sessions.items():
                    t0 = time.perf_counter()
                    session.step()
                    self.ours[name].append(time.perf_counter() - t0)
            self.inside = False
        self.calls += 1
        self.last = time.perf_counter()


def run_round(script: Path, sessions: dict, clip: Path, config: Path, ckpt: Path, init: Path, out: Path,
              args: argparse.Namespace) -> Interleaver:
    """One upstream run (steps + 1 updates), with clipag's sessions stepping in between."""
    from clipag.run import run_script

    clock = Interleaver(sessions, args.steps)
    argv = ["-p", args.prompt, "-conf", str(config), "-ckpt", str(ckpt), "-i", str(args.steps), "-se",
            str(args.steps), "-s", str(args.size[0]), str(args.size[1]), "-cuts", str(args.cutn), "-ii", str(init),
            "-sd", str(args.seed), "-o", str(out)]
    saved = sys.argv, list(sys.path)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            run_script(str(script), argv, model=str(clip), device="cpu")
    finally:
        sys.argv, sys.path[:] = saved
        clock.handle.remove()
    # upstream's last interval also decodes and saves its PNG (its checkin): left out
    clock.upstream = clock.upstream[:-1]
    return clock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", required=True, type=Path, help="path to VQGAN-CLIP's generate.py")
    parser.add_argument("--size", nargs=2, type=int, default=[128, 128])
    parser.add_argument("--cutn", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4, help="steps per run (upstream runs steps+1)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--prompt", default="a lighthouse on a cliff at sunset")
    parser.add_argument("--bf16", action="store_true",
                        help="also time clipag with CLIP under CPU bf16 autocast (--amp bf16: opt-in, not exact)")
    args = parser.parse_args()
    if not args.upstream.is_file():
        parser.error(f"{args.upstream} not found (git clone https://github.com/nerdyrodent/VQGAN-CLIP)")
    torch.set_num_threads(args.threads)

    from clipag.adapters.vqgan_clip.loop import VQGANCLIP, VQGANCLIPConfig

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        clip, config, ckpt = make_models(folder)
        init = folder / "init.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (*args.size[::-1], 3), dtype=np.uint8)).save(init)
        common = dict(steps=args.steps, size=tuple(args.size), cutn=args.cutn, init_image=str(init))
        variants = [("clipag", True, "auto"), ("clipag exact (fast=False)", False, "auto")]
        variants += [("clipag --amp bf16", True, "bf16")] if args.bf16 else []
        from clipag.adapters.vqgan_clip.vqgan import load_vqgan

        from clipag.loader import load

        perceptor = load(str(clip), device="cpu", precision="fp32")  # loaded once, shared by every variant
        vqgan = load_vqgan(config, ckpt, torch.device("cpu"))
        gens = {name: VQGANCLIP(perceptor, vqgan, device="cpu", settings=VQGANCLIPConfig(**common, fast=fast, amp=amp))
                for name, fast, amp in variants}
        times: dict[str, list[float]] = {"upstream generate.py": [], **{name: [] for name in gens}}
        diffs = []
        for r in range(args.rounds):
            out = folder / f"upstream-{r}.png"
            sessions = {name: gen.session(args.prompt, seed=args.seed) for name, gen in gens.items()}
            clock = run_round(args.upstream, sessions, clip, config, ckpt, init, out, args)
            times["upstream generate.py"] += clock.upstream
            for name in gens:
                times[name] += clock.ours[name]
            theirs = np.asarray(Image.open(out), dtype=int)
            ours = np.asarray(sessions["clipag exact (fast=False)"].image(), dtype=int)
            diffs.append(int(np.abs(ours - theirs).max()))
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {statistics.median(v):.2f} s" for k, v in
                                                                times.items()), flush=True)
    base = statistics.median(times["upstream generate.py"])
    print(f"\n{args.size[0]}x{args.size[1]} px, {args.cutn} cutouts, ViT-B/32 + f16-16384 VQGAN (random weights), "
          f"{args.threads} threads, {sum(len(v) for v in times.values())} steps timed")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"  {name:28s} median {med:6.2f} s/step  (min {min(values):.2f}, n={len(values)})  "
              f"speed-up {base / med:.2f}x")
    print(f"  max pixel difference, upstream vs clipag exact, after {args.steps} steps: {max(diffs)} (of 255)")


if __name__ == "__main__":
    main()
