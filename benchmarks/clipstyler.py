"""One step of ``clipag style`` against one step of upstream's ``train_CLIPstyler.py`` run through ``clipag run``.

Upstream's code is not part of clipag; point ``--upstream`` at a clone:

    git clone https://github.com/cyclomon/CLIPstyler
    python benchmarks/clipstyler.py --upstream CLIPstyler                     # 512x512, 64 crops, 6 steps each
    python benchmarks/clipstyler.py --upstream CLIPstyler --size 256 --crops 16 --pairs 4    # quicker

Both sides use the same models: a random-weight CLIP with the real ViT-B/32 architecture (a Hub-layout folder,
which upstream's ``clip.load('ViT-B/32', ...)`` gets through ``clipag run --model``) and random VGG19 weights
written as ``vgg19-dcbb9e9d.pth`` into a temporary ``TORCH_HOME`` (upstream's ``models.vgg19(pretrained=True)``
and clipag's content network both read that file). Same image size, crop count and crop size.

Upstream runs unmodified in this process through clipag's ``run_script`` (``clipag run --device cpu``). A global
optimizer hook sees each of its ``optimizer.step()`` calls and runs one ``clipag style`` step right there, so
the two alternate step by step and machine-load drift hits both alike. Upstream's step time is the interval
between its hook calls, less the clipag step inside; its setup (loading models) and its first step (which
prints and saves) are not counted, nor is clipag's warm-up step. clipag's steps run inside upstream's process
state, under the ``--device cpu`` remapping mode too, which can only slow them. Medians are compared.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch


def make_models(folder: Path, arch: str) -> tuple[Path, Path]:
    """A random ``arch`` CLIP as a Hub-layout folder and a random VGG19 in ``folder/torch_home``."""
    import open_clip
    import torchvision
    from safetensors.torch import save_file

    from clipag.model import build_model

    torch.manual_seed(0)
    config = open_clip.get_model_config(arch)
    clip_dir = folder / "clip"
    clip_dir.mkdir()
    (clip_dir / "open_clip_config.json").write_text(json.dumps({"model_cfg": config, "preprocess_cfg": {}}))
    save_file({k: v.contiguous() for k, v in build_model(config).state_dict().items()},
              str(clip_dir / "open_clip_model.safetensors"))
    torch_home = folder / "torch_home"
    (torch_home / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(torchvision.models.vgg19().state_dict(), torch_home / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth")
    return clip_dir, torch_home


def make_content(path: Path, size: int) -> Path:
    """A smooth synthetic photo stand-in (gradients and a disc), so nothing has to be downloaded."""
    from PIL import Image, ImageDraw

    image = Image.linear_gradient("L").resize((size, size)).convert("RGB")
    ImageDraw.Draw(image).ellipse((size // 4, size // 4, 3 * size // 4, 3 * size // 4), fill=(200, 80, 40))
    image.save(path)
    return path


def interleaved(script: Path, args: list[str], clip_dir: Path, workdir: Path, ours: dict[str, Callable[[], object]],
                untimed: int = 1) -> dict[str, list[float]]:
    """Run upstream's script once, running one step of each of ``ours`` after each of its steps; return the
    step times of upstream and of each of ``ours``.

    A global optimizer hook sees each of upstream's ``optimizer.step()`` calls. Upstream's step time is the
    time from the end of one hook call to the next (so ``ours``, run inside the hook, is not counted in it);
    its first ``untimed`` intervals are skipped (epoch 0 prints and saves inside the first).
    """
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from clipag import device_remap
    from clipag.run import run_script

    upstream: list[float] = []
    clipag: dict[str, list[float]] = {name: [] for name in ours}
    state = {"calls": 0, "end": None, "inside": False}

    def hook(*_: object) -> None:
        if state["inside"]:  # our own optimizer's step, called from ``ours``
            return
        now = time.perf_counter()
        state["calls"] += 1
        if state["calls"] > untimed + 1:
            upstream.append(now - state["end"])
        if state["calls"] > untimed:
            state["inside"] = True
            for name, step in ours.items():
                start = time.perf_counter()
                with torch.enable_grad():
                    step()
                clipag[name].append(time.perf_counter() - start)
            state["inside"] = False
            if upstream:
                print(f"step {len(upstream)}: upstream {upstream[-1]:.2f} s, "
                      + ", ".join(f"{name} {t[-1]:.2f} s" for name, t in clipag.items()), flush=True)
        state["end"] = time.perf_counter()

    handle = register_optimizer_step_post_hook(hook)
    cwd, argv, path = os.getcwd(), sys.argv, list(sys.path)
    os.chdir(workdir)
    try:
        run_script(str(script), args, model=str(clip_dir), device="cpu")
    finally:
        handle.remove()
        device_remap.uninstall()
        os.chdir(cwd)
        sys.argv, sys.path[:] = argv, path
    # clipag[name][k + 1] ran right after upstream[k] was timed (the first ran before any)
    return {"upstream": upstream, **{name: t[1:] for name, t in clipag.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", required=True, type=Path,
                        help="folder holding upstream's train_CLIPstyler.py, StyleNet.py, utils.py, template.py")
    parser.add_argument("--arch", default="ViT-B-32", help="open_clip architecture of the random CLIP")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--crops", type=int, default=64)
    parser.add_argument("--crop-size", type=int, default=128)
    parser.add_argument("--pairs", type=int, default=6, help="timed steps of each, alternating (at most 18)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--bf16", action="store_true", help="also time clipag with CPU bf16 autocast for CLIP")
    args = parser.parse_args()
    script = args.upstream / "train_CLIPstyler.py"
    if not script.is_file():
        raise SystemExit(f"{script} not found: clone https://github.com/cyclomon/CLIPstyler and pass its folder")
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clip_dir, torch_home = make_models(tmp, args.arch)
        os.environ["TORCH_HOME"] = str(torch_home)
        content = make_content(tmp / "content.png", args.size)
        (tmp / "outputs").mkdir()  # upstream writes there without creating it
        # upstream's loop runs epochs 0..max_step; epoch 0 prints and saves, the next that would is epoch 20
        pairs = min(args.pairs, 18)
        upstream_args = ["--content_path", str(content), "--text", "an oil painting", "--max_step", str(pairs + 1),
                         "--img_width", str(args.size), "--img_height", str(args.size),
                         "--num_crops", str(args.crops), "--crop_size", str(args.crop_size)]

        from clipag.adapters.clipstyler.styler import StyleConfig, Styler

        from clipag.loader import load

        config = StyleConfig(size=(args.size, args.size), crops=args.crops, crop_size=args.crop_size)
        clip_model, preprocess = load(str(clip_dir), device="cpu", precision="fp32")  # shared by both stylers
        sessions = {"clipag": Styler(clip_model, preprocess=preprocess, config=config, progress=False)}
        if args.bf16:
            bf16 = dataclasses.replace(config, amp="bf16")
            sessions["clipag bf16"] = Styler(clip_model, preprocess=preprocess, config=bf16,
                                             vgg=sessions["clipag"].vgg, progress=False)
        sessions = {name: styler.session(content, "an oil painting", seed=0) for name, styler in sessions.items()}
        for session in sessions.values():
            session.step()  # warm-up
        print(f"{args.arch} (random weights) + VGG19 (random), {args.size}x{args.size}, {args.crops} crops of "
              f"{args.crop_size} px, CPU x{torch.get_num_threads()} threads, {pairs} alternating steps", flush=True)
        times = interleaved(script, upstream_args, clip_dir, tmp, {name: s.step for name, s in sessions.items()})
    up = statistics.median(times["upstream"])
    for name in sessions:
        ours = statistics.median(times[name])
        ratios = [a / b for a, b in zip(times["upstream"], times[name], strict=True)]
        print(f"median step: upstream through clipag run {up:.2f} s, {name} {ours:.2f} s: {up / ours:.2f}x "
              f"(fastest {min(times['upstream']):.2f} vs {min(times[name]):.2f} s: "
              f"{min(times['upstream']) / min(times[name]):.2f}x; adjacent pairs {min(ratios):.2f}-"
              f"{max(ratios):.2f}x)")
    if args.bf16:
        exact, fast = sessions["clipag"].losses, sessions["clipag bf16"].losses
        drift = max(abs(a["loss"] - b["loss"]) / abs(a["loss"]) for a, b in zip(exact, fast, strict=True))
        print(f"bf16 vs fp32, same seed, {len(exact)} steps: total loss differs by at most {100 * drift:.3f}%")


if __name__ == "__main__":
    main()
