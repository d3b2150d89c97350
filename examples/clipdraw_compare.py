"""CLIPDraw one prompt with two models from the same start strokes, and put them side by side.

    python examples/clipdraw_compare.py "a watercolor painting of a lighthouse" --model ViT-B/32 \
        --compare path/to/openai-ViT-B-32.pt --steps 300 --out lighthouse.png

``--model`` and ``--compare`` take anything ``clipag.load`` takes (a registry name, ``hf-hub:ORG/REPO``, a
folder or a checkpoint file). Each drawing is also written as SVG next to ``--out``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from clipag.adapters.clipdraw import DrawConfig, Drawer

from clipag.images import labelled_grid, save_png


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("prompt")
    parser.add_argument("--model", default="ViT-B/32")
    parser.add_argument("--compare", required=True, help="the second model")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--strokes", type=int, default=256)
    parser.add_argument("--seeds", type=int, default=2, help="drawings per model (seeds 0, 1, ...)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", type=Path, default=Path("clipdraw_compare.png"))
    args = parser.parse_args()

    config = DrawConfig(steps=args.steps, strokes=args.strokes, size=args.size)
    row = []
    for name in (args.model, args.compare):
        drawer = Drawer(name, device=args.device, config=config)
        for seed in range(args.seeds):  # the same seed gives both models the same start strokes
            drawing = drawer.run(args.prompt, seed=seed, progress=True)
            tag = Path(name).name.replace("/", "-")
            print(drawing.save_svg(args.out.with_name(f"{args.out.stem}-{tag}-{seed}.svg")))
            row.append(drawing.image)
    grid = labelled_grid([row], row_labels=[args.prompt], group_labels=[args.model, args.compare],
                         group_size=args.seeds)
    print(save_png(grid, args.out))


if __name__ == "__main__":
    main()
