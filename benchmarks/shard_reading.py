"""What reading past corrupt headers costs: clipag's shard reader against webdataset's own, on the same shards.

``clipag.shards.tar_records`` opens each shard with ``tarfile``'s ``ignore_zeros`` and a header hook (so a
corrupt header is skipped and reported instead of ending the shard); the baseline is webdataset's
``tarfile_samples``, which clipag used before. Both read the same healthy shards from the page cache, in the
same run, alternating, best of ``--repeats``; the ratio is what matters, not the absolute speed.

    python benchmarks/shard_reading.py                       # 8 shards × 1,000 samples of ~16 KB
    python benchmarks/shard_reading.py --samples 200 --size 100000
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def write_shards(root: Path, shards: int, samples: int, size: int) -> list[str]:
    import webdataset as wds

    urls = []
    for s in range(shards):
        url = str(root / f"{s:05d}.tar")
        with wds.TarWriter(url) as sink:
            for i in range(samples):
                sink.write({"__key__": f"{s:05d}{i:06d}", "jpg": os.urandom(size), "txt": f"caption {i}"})
        urls.append(url)
    return urls


def read_clipag(urls: list[str]) -> int:
    from clipag.shards import tar_records

    return sum(1 for url in urls for _ in tar_records(url))


def read_webdataset(urls: list[str]) -> int:
    import webdataset as wds

    return sum(1 for _ in wds.tarfile_samples([{"url": url} for url in urls]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--samples", type=int, default=1000, help="samples per shard")
    parser.add_argument("--size", type=int, default=16000, help="bytes per image")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        urls = write_shards(Path(tmp), args.shards, args.samples, args.size)
        megabytes = sum(os.path.getsize(u) for u in urls) / 1e6
        best = {"webdataset": float("inf"), "clipag": float("inf")}
        counts = {}
        for _ in range(args.repeats):
            for name, read in (("webdataset", read_webdataset), ("clipag", read_clipag)):
                start = time.perf_counter()
                counts[name] = read(urls)
                best[name] = min(best[name], time.perf_counter() - start)
    assert counts["clipag"] == counts["webdataset"] == args.shards * args.samples, counts
    for name, seconds in best.items():
        print(f"{name:>10}: {counts[name] / seconds:9,.0f} samples/s  {megabytes / seconds:7,.0f} MB/s  "
              f"({seconds:.3f} s for {counts[name]:,} samples, {megabytes:,.0f} MB)")
    print(f"clipag / webdataset time: {best['clipag'] / best['webdataset']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
