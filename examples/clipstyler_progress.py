"""Style one photo after several texts with the Python API, keeping an animated GIF of each run's progress.

Uses :class:`clipag.adapters.clipstyler.Styler` directly: CLIP and VGG19 are loaded once and reused for every
text, and a step-by-step session lets you look at the StyleNet's output while it trains.

    python examples/clipstyler_progress.py photo.jpg "an oil painting" "a pencil sketch" -o out/
    python examples/clipstyler_progress.py photo.jpg "fire" --model FARE2-ViT-L/14 --steps 100 --every 5

Writes ``out/<text>.png`` (the finished image), ``out/<text>.gif`` (the output every ``--every`` steps) and
``out/grid.png`` (the photo and every result, labelled). VGG19's weights come from torchvision's cache
(``$TORCH_HOME/hub/checkpoints/vgg19-dcbb9e9d.pth``; downloaded on first use).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

from clipag.adapters.clipstyler.styler import StyleConfig, Styler, finish, load_content

from clipag.images import labelled_grid, save_gif, save_png, to_pil


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("content")
    parser.add_argument("texts", nargs="+")
    parser.add_argument("--model", default="ViT-B/32")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--size", type=int, nargs=2, default=(512, 512), metavar=("W", "H"))
    parser.add_argument("--crops", type=int, default=64)
    parser.add_argument("--crop-size", type=int, default=128)
    parser.add_argument("--every", type=int, default=10, help="a GIF frame every this many steps")
    parser.add_argument("--device", default=None)
    parser.add_argument("-o", "--output", default="clipstyler_out", help="output folder")
    args = parser.parse_args()

    config = dataclasses.replace(StyleConfig(), steps=args.steps, size=tuple(args.size), crops=args.crops,
                                 crop_size=args.crop_size)
    styler = Styler(args.model, device=args.device, config=config)
    content = load_content(args.content, config.size)
    out = Path(args.output)
    results = []
    for text in args.texts:
        session = styler.session(content, text, seed=0)
        frames = [to_pil(finish(session.output(), config.contrast))]
        for step in range(config.steps):
            session.step()
            if (step + 1) % args.every == 0 or step + 1 == config.steps:
                frames.append(to_pil(finish(session.output(), config.contrast)))
        result = session.result()
        name = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "style"
        print(save_png(result.image, out / f"{name}.png"), save_gif(frames, out / f"{name}.gif"),
              f"final loss {result.losses[-1]['loss']:.1f}" if result.losses else "")
        results.append(result.image)
    labels = ["content", *(text[:36] for text in args.texts)]
    grid = labelled_grid([[to_pil(content), *results]], group_labels=labels, group_size=1,
                         cell_size=min(256, config.size[0]))
    print(save_png(grid, out / "grid.png"))


if __name__ == "__main__":
    main()
