"""Milliseconds per generation step on CUDA: ViT-B/32, the notebook's 32 global + 32 patch views.

Target: 100 steps in under 1 s on an H100 (the notebook reports 14 s on a Colab GPU). Also times the
straightforward notebook loop on the same GPU and model, bf16 against fp16 autocast, and eager against
``compile=True`` (torch.compile with CUDA graphs: the eager step is bound by kernel launches), and images per
hour per GPU against ``--batch K`` (K canvases sharing each encoder call, as ``clipag generate --prompts FILE
--batch K`` runs them), with the peak GPU memory of each K.

    python benchmarks/gpu_generate.py                        # random-weight ViT-B-32 (no download)
    python benchmarks/gpu_generate.py --model ViT-B/32       # CLIPAG weights, if cached
    python benchmarks/gpu_generate.py --steps 100 --no-baseline
    python benchmarks/gpu_generate.py --batch 1 2 4 8 16 --no-baseline --no-compile

Needs a CUDA device; without one it says so and exits with status 2.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch


def cuda_ms(fn: Callable[[], object], steps: int) -> list[float]:
    """Per-step wall times in ms, synchronizing around each step (the loop syncs once per step anyway)."""
    times = []
    for _ in range(steps):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t) * 1e3)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="anything clipag.load takes (default: random ViT-B-32)")
    parser.add_argument("--views", type=int, default=32)
    parser.add_argument("--patches", type=int, default=32)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--baseline-steps", type=int, default=10)
    parser.add_argument("--no-baseline", action="store_true", help="skip the notebook loop")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile (CUDA graphs) rows")
    parser.add_argument("--batch", type=int, nargs="*", default=[1, 2, 4, 8],
                        help="canvases per step (--batch K) for the images/hour rows (none: skip them)")
    parser.add_argument("--batch-steps", type=int, default=10, help="timed steps per K")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_generate: no CUDA device here; run this on a GPU machine (CPU: benchmarks/generate.py)",
              file=sys.stderr)
        return 2

    import open_clip

    from clipag.generation import GenerateConfig, Generator
    from clipag.model import build_model

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from generate import PROMPT, NotebookLoop  # the same notebook re-implementation as the CPU benchmark

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    device = torch.device("cuda")
    if args.model:
        import clipag

        model = clipag.load(args.model, device=device, precision="fp32")[0]
        name = args.model
    else:
        torch.manual_seed(0)
        model = build_model(open_clip.get_model_config("ViT-B-32"), device=device)
        name = "ViT-B-32 (random weights)"
    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | {name} | "
          f"{args.views}+{args.patches} views | {args.steps} steps")

    ms_per_step = {}
    variants = [(amp, False) for amp in ("bf16", "fp16")]
    variants += [] if args.no_compile else [(amp, True) for amp in ("bf16", "fp16")]
    for amp, compiled in variants:
        label = f"amp={amp}{' compile' if compiled else ''}"
        config = GenerateConfig(global_views=args.views, patch_views=args.patches, steps=args.steps, amp=amp,
                                compile=compiled)
        generator = Generator(model, prior=None, config=config)
        session = generator.session(PROMPT)
        t = time.perf_counter()
        try:
            cuda_ms(session.step, 3)  # warm-up: cuBLAS handles, allocator; with compile, tracing and CUDA graphs
        except Exception as e:  # noqa: BLE001 (a compiler failure is a result to report, not a crash)
            print(f"clipag {label}: failed: {type(e).__name__}: {str(e)[:300]}")
            continue
        warmup = time.perf_counter() - t
        times = cuda_ms(session.step, args.steps - 3)
        ms = ms_per_step[label] = statistics.median(times)
        print(f"clipag {label}: {ms:.2f} ms/step (median; p90 {sorted(times)[int(0.9 * len(times))]:.2f}) "
              f"-> {args.steps} steps in {ms * args.steps / 1e3:.2f} s (first 3 steps: {warmup:.1f} s)")
        torch.cuda.synchronize()
        t = time.perf_counter()
        result = generator.run(PROMPT, seed=1)  # the same Generator: a second image reuses compiled graphs
        torch.cuda.synchronize()
        print(f"  full run() incl. text encoding, start image, frames: {time.perf_counter() - t:.2f} s, "
              f"best global loss {result.best_loss:.4f} at step {result.best_step}")
    print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")

    if args.batch:
        images_per_hour(model, args)

    if not args.no_baseline:
        loop = NotebookLoop(model, args.views, args.patches, model.visual.input_resolution)
        cuda_ms(loop.step, 2)
        base = statistics.median(cuda_ms(loop.step, args.baseline_steps))
        model.zero_grad(set_to_none=True)
        print(f"notebook loop (fp16 autocast, weights not frozen): {base:.2f} ms/step "
              f"-> {args.steps} steps in {base * args.steps / 1e3:.2f} s")
        for label, ms in ms_per_step.items():
            print(f"  {label}: {base / ms:.1f}x the notebook loop")
    return 0


def images_per_hour(model: torch.nn.Module, args: argparse.Namespace) -> None:
    """K canvases per step (each its own optimizer and random stream), bf16: images/hour/GPU at 100 steps an image."""
    from generate import PROMPT

    from clipag.generation import GenerateConfig, Generator

    print(f"--batch K (bf16 autocast, {args.views}+{args.patches} views per canvas, 100 steps per image):")
    base = None
    for k in args.batch:
        config = GenerateConfig(global_views=args.views, patch_views=args.patches, amp="bf16", frame_every=0)
        generator = Generator(model, prior=None, config=config)
        step = functools.partial(generator.step_many, [generator.session(PROMPT, seed=i) for i in range(k)])
        torch.cuda.reset_peak_memory_stats()
        try:
            cuda_ms(step, 3)  # warm-up (the first step also measures what a view costs)
            ms = statistics.median(cuda_ms(step, args.batch_steps))
        except torch.cuda.OutOfMemoryError:
            print(f"  K={k}: out of GPU memory")
            break
        per_hour = k * 3600 / (100 * ms / 1e3)
        base = base or per_hour
        print(f"  K={k:3d}: {ms:8.2f} ms/step, {per_hour:9.0f} images/hour/GPU ({per_hour / base:.2f}x K=1), "
              f"{generator.batcher.views_per_call(k * (args.views + args.patches))} views per encoder call, "
              f"peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
        step = generator = None
        torch.cuda.empty_cache()


if __name__ == "__main__":
    sys.exit(main())
