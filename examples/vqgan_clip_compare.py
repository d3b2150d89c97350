"""VQGAN+CLIP with two (or more) CLIPs side by side: same VQGAN, prompts, seeds and settings.

    python examples/vqgan_clip_compare.py --model ViT-B/32 --label CLIPAG --model openai-vit-b32.pt --label OpenAI \
        --prompt "a lighthouse on a cliff at sunset" --prompt "a red apple on a table" --seeds 0 1 --steps 300

One row per prompt, one group of columns per model (one column per seed), drawn by
``clipag.images.labelled_grid``. Runs offline with any models ``clipag.load`` reads (a checkpoint file works).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from clipag.adapters.vqgan_clip import VQGANCLIP, VQGANCLIPConfig

from clipag.images import labelled_grid, save_png


def compare(models: list[str], prompts: list[str], seeds: list[int], settings: VQGANCLIPConfig, vqgan: str,
            config: str | None, checkpoint: str | None, device: str) -> tuple[list[list], dict]:
    """``cells[prompt][model * seeds]`` images, and the final loss of each run."""
    cells: list[list] = [[] for _ in prompts]
    losses: dict[str, dict[str, list[float]]] = {}
    shared_vqgan = None  # loaded with the first CLIP, then handed to the others (a checkpoint can be ~1 GB)
    for model in models:
        if shared_vqgan is None:
            gen = VQGANCLIP(model, vqgan, config=config, checkpoint=checkpoint, device=device, settings=settings)
            shared_vqgan = gen.vqgan
        else:
            gen = VQGANCLIP(model, shared_vqgan, device=device, settings=settings)
        for row, prompt in enumerate(prompts):
            for seed in seeds:
                result = gen.run(prompt, seed=seed)
                cells[row].append(result.image)
                losses.setdefault(model, {}).setdefault(prompt, []).append(result.losses[-1] if result.losses else 0)
    return cells, losses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, help="a CLIP for clipag.load; repeat to compare")
    parser.add_argument("--label", action="append", default=[], help="column-group label per --model")
    parser.add_argument("--prompt", action="append", required=True, help="VQGAN-CLIP prompt syntax; repeatable")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--vqgan", default="vqgan_imagenet_f16_16384")
    parser.add_argument("--vqgan-config", default=None)
    parser.add_argument("--vqgan-checkpoint", default=None)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("-s", "--size", nargs=2, type=int, default=[256, 256])
    parser.add_argument("--cutn", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--cell-size", type=int, default=None, help="grid cell side (default: the image width)")
    parser.add_argument("-o", "--output", default="vqgan_clip_compare.png")
    args = parser.parse_args(argv)
    labels = args.label or args.model
    if len(labels) != len(args.model):
        parser.error("give one --label per --model (or none)")
    settings = VQGANCLIPConfig(steps=args.steps, size=tuple(args.size), cutn=args.cutn)
    cells, losses = compare(args.model, args.prompt, args.seeds, settings, args.vqgan, args.vqgan_config,
                            args.vqgan_checkpoint, args.device)
    grid = labelled_grid(cells, row_labels=args.prompt, group_labels=labels, group_size=len(args.seeds),
                         cell_size=args.cell_size)
    print(save_png(grid, args.output))
    Path(args.output).with_suffix(".json").write_text(json.dumps({"labels": labels, "final_loss": losses}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
