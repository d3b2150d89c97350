"""CLIPDraw with the PAG demo's vanilla and robust CLIPs, judged by the demo's independent judge.

    python -m clipag.demo --out DEMO                 # once: the two 32 px models (see docs/demo.md)
    python benchmarks/clipdraw_pag_demo.py DEMO --steps 300 --seeds 2 --grid docs/images/clipdraw_pag_demo.png

The paper's plug-and-play claim in miniature: the same CLIPDraw run (same prompts, seeds and start strokes)
with the vanilla model (the baseline) and its adversarially finetuned copy. Prompts are the demo's class
prompts on a white background (CLIPDraw paints on white). The canvas is upstream's 224 px with 256 strokes;
each view is downsampled to the models' 32 px input, as a 224 px CLIP sees a large drawing. The judge is the
demo's (CNNs that never saw CLIP, with a "none" class), rebuilt from its seed, reading each drawing after its
usual box downsample to 16 px. Prints the judge's scores for both models and for the start strokes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torchvision.transforms.functional as TF
from clipag.adapters.clipdraw.drawer import DrawConfig, Drawer, initial_strokes
from PIL import Image

from clipag.demo.judge import NONE, train_judge
from clipag.demo.pipeline import DemoConfig
from clipag.demo.shapes import CLASSES, SHAPES, class_prompt
from clipag.images import labelled_grid, save_png, to_pil


def judged(judge, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    predicted, forced = judge.predict(images), judge.forced_choice(images)
    shapes = len(SHAPES)
    return {"accuracy": (predicted == labels).float().mean().item(),
            "shape_accuracy": ((predicted % shapes == labels % shapes) & (predicted != NONE)).float().mean().item(),
            "forced_choice": (forced == labels).float().mean().item(),
            "rejected": (predicted == NONE).float().mean().item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("demo", type=Path, help="the folder `python -m clipag.demo --out` wrote")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--strokes", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--grid", type=Path, default=None, help="write the labelled grid here")
    parser.add_argument("--json", type=Path, default=None, help="write the scores here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    demo = DemoConfig()
    config = DrawConfig(steps=args.steps, strokes=args.strokes, size=args.size, frame_every=0)
    t0 = time.perf_counter()
    judge = train_judge(demo.judge_steps, size=32, seed=demo.seed * 1000 + 7, members=demo.judge_members)
    prompts = [class_prompt(cls, "white") for cls in CLASSES]
    labels = torch.arange(len(CLASSES)).repeat_interleave(args.seeds)
    images: dict[str, list] = {}
    for name in ("vanilla", "robust"):
        drawer = Drawer(args.demo / name / "export", device="cpu", config=config)
        images[name] = [drawer.run(prompt, seed=seed).image for prompt in prompts for seed in range(args.seeds)]
        print(f"{name}: {len(images[name])} drawings, {time.perf_counter() - t0:.0f} s so far", flush=True)
    with torch.no_grad():  # the start strokes depend on the seed only; any drawer renders them
        per_seed = [to_pil(drawer.render(initial_strokes(config, seed))) for seed in range(args.seeds)]
    images["start"] = per_seed * len(prompts)
    scores = {name: judged(judge, torch.stack([TF.to_tensor(im) for im in ims]), labels)
              for name, ims in images.items()}
    print(json.dumps({"steps": args.steps, "seeds": args.seeds, "strokes": args.strokes, "size": args.size,
                      "chance": 1 / len(CLASSES), "scores": scores}, indent=2))
    for name in ("vanilla", "robust"):
        print(f"{name:8s} judge accuracy {scores[name]['accuracy']:.2f}  shape {scores[name]['shape_accuracy']:.2f}  "
              f"forced choice {scores[name]['forced_choice']:.2f}  rejected {scores[name]['rejected']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(scores, indent=2))
    if args.grid:
        cells = [[*images["vanilla"][i * args.seeds:(i + 1) * args.seeds],
                  *images["robust"][i * args.seeds:(i + 1) * args.seeds]] for i in range(len(prompts))]
        small = [[im.resize((96, 96), Image.Resampling.LANCZOS) for im in row] for row in cells]
        grid = labelled_grid(small, row_labels=[c.name for c in CLASSES], group_labels=["vanilla CLIP", "robust CLIP"],
                             group_size=args.seeds, label_width=90)
        # 128 colours: a quarter of the file size, and nothing visible lost at this scale
        print(save_png(grid.quantize(128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE), args.grid))


if __name__ == "__main__":
    main()
