"""Speed of clipag's vector rasterizer and of one CLIPDraw step.

    python benchmarks/rasterizer.py [--threads 1] [--reps 15] [--device cpu] [--skip-step]

1. Forward + backward of CLIPDraw's scene (256 strokes at 224², diffvg's 2×2 samples requested): median wall
   and CPU time, and peak memory, against a *baseline measured in the same run*: the straightforward
   pure-PyTorch rasterizer (each stroke's distance field over its bounding box, composited one stroke after
   the other under autograd). Two scenes: upstream's start (short thin strokes) and a later-stage one (longer,
   wider strokes, as CLIPDraw's strokes become after a few hundred steps).
2. Scaling with strokes (16 to 1024) and resolution (112 to 512).
3. One whole CLIPDraw step with a random ViT-B/32: render, 4 augmentations, CLIP forward, backward (CLIP and
   render separately), optimizer; clipag's step against upstream's way of doing the same step.

On a shared machine, wall times include waiting for a core: compare the CPU-time columns, and the ratios.
Peak memory on CPU is the growth of the resident set during one forward + backward, measured in a fresh
subprocess; on CUDA, ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from clipag.adapters.clipdraw.drawer import DrawConfig, Drawer, initial_strokes
from clipag.adapters.clipdraw.geometry import STROKE, build_structure, flatten
from clipag.adapters.clipdraw.raster import rasterize


def scene(strokes: int, size: int, late: bool, device: str, seed: int = 0):
    """CLIPDraw's start (``late=False``) or a later-stage scene: spread 0.3 instead of 0.1, half-widths 1–6."""
    config = DrawConfig(strokes=strokes, size=size, radius=0.3 if late else 0.1)
    s = initial_strokes(config, seed)
    widths = s.widths if not late else torch.tensor([random.Random(seed + i).uniform(1, 6) for i in range(strokes)])
    structure = build_structure([[2] * k for k in s.segments], [False] * strokes,
                                [(STROKE, [i], True) for i in range(strokes)], device=device)
    leaves = [t.to(device).requires_grad_() for t in (s.points, widths, s.colors)]
    return leaves, structure


def ours(leaves, structure, size):
    image = rasterize(*leaves, structure, size, size, background=torch.ones(size, size, 4, device=leaves[0].device))
    return image[..., :3]


def ours_2x2(leaves, structure, size):
    """diffvg's 2×2 samples taken literally: 2×2 sub-pixels, each filtered analytically, averaged."""
    image = rasterize(*leaves, structure, size, size, samples=2,
                      background=torch.ones(size, size, 4, device=leaves[0].device))
    return image[..., :3]


def baseline(leaves, structure, size):
    """Per stroke: distance of every pixel of its bounding box to its line pieces, then "over" in order."""
    points, widths, colors = leaves
    a, b, r, layer = flatten(points, widths, structure)
    image = torch.ones(size, size, 3, device=points.device)
    for i in range(structure.num_layers):
        sel = layer == i
        pa, pb, rr = a[sel], b[sel], r[sel][0]
        lo = (torch.minimum(pa, pb).min(0).values - rr - 1).floor().clamp(0, size).long().tolist()
        hi = (torch.maximum(pa, pb).max(0).values + rr + 1).ceil().clamp(0, size).long().tolist()
        if hi[0] <= lo[0] or hi[1] <= lo[1]:
            continue
        ys, xs = torch.meshgrid(torch.arange(lo[1], hi[1], device=points.device),
                                torch.arange(lo[0], hi[0], device=points.device), indexing="ij")
        p = torch.stack([xs, ys], -1).to(points.dtype)[:, :, None] + 0.5  # (h, w, 1, 2)
        ab, ap = pb - pa, p - pa
        t = ((ap * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-12)).clamp(0, 1)
        d = ((ap - t[..., None] * ab).square().sum(-1) + 1e-12).sqrt().min(-1).values
        alpha = (rr + 0.5 - d).clamp(0, 1)[..., None] * colors[i, 3]
        patch = image[lo[1]:hi[1], lo[0]:hi[0]]
        image = image.clone()
        image[lo[1]:hi[1], lo[0]:hi[0]] = patch * (1 - alpha) + alpha * colors[i, :3]
    return image


