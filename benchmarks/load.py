"""Loading CLIPAG's file: the first-time conversion, and every load after it, against open_clip.

1. First load of a replica of the real ``CLIPAG_ViTB32.pt`` (an open_clip 2023 training checkpoint: random
   ViT-B-32 weights, AdamW state over the image tower, numpy learning rates; written by tests/replicas.py, about
   1.3 GB). clipag reads it safely and converts it to safetensors in an empty cache; open_clip can only read it
   with ``weights_only=False``. Each runs in a fresh process, which reports its time and its peak resident
   memory (the memory-mapped optimizer state must not be read, let alone held twice).
2. Warm loads: ``clipag.load`` from its cached safetensors vs open_clip from the ``.pt``, interleaved in one
   process (timings between processes vary here), medians compared.

    python benchmarks/load.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _peak_rss() -> int:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss it is not inherited across fork + exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # not Linux: KiB on most systems


def _child(mode: str, checkpoint: str) -> None:
    """One first load in this fresh process; prints JSON with seconds and peak RSS before/after."""
    import open_clip  # noqa: F401 - imports are not what is measured
    import torch  # noqa: F401

    import clipag

    before = _peak_rss()
    start = time.perf_counter()
    if mode == "clipag":
        clipag.load(checkpoint, device="cpu")
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            open_clip.create_model_and_transforms("ViT-B-32", pretrained=checkpoint, weights_only=False)
    print(json.dumps({"seconds": time.perf_counter() - start, "peak_rss": _peak_rss(), "after_imports": before}))


def first_load(checkpoint: Path, cache: Path) -> dict[str, dict]:
    results = {}
    for mode in ("clipag", "open_clip"):
        env = {**os.environ, "CLIPAG_CACHE": str(cache / mode)}
        out = subprocess.run([sys.executable, __file__, "--child", mode, str(checkpoint)], env=env,
                             capture_output=True, text=True, check=True)
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    return results


def warm_loads(checkpoint: Path, repeats: int) -> dict[str, list[float]]:
    import open_clip

    import clipag
    from clipag import registry
    from clipag.weights import import_checkpoint

    entry = dataclasses.replace(registry.REGISTRY["ViT-B/32"], size=checkpoint.stat().st_size)
    registry.REGISTRY["ViT-B/32"] = entry
    import_checkpoint(entry, checkpoint)

    def clipag_load() -> None:
        clipag.load("ViT-B/32", device="cpu")

    def open_clip_load() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            open_clip.create_model_and_transforms("ViT-B-32", pretrained=str(checkpoint), weights_only=False)

    timings: dict[str, list[float]] = {"clipag (cached safetensors)": [], "open_clip (.pt)": []}
    clipag_load(), open_clip_load()  # warm-up: imports, page cache
    for _ in range(repeats):
        for name, fn in zip(timings, (clipag_load, open_clip_load), strict=True):
            start = time.perf_counter()
            fn()
            timings[name].append(time.perf_counter() - start)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--child", nargs=2, metavar=("MODE", "CHECKPOINT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return

    sys.path.insert(0, str(ROOT / "tests"))
    import open_clip
    from replicas import open_clip_2023_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["CLIPAG_CACHE"] = str(Path(tmp) / "cache")
        checkpoint = Path(tmp) / "CLIPAG_ViTB32.pt"
        open_clip_2023_checkpoint(checkpoint, open_clip.get_model_config("ViT-B-32"))
        gb = 1e9
        print(f"replica of CLIPAG_ViTB32.pt: {checkpoint.stat().st_size:,} bytes (the real file: 1,310,567,621)\n")
        first = first_load(checkpoint, Path(tmp) / "first")
        print("first load, each in a fresh process (time; peak RSS of the process, and what imports alone took):")
        for mode, label in (("clipag", "clipag.load(FILE): safe read + convert"),
                            ("open_clip", "open_clip weights_only=False")):
            r = first[mode]
            print(f"  {label:40s} {r['seconds']:6.2f} s   peak {r['peak_rss'] / gb:5.2f} GB   "
                  f"(imports {r['after_imports'] / gb:4.2f} GB, so the load added "
                  f"{(r['peak_rss'] - r['after_imports']) / gb:4.2f} GB)")
        ratio = first["open_clip"]["seconds"] / first["clipag"]["seconds"]
        print(f"  time ratio (open_clip / clipag): {ratio:.2f}x\n")

        timings = warm_loads(checkpoint, args.repeats)
    medians = {name: statistics.median(values) for name, values in timings.items()}
    print("warm loads, interleaved in one process:")
    for name, value in medians.items():
        print(f"  {name:30s} median {value:6.3f} s  (runs: {', '.join(f'{v:.3f}' for v in timings[name])})")
    ours, theirs = medians.values()
    print(f"  speed-up (open_clip / clipag): {theirs / ours:.2f}x")


if __name__ == "__main__":
    main()
