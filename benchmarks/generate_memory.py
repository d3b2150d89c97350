"""Peak memory and seconds per step of ``clipag generate`` against the views per encoder call, on the CPU.

Each variant runs in its own process (a process's resident peak cannot be reset between variants): it loads a
random-weight model written as a Hub-layout folder, runs ``--steps`` generation steps, and reports the whole
process's resident peak (``VmHWM``: imports, weights, activations) and the median seconds of the steps after
the first (the first also measures what a view costs). The first variant, all views in one call, is the
baseline the others are compared with, in the same run.

    python benchmarks/generate_memory.py --arch ViT-B-32 --views 16 --patches 16 --per-call 32 16 8 4 2
    python benchmarks/generate_memory.py --arch ViT-L-14 --views 4 --patches 4 --per-call 8 4 2 1 --steps 2
    python benchmarks/generate_memory.py --arch ViT-L-14 --views 32 --patches 32 --memory 8GB --steps 2

``--memory`` runs one variant under that budget (the views per call are then planned from the measured cost of a
view). Timings between processes vary 10-30% on a shared machine; compare within one run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, statistics, sys, time
import torch
from clipag.generation import GenerateConfig, Generator

folder, views, patches, steps, per_call, memory, threads = sys.argv[1:8]
torch.set_num_threads(int(threads))
config = GenerateConfig(global_views=int(views), patch_views=int(patches), steps=int(steps), frame_every=0,
                        max_views_per_batch=int(per_call) if per_call != "-" else None,
                        memory=memory if memory != "-" else None)
gen = Generator(folder, device="cpu", prior=None, config=config)
loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
session = gen.session("a photo of a red apple on a wooden table", seed=0)
times = []
for _ in range(int(steps)):
    calls = gen.batcher.calls
    t = time.perf_counter()
    session.step()
    times.append(time.perf_counter() - t)
total = int(views) + int(patches)
print(json.dumps({"peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "loaded": loaded,
                  "first": times[0], "step": statistics.median(times[1:] or times),
                  "per_call": gen.batcher.views_per_call(total), "calls": gen.batcher.calls - calls,
                  "view_gb": (gen.batcher.view_bytes or 0) / 1e9}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="ViT-B-32", help="open_clip architecture, random weights")
    parser.add_argument("--views", type=int, default=16)
    parser.add_argument("--patches", type=int, default=16)
    parser.add_argument("--per-call", type=int, nargs="*", default=[],
                        help="views per encoder call to compare with one call for all views")
    parser.add_argument("--memory", default=None, help="also run under this --memory budget")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    total = args.views + args.patches
    variants = [(str(n), "-") for n in [total, *[n for n in args.per_call if n != total]]]
    if args.memory:
        variants = [("-", args.memory)] if not args.per_call else [*variants, ("-", args.memory)]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / args.arch
        subprocess.run([sys.executable, str(Path(__file__).with_name("make_random_model.py")), args.arch, str(folder)],
                       check=True, capture_output=True)
        print(f"{args.arch} (random weights), CPU, {args.threads} threads, {args.views}+{args.patches} views, "
              f"{args.steps} steps per variant; peak = the process's resident high-water mark (GB = 1e9 bytes)")
        print(f"{'views per call':>15s}{'calls/step':>11s}{'peak GB':>9s}{'after load':>11s}{'s/step':>8s}"
              f"{'1st step s':>11s}{'vs one call':>12s}")
        base = None
        for per_call, memory in variants:
            out = subprocess.run([sys.executable, "-c", CHILD, str(folder), str(args.views), str(args.patches),
                                  str(args.steps), per_call, memory, str(args.threads)],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                reason = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"
                print(f"{per_call:>15s}  failed: {reason}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            label = f"{r['per_call']}" + (f" (--memory {memory})" if memory != "-" else "")
            base = base or r["step"]
            print(f"{label:>15s}{r['calls']:>11d}{r['peak'] * 2**30 / 1e9:>9.2f}{r['loaded'] * 2**30 / 1e9:>11.2f}"
                  f"{r['step']:>8.2f}{r['first']:>11.2f}{r['step'] / base:>11.2f}x"
                  + (f"   measured {r['view_gb']:.3f} GB/view" if r["view_gb"] else ""))


if __name__ == "__main__":
    main()