def timed(fn, reps: int, sync) -> tuple[float, float]:
    walls, cpus = [], []
    for _ in range(reps):
        sync()
        w, c = time.perf_counter(), time.process_time()
        fn()
        sync()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return statistics.median(walls) * 1e3, statistics.median(cpus) * 1e3


def fwd_bwd(impl, leaves, structure, size):
    def run():
        for leaf in leaves:
            leaf.grad = None
        impl(leaves, structure, size).sum().backward()
    return run


_PEAK = """
import os, sys, threading, time, torch
sys.argv = ['x']
torch.set_num_threads({threads})
from benchmarks.rasterizer import scene, {impl}
leaves, st = scene({strokes}, {size}, {late}, '{device}')
{impl}(leaves, st, {size}).sum().backward()
[leaf.grad.zero_() for leaf in leaves]
rss = lambda: int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
if torch.cuda.is_available() and '{device}'.startswith('cuda'):
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
    {impl}(leaves, st, {size}).sum().backward(); torch.cuda.synchronize()
    print((torch.cuda.max_memory_allocated() - base) / 2**20)
else:
    base, peak, done = rss(), [0], [False]
    def poll():
        while not done[0]:
            peak[0] = max(peak[0], rss()); time.sleep(0.0002)
    thread = threading.Thread(target=poll); thread.start()
    {impl}(leaves, st, {size}).sum().backward()
    done[0] = True; thread.join()
    print(max(0, peak[0] - base) / 2**20)
"""


def peak_memory(args, impl: str, strokes: int, size: int, late: bool) -> float:
    """MiB above the steady state during one forward + backward: CUDA's allocator peak, or on CPU the resident
    set sampled every 0.2 ms in a fresh process whose allocator returns every freed block at once."""
    code = _PEAK.format(threads=args.threads, impl=impl, strokes=strokes, size=size, late=late, device=args.device)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "0", "MALLOC_TRIM_THRESHOLD_": "0"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env,
                         cwd=Path(__file__).resolve().parents[1])
    return float(out.stdout.split()[-1])


