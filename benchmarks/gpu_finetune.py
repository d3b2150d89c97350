"""GPU throughput and MFU of ``clipag.finetune``: ViT-B/32, bf16, PGD-2 and PGD-10, against clean finetuning.

Times the training loop's own micro-step (``clipag.finetune.step.AdversarialStep``) plus backward and AdamW
on one GPU, with device-resident random images and distinct captions so the data loader is not measured.
Clean finetuning (PGD-0) runs first in the same process as the baseline; each row prints images/s, achieved
TFLOP/s, MFU against the GPU's dense bf16 peak, peak memory and the cost ratio to the baseline. The last
line estimates the 8-GPU wall time of the recipe in docs/finetune.md, assuming linear scaling.

    python benchmarks/gpu_finetune.py                    # ViT-B-32, batch 256, PGD-0/2/10
    python benchmarks/gpu_finetune.py --compile          # torch.compile the model as --compile does
    python benchmarks/gpu_finetune.py --end-to-end       # also a short real run (synthetic data loader)

Model FLOPs per image: (2k + 3) image-tower forwards for PGD-k (a forward and an input-only backward per
attack step, a forward and full backward for the update) plus one frozen text-tower forward per caption.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' datasheets, in FLOP/s; most specific name first.
PEAK_BF16 = [("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12), ("GH200", 989e12),
             ("B200", 2250e12), ("A100", 312e12), ("A800", 312e12), ("L40S", 362e12), ("L4", 121e12),
             ("A10", 125e12), ("RTX 4090", 165e12), ("RTX 3090", 71e12)]
RECIPE_SAMPLES = 25_600_000  # docs/finetune.md: 25k steps × global batch 1024 (8 GPUs × 128)


def peak_flops(name: str, override: float | None) -> float | None:
    if override:
        return override * 1e12
    return next((peak for key, peak in PEAK_BF16 if key in name), None)


def bench(model_name: str, attack_steps: int, batch: int, iters: int, warmup: int, compile_: bool,
          device: torch.device) -> dict[str, float]:
    from clipag.eval import PixelCLIP
    from clipag.finetune.args import parse_args
    from clipag.finetune.build import Precision, create_model, param_groups
    from clipag.finetune.losses import Objective
    from clipag.finetune.step import AdversarialStep

    args = parse_args(["--model", model_name, "--precision", "bf16", "--batch-size", str(batch), "--epsilon", "1.5",
                       "--attack-steps", str(attack_steps), "--epsilon-warmup", "0"])
    model, _, preprocess = create_model(args)
    pixel = PixelCLIP(model, preprocess["mean"], preprocess["std"]).to(device)
    forward = torch.compile(pixel) if compile_ else pixel
    precision = Precision("bf16", device)
    step = AdversarialStep(pixel, forward, forward, Objective("contrastive", pixel), precision, "l2", attack_steps)
    optimizer = torch.optim.AdamW(param_groups(model, args.wd), lr=args.lr, betas=(args.beta1, args.beta2),
                                  eps=args.adam_eps, fused=True)
    size = model.visual.input_resolution
    images = torch.rand(batch, 3, size, size, device=device)
    tokens = torch.randint(1, 49406, (batch, model.context_length), device=device, dtype=torch.int32)
    tokens[:, 0], tokens[:, -1] = 49406, 49407  # distinct captions: SOT ... EOT
    labels = torch.full((batch,), -1, device=device)
    generator = torch.Generator(device).manual_seed(0)
    torch.cuda.reset_peak_memory_stats(device)
    for i in range(warmup + iters):
        if i == warmup:
            torch.cuda.synchronize(device)
            start = time.perf_counter()
        loss, *_ = step(images, tokens, labels, epsilon=1.5 if attack_steps else 0.0, generator=generator)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - start) / iters
    flops = AdversarialStep.flops_per_image(model, attack_steps) * batch
    result = {"images_per_s": batch / seconds, "tflops": flops / seconds / 1e12,
              "memory_gib": torch.cuda.max_memory_allocated(device) / 2**30}
    del step, optimizer, model, pixel, forward
    torch.cuda.empty_cache()
    return result


def end_to_end(model_name: str, attack_steps: int, batch: int, steps: int, workers: int) -> float:
    """images/s of a real ``clipag.finetune`` run on the synthetic source, data loader included."""
    import tempfile

    from clipag.finetune import train

    with tempfile.TemporaryDirectory() as out:
        result = train(["--model", model_name, "--precision", "bf16", "--batch-size", str(batch), "--steps", str(steps),
                        "--attack-steps", str(attack_steps), "--epsilon", "1.5", "--epsilon-warmup", "0",
                        "--workers", str(workers), "--output-dir", out, "--log-every", str(steps), "--no-export",
                        "--no-progress", "--save-every", str(10 * steps)])
    return result.metrics["images_per_s"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--attack-steps", type=int, nargs="+", default=[0, 2, 10], help="0 = the clean baseline")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=None, help="override the GPU's dense bf16 peak")
    parser.add_argument("--end-to-end", action="store_true", help="also time a real run with the data loader")
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_finetune: no CUDA device here; this benchmark measures GPU throughput and needs one.",
              file=sys.stderr)
        return 2
    device = torch.device("cuda", 0)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    name = torch.cuda.get_device_name(device)
    peak = peak_flops(name, args.peak_tflops)
    print(f"{name}, torch {torch.__version__}, {args.model}, batch {args.batch_size}, bf16, "
          f"compile={'on' if args.compile else 'off'}, peak {peak / 1e12 if peak else '?'} TFLOP/s")
    print(f"{'attack':>8} {'img/s':>9} {'TFLOP/s':>8} {'MFU':>6} {'GiB':>6} {'cost vs clean':>14}")
    baseline = None
    results = {}
    for k in args.attack_steps:
        r = bench(args.model, k, args.batch_size, args.iters, args.warmup, args.compile, device)
        results[k] = r
        baseline = baseline or (r["images_per_s"] if k == 0 else None)
        mfu = f"{100 * r['tflops'] * 1e12 / peak:5.1f}%" if peak else "    ?"
        ratio = f"{baseline / r['images_per_s']:13.2f}×" if baseline else "            -"
        print(f"{'PGD-' + str(k):>8} {r['images_per_s']:9.0f} {r['tflops']:8.1f} {mfu} {r['memory_gib']:6.1f} {ratio}")
    for k, r in results.items():
        if k:
            hours = RECIPE_SAMPLES / (8 * r["images_per_s"]) / 3600
            print(f"docs/finetune.md recipe ({RECIPE_SAMPLES:,} samples) with PGD-{k} on 8 such GPUs: "
                  f"~{hours:.1f} h, if throughput scales linearly")
    if args.end_to_end:
        for k in [k for k in args.attack_steps if k]:
            speed = end_to_end(args.model, k, args.batch_size, 30, args.workers)
            print(f"end to end, PGD-{k}, synthetic loader with {args.workers} workers: {speed:.0f} img/s "
                  f"({speed / results[k]['images_per_s']:.0%} of the step alone)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
