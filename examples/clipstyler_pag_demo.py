"""CLIPStyler with a vanilla and a robust CLIP, judged: does the text's change show up in the stylized image?

Offline and on a CPU there is no photo-scale model to compare (CLIPAG and VGG19's ImageNet weights are
downloads), so this uses the PAG demo's two 32 px CLIPs (``python -m clipag.demo --out DIR``: a vanilla
model and its adversarially finetuned copy, trained on coloured shapes) on the task they understand:
recolouring. Each content image is a rendered shape, e.g. "a red ring on a black background"; the style text
names another colour, "a green ring on a black background", and the source text is the content's own caption
(in place of upstream's "a Photo", which the toy text tower never saw). CLIPStyler then trains its StyleNet
with its usual losses and crops, and the demo's independent judge (CNNs trained on renders, never on CLIP)
reads the result: is it now the target colour, is the shape still there?

    python examples/clipstyler_pag_demo.py --model vanilla=runs/pag_demo/vanilla/export \\
        --model robust=runs/pag_demo/robust/export -o clipstyler_pag.png

The content network is VGG19 with RANDOM weights (torchvision's initialisation, nothing downloaded), so the
content loss is a random-feature one. That and the toy models are what this measures with; see
docs/clipstyler.md for what it does and doesn't show.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch
from clipag.adapters.clipstyler.styler import StyleConfig, Styler
from clipag.adapters.clipstyler.vgg import VGGContent

from clipag.demo.judge import NONE, train_judge
from clipag.demo.shapes import CLASSES, COLORS, ShapeClass, caption, render
from clipag.images import labelled_grid, save_png, to_pil

NEXT_COLOR = dict(zip(COLORS, [*list(COLORS)[1:], list(COLORS)[0]], strict=True))  # red→green→blue→yellow→red


def tasks(backgrounds: list[str], size: int, seed: int) -> list[dict]:
    """One content render per class and background, and its recolouring target."""
    rng = random.Random(seed)
    out = []
    for background in backgrounds:
        for index, cls in enumerate(CLASSES):
            target = ShapeClass(NEXT_COLOR[cls.color], cls.shape)
            image = render(cls, background, size, rng)
            out.append({"content": torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1),
                        "label": index, "target": CLASSES.index(target), "source_text": caption(cls, background),
                        "text": caption(target, background)})
    return out


def judged(judge, images: torch.Tensor, jobs: list[dict]) -> dict[str, float]:
    predicted = judge.predict(images)
    forced = judge.forced_choice(images)

    def rate(hits: list[bool]) -> float:
        return round(100 * sum(hits) / len(hits), 1)

    return {"target class": rate([p == j["target"] for p, j in zip(predicted.tolist(), jobs, strict=True)]),
            "target colour (forced)": rate([CLASSES[f].color == CLASSES[j["target"]].color
                                            for f, j in zip(forced.tolist(), jobs, strict=True)]),
            "shape kept (forced)": rate([CLASSES[f].shape == CLASSES[j["label"]].shape
                                         for f, j in zip(forced.tolist(), jobs, strict=True)]),
            "still the content class": rate([p == j["label"] for p, j in zip(predicted.tolist(), jobs, strict=True)]),
            "no shape": rate([p == NONE for p in predicted.tolist()])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, metavar="NAME=PATH",
                        help="a CLIP to compare (repeat); NAME labels its column")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--size", type=int, default=64, help="content side (the models see 32 px views)")
    parser.add_argument("--crops", type=int, default=64)
    parser.add_argument("--crop-size", type=int, default=32)
    parser.add_argument("--backgrounds", nargs="+", default=["black", "white"])
    parser.add_argument("--judge-steps", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("-o", "--output", default="clipstyler_pag.png", help="grid PNG; NAME.json gets the table")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = dict(item.split("=", 1) for item in args.model)
    jobs = tasks(args.backgrounds, args.size, args.seed)
    config = StyleConfig(steps=args.steps, size=(args.size, args.size), crops=args.crops, crop_size=args.crop_size,
                         templates=("{}",), contrast=None)
    vgg = VGGContent.random(args.seed)
    judge = train_judge(args.judge_steps, seed=args.seed * 1000 + 7)
    contents = torch.stack([j["content"] for j in jobs])
    results = {"content (unstyled)": judged(judge, contents, jobs)}
    outputs: dict[str, torch.Tensor] = {}
    final_losses: dict[str, dict[str, float]] = {}  # mean over the images of each run's last step
    for name, path in models.items():
        start = time.perf_counter()
        styler = Styler(path, device="cpu", vgg=vgg, config=config, progress=False)
        runs = [styler.run(job["content"], job["text"], source=job["source_text"], seed=args.seed + k)
                for k, job in enumerate(jobs)]
        outputs[name] = torch.stack([run.raw[0] for run in runs])
        results[name] = judged(judge, outputs[name], jobs)
        final_losses[name] = {term: round(sum(run.losses[-1][term] for run in runs) / len(runs), 5)
                              for term in runs[0].losses[-1]} if runs[0].losses else {}
        print(f"{name}: {len(jobs)} images in {time.perf_counter() - start:.0f} s", flush=True)
    header = ["", *results["content (unstyled)"]]
    print(" | ".join(header))
    for name, row in results.items():
        print(" | ".join([name, *(f"{v:.1f}%" for v in row.values())]))
    cells = [[to_pil(job["content"].unsqueeze(0)), *(to_pil(outputs[n][k].unsqueeze(0)) for n in models)]
             for k, job in enumerate(jobs)]
    grid = labelled_grid(cells, [f"to {CLASSES[j['target']].color}" for j in jobs], ["content", *models],
                         group_size=1, cell_size=2 * args.size, label_width=72)
    output = Path(args.output)
    print(save_png(grid, output))
    print("mean final losses:", json.dumps(final_losses))
    output.with_suffix(".json").write_text(json.dumps({"config": vars(args), "results": results,
                                                       "final_losses": final_losses}, indent=2))


if __name__ == "__main__":
    main()