def clipdraw_step(args) -> None:
    import torchvision.transforms as T

    from clipag.model import build_model

    config = json.loads('{"embed_dim": 512, "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, '
                        '"patch_size": 32}, "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, '
                        '"heads": 8, "layers": 12}}')
    torch.manual_seed(0)
    model = build_model(config, device=args.device)
    drawer = Drawer(model, device=args.device, config=DrawConfig())
    s = initial_strokes(drawer.config, 0)
    strokes = type(s)(s.points.to(args.device).requires_grad_(), s.widths.to(args.device).requires_grad_(),
                      s.colors.to(args.device).requires_grad_(), s.segments)
    text = drawer._text(["a drawing of a cat"])
    optimizer = torch.optim.Adam([strokes.points, strokes.widths, strokes.colors])
    parts: dict[str, list[float]] = {k: [] for k in ("render", "augment", "CLIP forward", "CLIP+augment backward",
                                                     "render backward", "optimizer", "step")}
    upstream_aug = T.Compose([T.RandomPerspective(fill=1, p=1, distortion_scale=0.5),
                              T.RandomResizedCrop(224, scale=(0.7, 0.9))])
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def ours_step(t):
        marks = [time.process_time()]
        with drawer._mode():
            image = drawer.render(strokes)
            sync(), marks.append(time.process_time())
            leaf = image.detach().requires_grad_()
            views = drawer.views(leaf, t)
            sync(), marks.append(time.process_time())
            features = torch.nn.functional.normalize(drawer.model.encode_image(views).float(), dim=-1)
            loss = -(features @ text.T).sum()
            sync(), marks.append(time.process_time())
            loss.backward()
            sync(), marks.append(time.process_time())
            image.backward(leaf.grad)
            sync(), marks.append(time.process_time())
        optimizer.step()
        optimizer.zero_grad()
        sync(), marks.append(time.process_time())
        for key, a, b in zip(list(parts)[:6], marks[:-1], marks[1:], strict=True):
            parts[key].append((b - a) * 1e3)
        parts["step"].append((marks[-1] - marks[0]) * 1e3)

    def upstream_step(t):  # 4 torchvision calls, weights not frozen (their gradients computed every step)
        image = drawer.render(strokes)
        views = torch.cat([upstream_aug(image) for _ in range(4)])
        features = model.encode_image(views)
        loss = -torch.cosine_similarity(text, features, dim=1).sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        model.zero_grad(set_to_none=True)

    for t in range(2):
        ours_step(t), upstream_step(t)
    for v in parts.values():
        v.clear()
    upstream = []
    for t in range(args.step_reps):  # interleaved, so both see the same machine load
        ours_step(t)
        c = time.process_time()
        upstream_step(t)
        sync()
        upstream.append((time.process_time() - c) * 1e3)
    total = statistics.median(parts["step"])
    print(f"\n3. one CLIPDraw step, random ViT-B/32, {args.device}, CPU ms (median of {args.step_reps}):")
    for key, values in parts.items():
        if key != "step":
            print(f"   {key:24s} {statistics.median(values):8.1f}  ({100 * statistics.median(values) / total:4.1f}%)")
    print(f"   {'clipag step':24s} {total:8.1f}")
    slow = statistics.median(upstream)
    print(f"   {'upstream-style step':24s} {slow:8.1f}   ratio {slow / total:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--step-reps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-step", action="store_true", help="skip the CLIPDraw step (it needs ~10 s per rep)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    print(f"torch {torch.__version__}, {args.device}, {args.threads} thread(s); medians of {args.reps}")
    print("\n1. 256 strokes at 224x224, forward + backward (wall ms / CPU ms / peak MiB):")
    for late in (False, True):
        leaves, st = scene(256, 224, late, args.device)
        for impl in (ours, ours_2x2, baseline):
            fwd_bwd(impl, leaves, st, 224)()
        results = {}
        for _ in range(args.reps):  # interleave the two
            for name, impl in (("clipag", ours), ("clipag 2x2", ours_2x2), ("baseline", baseline)):
                results.setdefault(name, []).append(timed(fwd_bwd(impl, leaves, st, 224), 1, sync))
        med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in results.items()}
        names = {"clipag": "ours", "clipag 2x2": "ours_2x2", "baseline": "baseline"}
        mem = {k: peak_memory(args, names[k], 256, 224, late) for k in med}
        label = "later-stage scene" if late else "CLIPDraw's start "
        for k, (w, c) in med.items():
            print(f"   {label} {k:10s} {w:8.1f} {c:8.1f} {mem[k]:8.1f}")
        print(f"   {label} ratio (baseline/clipag, CPU time): {med['baseline'][1] / med['clipag'][1]:.1f}x")
    print("\n2. scaling, clipag, forward + backward CPU ms (start / later-stage scene):")
    for strokes in (16, 64, 256, 1024):
        row = [timed(fwd_bwd(ours, *scene(strokes, 224, late, args.device), 224), max(3, args.reps // 3), sync)[1]
               for late in (False, True)]
        print(f"   {strokes:5d} strokes at 224: {row[0]:8.1f} {row[1]:8.1f}")
    for size in (112, 224, 512):
        row = [timed(fwd_bwd(ours, *scene(256, size, late, args.device), size), max(3, args.reps // 3), sync)[1]
               for late in (False, True)]
        print(f"   256 strokes at {size:3d}: {row[0]:8.1f} {row[1]:8.1f}")
    if not args.skip_step:
        clipdraw_step(args)


if __name__ == "__main__":
    main()
