"""Data and models the finetune/eval tests make themselves: a tiny 32 px CLIP, shards, a CSV, an image folder."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from PIL import Image

from clipag.finetune.synthetic import SyntheticImages

# ~1.6 M parameters, 1.58 M of them the (real-vocabulary) token embedding; a step takes milliseconds.
TEST_CONFIG = {"embed_dim": 32,
               "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
               "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def write_config(folder: Path) -> str:
    path = folder / "tiny.json"
    path.write_text(json.dumps(TEST_CONFIG))
    return str(path)


def png(pixels) -> bytes:
    image = Image.fromarray((pixels.permute(1, 2, 0).numpy() * 255).round().astype("uint8"))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def make_image_folder(root: Path, per_class: int = 4, classes: int = 3, offset: int = 0) -> Path:
    source = SyntheticImages(classes, 32)
    for i in range(per_class * classes):
        pixels, _, label = source.item(offset + i)
        folder = root / source.classnames[label]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:04d}.png").write_bytes(png(pixels))
    return root


def make_shards(root: Path, shards: int = 2, per_shard: int = 6, corrupt: tuple[str, ...] = ()) -> str:
    """img2dataset-style shards written with webdataset's TarWriter; ``corrupt`` keys get garbage image bytes."""
    import webdataset as wds

    root.mkdir(parents=True, exist_ok=True)
    source = SyntheticImages(4, 32)
    index = 0
    for s in range(shards):
        with wds.TarWriter(str(root / f"{s:05d}.tar")) as sink:
            for _ in range(per_shard):
                pixels, caption, _ = source.item(index)
                key = f"{index:09d}"
                sink.write({"__key__": key, "jpg": b"\xff\xd8 not a jpeg" if key in corrupt else png(pixels),
                            "txt": f"{caption} number {index}"})
                index += 1
    return str(root / f"{{00000..{shards - 1:05d}}}.tar")


def break_header(shard: Path, member: str) -> None:
    """Spoil the checksum of ``member``'s own header block (the one after any pax header), as a bad disk
    sector or a bad copy would: Python's tarfile then reads the shard as ending there."""
    import tarfile

    with tarfile.open(shard) as tar:
        header = tar.getmember(member).offset_data - 512
    data = bytearray(shard.read_bytes())
    data[header + 148:header + 156] = b"0000000\0"  # the checksum field
    shard.write_bytes(bytes(data))


def make_csv(root: Path, rows: int = 6) -> Path:
    source = SyntheticImages(3, 32)
    (root / "images").mkdir(parents=True, exist_ok=True)
    path = root / "data.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filepath", "title"])
        for i in range(rows):
            pixels, caption, _ = source.item(i)
            (root / "images" / f"{i}.png").write_bytes(png(pixels))
            writer.writerow([f"images/{i}.png", caption])
    return path
