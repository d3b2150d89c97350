"""Steps per second of ``clipag`` generation against a straightforward re-implementation of the notebook loop.

Both run in this process on the same model (random-weight open_clip ViT-B-32 by default), device, canvas and
number of views, alternating rounds so machine-load drift hits both equally; the ratio is printed last.

    python benchmarks/generate.py                      # CPU, 8 global + 8 patch views, about a minute
    python benchmarks/generate.py --amp-check          # also: does CPU bf16 autocast change the result?

The baseline keeps what the notebook does: the model's weights require grad (their gradients are computed and
accumulated every step), patch crops are cut image by image in Python, global and patch views go through two
encoder calls, and attention runs in open_clip's batch-first layout.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time
from collections.abc import Callable

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from torchvision import transforms

from clipag.generation import GenerateConfig, Generator, dynamic_threshold
from clipag.model import build_model
from clipag.registry import OPENAI_MEAN, OPENAI_STD  # the notebook hard-codes OpenAI's constants
from clipag.tokenizer import tokenize

PROMPT = "a lighthouse on a cliff at sunset"


# --- the notebook's loop, re-implemented plainly ------------------------------------------------------------
def nb_color(x: torch.Tensor) -> torch.Tensor:
    n, d = x.shape[0], x.device
    x = x + torch.rand(n, 1, 1, 1, device=d) - 0.5
    m = x.mean(1, keepdim=True)
    x = (x - m) * (2 * torch.rand(n, 1, 1, 1, device=d)) + m
    m = x.mean((1, 2, 3), keepdim=True)
    return (x - m) * (torch.rand(n, 1, 1, 1, device=d) + 0.5) + m


def nb_translation(x: torch.Tensor, ratio: float = 0.125) -> torch.Tensor:
    (n, _, h, w), d = x.shape, x.device
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ty = torch.randint(-sh, sh + 1, (n, 1, 1), device=d)
    tx = torch.randint(-sw, sw + 1, (n, 1, 1), device=d)
    b, i, j = torch.meshgrid(torch.arange(n, device=d), torch.arange(h, device=d), torch.arange(w, device=d),
                             indexing="ij")
    i = (i + ty + 1).clamp(0, h + 1)
    j = (j + tx + 1).clamp(0, w + 1)
    padded = F.pad(x, [1, 1, 1, 1]).permute(0, 2, 3, 1)
    return padded[b, i, j].permute(0, 3, 1, 2).contiguous()


def nb_resize(x: torch.Tensor) -> torch.Tensor:
    size = x.shape[3]
    new = int((np.random.rand() * 0.4 + 0.8) * size)
    y = F.interpolate(x, size=new, mode="bilinear")
    if new < size:
        a = (size - new) // 2
        return F.pad(y, (a, size - a - new, a, size - a - new))
    a = (new - size) // 2
    return y[:, :, a:a + size, a:a + size]


def nb_cutout(x: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    (n, _, h, w), d = x.shape, x.device
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    oy = torch.randint(0, h + (1 - ch % 2), (n, 1, 1), device=d)
    ox = torch.randint(0, w + (1 - cw % 2), (n, 1, 1), device=d)
    b, i, j = torch.meshgrid(torch.arange(n, device=d), torch.arange(ch, device=d), torch.arange(cw, device=d),
                             indexing="ij")
    mask = torch.ones(n, h, w, device=d, dtype=x.dtype)
    mask[b, (i + oy - ch // 2).clamp(0, h - 1), (j + ox - cw // 2).clamp(0, w - 1)] = 0
    return x * mask.unsqueeze(1)


def nb_augment(x: torch.Tensor) -> torch.Tensor:
    return nb_cutout(nb_resize(nb_translation(nb_color(x)))).contiguous()


class NotebookLoop:
    """The notebook's ``generate`` body for one prompt (on CUDA under fp16 autocast, as the notebook runs)."""

    def __init__(self, model: torch.nn.Module, views: int, patches: int, size: int) -> None:
        self.model, self.views, self.patches, self.size = model, views, patches, size
        self.device = d = next(model.parameters()).device
        self.autocast = torch.autocast("cuda", dtype=torch.float16, enabled=d.type == "cuda")
        crop = round(128 / 224 * size)
        self.crop = transforms.Compose([transforms.RandomCrop(crop), transforms.Resize(size)])
        self.norm = transforms.Normalize(OPENAI_MEAN, OPENAI_STD)
        with torch.no_grad(), self.autocast:
            t = model.encode_text(tokenize([PROMPT]).to(d)).float()
            self.text = t / t.norm(dim=-1, keepdim=True)
        self.image = torch.rand(1, 3, size, size, device=d, requires_grad=True)
        self.opt = torch.optim.AdamW([self.image], lr=0.0175)
        self.best_loss, self.best = math.inf, None

    def step(self) -> None:
        with self.autocast:
            self._step()

    def _step(self) -> None:
        image, model, s, d = self.image, self.model, self.size, self.device
        self.opt.zero_grad()  # the model's own gradients are never zeroed, as in the notebook
        noisy = image.repeat(self.patches, 1, 1, 1) + torch.randn(1, 3, s, s, device=d) * 0.01
        crops = torch.clamp(torch.stack([self.crop(img) for img in noisy]), 0, 1)
        f = model.encode_image(self.norm(nb_augment(crops)))
        f = f / f.clone().norm(dim=-1, keepdim=True)
        patch_loss = (1 - torch.cosine_similarity(f, self.text, dim=1)).mean()
        g = model.encode_image(self.norm(nb_augment(image.repeat(self.views, 1, 1, 1)
                                                    + torch.randn(self.views, 3, s, s, device=d) * 0.01)))
        g = g / g.clone().norm(dim=-1, keepdim=True)
        clip_loss = (1 - torch.cosine_similarity(g, self.text, dim=1)).mean()
        (clip_loss + 5 * patch_loss).backward()
        torch.nn.utils.clip_grad_norm_(image, max_norm=0.001)
        self.opt.step()
        image.data = dynamic_threshold(image.data, 0.95)
        if clip_loss < self.best_loss:
            self.best, self.best_loss = image.data.clone(), clip_loss.item()


