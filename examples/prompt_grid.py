"""A grid of generations: one row per prompt, one column per seed, each row labelled with its prompt.

    python examples/prompt_grid.py "a red apple" "a lighthouse at sunset" "a cat" --seeds 3 -o grid.png
    python examples/prompt_grid.py "a castle" "a forest" --model FARE2-ViT-L/14 --steps 200

One :class:`clipag.generation.Generator` serves every image (the model is loaded once), and
``clipag.images`` lays out and writes the labelled grid (``clipag generate --n`` writes the unlabelled one).
"""

import argparse

from clipag.generation import GenerateConfig, Generator
from clipag.images import labelled_grid, save_png


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("prompts", nargs="+", metavar="PROMPT")
    parser.add_argument("--model", default="ViT-B/32", help="anything clipag.load takes (default: CLIPAG)")
    parser.add_argument("--seeds", type=int, default=3, help="images per prompt: seeds 0, 1, ...")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--views", type=int, default=32, help="global views per step")
    parser.add_argument("--patches", type=int, default=32, help="patch crops per step")
    parser.add_argument("--no-prior", action="store_true", help="start from noise even if a prior is cached")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("-o", "--output", default="prompt-grid.png")
    args = parser.parse_args()

    config = GenerateConfig(steps=args.steps, global_views=args.views, patch_views=args.patches)
    generator = Generator(args.model, device=args.device, prior=None if args.no_prior else "auto", config=config)
    rows = [[generator.run(prompt, seed=seed, progress=True).image for seed in range(args.seeds)]
            for prompt in args.prompts]
    print(save_png(labelled_grid(rows, row_labels=args.prompts), args.output))


if __name__ == "__main__":
    main()
