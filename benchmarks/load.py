"""Load time: clipag from its cached safetensors vs open_clip from the equivalent .pt checkpoint.

Random ViT-B-32 weights in CLIPAG's file format (an open_clip training checkpoint). Both loaders run in
this process, interleaved, and the medians are compared, since timings between processes vary here.

    python benchmarks/load.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["CLIPAG_CACHE"] = str(Path(tmp) / "cache")
        import open_clip
        import torch

        import clipag
        from clipag import registry
        from clipag.weights import import_checkpoint

        torch.manual_seed(0)
        model = open_clip.create_model("ViT-B-32")
        checkpoint = Path(tmp) / "CLIPAG_ViTB32.pt"
        state_dict = {f"module.{k}": v for k, v in model.state_dict().items()}
        torch.save({"epoch": 1, "name": "bench", "state_dict": state_dict}, checkpoint)
        del model, state_dict
        entry = dataclasses.replace(registry.REGISTRY["ViT-B/32"], size=checkpoint.stat().st_size)
        registry.REGISTRY["ViT-B/32"] = entry
        import_checkpoint(entry, checkpoint)

        def clipag_load() -> None:
            clipag.load("ViT-B/32", device="cpu")

        def open_clip_load() -> None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                open_clip.create_model_and_transforms("ViT-B-32", pretrained=str(checkpoint))

        timings: dict[str, list[float]] = {"clipag (cached safetensors)": [], "open_clip (.pt)": []}
        clipag_load(), open_clip_load()  # warm-up: imports, page cache
        for _ in range(args.repeats):
            for name, fn in zip(timings, (clipag_load, open_clip_load), strict=True):
                start = time.perf_counter()
                fn()
                timings[name].append(time.perf_counter() - start)

    medians = {name: statistics.median(values) for name, values in timings.items()}
    for name, value in medians.items():
        print(f"{name:30s} median {value:6.3f} s  (runs: {', '.join(f'{v:.3f}' for v in timings[name])})")
    ours, theirs = medians.values()
    print(f"speed-up (open_clip / clipag): {theirs / ours:.2f}x")


if __name__ == "__main__":
    main()