# --- measurement -------------------------------------------------------------------------------------------
def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def amp_check(model: torch.nn.Module, views: int, patches: int, steps: int) -> None:
    """Same seed, fp32 vs CPU bf16 autocast: speed and how far the results drift apart."""
    out = {}
    for amp in ("off", "bf16"):
        config = GenerateConfig(global_views=views, patch_views=patches, steps=steps, frame_every=0, amp=amp)
        result = Generator(model, prior=None, config=config).run(PROMPT, seed=0)
        out[amp] = result
        print(f"amp={amp:4s}: {result.steps_per_second:.3f} steps/s, best global loss {result.best_loss:.5f} "
              f"(step {result.best_step}), final loss {result.losses[-1]['loss']:.5f}")
    diff = (out["off"].tensor - out["bf16"].tensor).abs()
    first = next((i for i, (x, y) in enumerate(zip(out["off"].losses, out["bf16"].losses, strict=True))
                  if abs(x["loss"] - y["loss"]) > 1e-3), None)
    print(f"bf16 vs fp32 after {steps} steps: pixel |diff| mean {diff.mean():.4f}, max {diff.max():.4f}; "
          f"losses first differ by >1e-3 at step {first}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="ViT-B-32", help="open_clip architecture (random weights)")
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--patches", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6, help="timed steps of each loop, alternating")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--amp-check", action="store_true", help="also compare CPU bf16 autocast with fp32")
    parser.add_argument("--breakdown", action="store_true", help="also time clipag without its encoder fast paths")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    model = build_model(open_clip.get_model_config(args.arch))
    size = model.visual.input_resolution
    print(f"{args.arch} (random weights), CPU x{torch.get_num_threads()} threads, {size}px, "
          f"{args.views}+{args.patches} views, {args.steps} alternating steps each after one warm-up")
    notebook = NotebookLoop(model, args.views, args.patches, size)
    loops: dict[str, Callable[[], object]] = {"notebook": notebook.step}
    variants = {"clipag": True, "clipag fast=False": False} if args.breakdown else {"clipag": True}
    for name, fast in variants.items():
        config = GenerateConfig(global_views=args.views, patch_views=args.patches, frame_every=0, amp="off",
                                steps=args.steps + 1, fast=fast)
        loops[name] = Generator(model, prior=None, config=config).session(PROMPT).step
    times: dict[str, list[float]] = {name: [] for name in loops}
    for step in loops.values():
        step()  # warm-up (allocations, kernel selection)
    for i in range(args.steps):  # alternate so machine-load drift hits every loop alike
        for name, step in loops.items():
            times[name].append(timed(step))
        print(f"step {i}: " + ", ".join(f"{name} {t[-1]:.2f} s" for name, t in times.items()), flush=True)
    nb, nb_fastest = statistics.median(times["notebook"]), min(times["notebook"])
    print("speed-up vs the notebook loop: median step times, fastest step of each (the least disturbed by other "
          "load), range over alternating pairs")
    for name, t in times.items():
        ratios = [a / b for a, b in zip(times["notebook"], t, strict=True)]
        print(f"{name:18s} {1 / statistics.median(t):.3f} steps/s  {nb / statistics.median(t):.2f}x median, "
              f"{nb_fastest / min(t):.2f}x fastest, pairs {min(ratios):.2f}-{max(ratios):.2f}x")
    if args.amp_check:
        amp_check(model, args.views, args.patches, steps=10)


if __name__ == "__main__":
    main()
