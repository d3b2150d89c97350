"""Image data on disk, read the same way by ``clipag.finetune`` and ``clipag.eval``.

Image folders (``root/<class>/<images>``), CSV/TSV files and webdataset shards, with one decode path: both
commands resize and crop alike, and skip, count and report a missing or undecodable image, a broken tar
member, a damaged stretch of a shard (``clipag.shards``) or a malformed CSV row with the same messages.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .shards import tar_records

__all__ = ["IMAGE_EXTENSIONS", "DATASET_TYPES", "guess_dataset_type", "needs_webdataset", "read_image_folder",
           "read_classnames", "read_csv", "class_index", "to_pixels", "decode_image", "shard_sources", "image_bytes",
           "tar_records", "LabelledImages", "LabelledShards"]

log = logging.getLogger("clipag.data")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
DATASET_TYPES = ("auto", "webdataset", "csv", "folder", "synthetic")


def guess_dataset_type(data: str | None) -> str:
    """``webdataset``, ``csv``, ``folder`` or ``synthetic`` (no data), from the path's form."""
    if not data or data == "synthetic":
        return "synthetic"
    if ".tar" in data or "{" in data or "::" in data or data.startswith(("pipe:", "http://", "https://", "s3://")):
        return "webdataset"
    if data.endswith((".csv", ".tsv")):
        return "csv"
    if os.path.isdir(data):
        return "folder"
    raise SystemExit(f"cannot tell the dataset type of {data!r}; pass --dataset-type")


def needs_webdataset(data: str | None, dataset_type: str = "auto") -> bool:
    """Whether reading ``data`` needs the webdataset package (clipag's ``[train]`` extra)."""
    if dataset_type != "auto":
        return dataset_type == "webdataset"
    try:
        return guess_dataset_type(data) == "webdataset"
    except SystemExit:  # a form guess_dataset_type does not know: reading the data says so later
        return False


def read_classnames(path: str | os.PathLike) -> list[str]:
    """One class name per non-empty line."""
    return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def read_image_folder(root: str | os.PathLike, classnames: str | os.PathLike | None = None) -> \
        tuple[list[tuple[str, int]], list[str]]:
    """``root/<class dir>/<image>`` → ``([(path, label)], classnames)``.

    Class names come from ``classnames`` (or ``root/classnames.txt``): one line per class directory in
    sorted order; otherwise the directory names, with ``_`` read as a space.
    """
    root = Path(root)
    dirs = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not dirs:
        raise FileNotFoundError(f"{root}: no class directories (expected root/<class>/<image files>)")
    names_file = Path(classnames) if classnames else root / "classnames.txt"
    if names_file.is_file():
        names = read_classnames(names_file)
        if len(names) != len(dirs):
            raise ValueError(f"{names_file}: {len(names)} class names for {len(dirs)} class directories")
    else:
        names = [d.replace("_", " ") for d in dirs]
    samples = [(str(p), label) for label, d in enumerate(dirs) for p in sorted((root / d).rglob("*"))
               if p.suffix.lower() in IMAGE_EXTENSIONS]
    return samples, names


def read_csv(path: str | os.PathLike, separator: str | None, columns: dict[str, str],
             may_be_empty: Sequence[str] = ()) -> list[tuple[int, dict[str, str]]]:
    """``(line number, row)`` for every row of a CSV/TSV file (tab for ``.tsv``, comma otherwise), checked whole
    before any work starts.

    ``columns`` maps each flag to the column it names (``{"--csv-img-key": "filepath"}``). A missing column, an
    empty file, and rows with a missing or empty value (outside ``may_be_empty``) or more fields than the header
    (an unquoted separator in a caption) are errors naming the file, the lines and the flag: nothing is
    dropped silently.
    """
    path = str(path)
    separator = separator or ("\t" if path.endswith(".tsv") else ",")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter=separator)
        rows = [(reader.line_num, row) for row in reader]
        header = reader.fieldnames or []
    missing = [f"{column!r} ({flag})" for flag, column in columns.items() if column not in header]
    if missing:
        raise ValueError(f"{path}: needs column(s) {', '.join(missing)}; it has {list(header)}")
    if not rows:
        raise ValueError(f"{path}: no rows under the header")

    def malformed(row: dict[str | None, Any]) -> bool:
        return None in row or any(row[c] is None or (row[c].strip() == "" and c not in may_be_empty)
                                  for c in columns.values())

    bad = [line for line, row in rows if malformed(row)]
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (" ..." if len(bad) > 5 else "")
        raise ValueError(f"{path}: {len(bad)} malformed row(s) (line {shown}): a missing or empty value in "
                         f"{', '.join(map(repr, columns.values()))}, or more fields than the header (quote fields "
                         f"that contain {separator!r})")
    return rows


def class_index(value: str, classnames: Sequence[str], where: str) -> int:
    """A label given as a class name, or as an index into ``classnames``."""
    value = value.strip()
    if value in classnames:
        return classnames.index(value)
    if value.lstrip("-").isdigit() and 0 <= int(value) < len(classnames):
        return int(value)
    raise ValueError(f"{where}: label {value!r} is neither one of the {len(classnames)} class names nor an index "
                     "below their count (pass the class names with --classnames)")


def _crop_box(width: int, height: int, rng: random.Random, scale: tuple[float, float] = (0.9, 1.0),
              ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """RandomResizedCrop's box ``(top, left, h, w)``, drawn from ``rng`` rather than torch's global RNG."""
    for _ in range(10):
        area = width * height * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    side = min(width, height)
    return (height - side) // 2, (width - side) // 2, side, side


def to_pixels(image: Image.Image, size: int, rng: random.Random | None) -> torch.Tensor:
    """An RGB image as a ``size``² tensor in [0,1]: random resized crop if ``rng``, else resize + centre crop."""
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    image = image.convert("RGB")
    if rng is not None:
        top, left, h, w = _crop_box(image.width, image.height, rng)
        image = TF.resized_crop(image, top, left, h, w, [size, size], InterpolationMode.BICUBIC)
    else:
        image = TF.center_crop(TF.resize(image, size, InterpolationMode.BICUBIC), size)
    return TF.to_tensor(image)


def decode_image(load: Callable[[], Image.Image], size: int, rng: random.Random | None, name: str) -> \
        torch.Tensor | None:
    """:func:`to_pixels` of ``load()``, or ``None`` with a warning when the file is missing or undecodable."""
    try:
        with load() as image:
            image.load()
            return to_pixels(image, size, rng)
    except Exception as e:  # PIL raises many types for bad bytes; any of them means "skip this sample"
        log.warning("skipping undecodable image %s (%s: %s)", name, type(e).__name__, e)
        return None


def shard_sources(urls: str) -> list[list[str]]:
    """webdataset shard lists joined by ``::``, each brace-expanded: one list of shard URLs per source."""
    from webdataset.shardlists import expand_urls

    return [expand_urls(part) for part in urls.split("::")]


def image_bytes(record: dict[str, Any], image_keys: Sequence[str]) -> bytes | None:
    """The first of ``image_keys`` (webdataset extensions) a tar record has."""
    return next((record[k] for k in image_keys if k in record), None)


Labelled = tuple[torch.Tensor, int] | None  # (pixels, label), or None for a sample that could not be read


class LabelledImages(torch.utils.data.Dataset):
    """``(path, label)`` samples of an image folder or a CSV, decoded for evaluation (resize, centre crop)."""

    def __init__(self, samples: list[tuple[str, int]], size: int) -> None:
        self.samples, self.size = samples, size

    @classmethod
    def from_csv(cls, path: str, size: int, separator: str | None, img_key: str, label_key: str,
                 classnames: str | None) -> tuple[LabelledImages, list[str]]:
        """Rows ``(image path, label)``: labels are class names (sorted, unless ``classnames`` orders them) or
        indices into ``classnames``; image paths are relative to the file."""
        rows = read_csv(path, separator, {"--csv-img-key": img_key, "--csv-label-key": label_key})
        if classnames:
            names = read_classnames(classnames)
        elif all(r[label_key].strip().isdigit() for _, r in rows):
            raise ValueError(f"{path}: the labels in {label_key!r} are class indices; pass the class names "
                             "with --classnames FILE (one per line, in index order)")
        else:
            names = sorted({r[label_key].strip() for _, r in rows})
        base = Path(path).parent
        samples = [(str(base / r[img_key]), class_index(r[label_key], names, f"{path}: line {line}"))
                   for line, r in rows]
        return cls(samples, size), names

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Labelled:
        path, label = self.samples[i]
        pixels = decode_image(lambda: Image.open(path), self.size, None, path)
        return None if pixels is None else (pixels, label)


class LabelledShards(torch.utils.data.IterableDataset):
    """Webdataset shards with a class field (``cls``: an index or a class name), read in shard order; loader
    workers split the shards. A damaged stretch of a shard yields ``None`` (one skipped sample) like a bad image."""

    def __init__(self, urls: str, size: int, image_keys: str, label_key: str, classnames: Sequence[str]) -> None:
        super().__init__()
        self.shards = [shard for source in shard_sources(urls) for shard in source]
        self.size, self.image_keys, self.label_key = size, image_keys.split(";"), label_key
        self.classnames = list(classnames)

    def __iter__(self) -> Iterator[Labelled]:
        info = torch.utils.data.get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        for shard in self.shards[worker::workers]:
            damaged: list[Exception] = []  # unreadable members and regions: each counts as one skipped sample
            for record in tar_records(shard, damaged.append):
                yield from [None] * len(damaged)
                damaged.clear()
                yield self.decode(record)
            yield from [None] * len(damaged)

    def decode(self, record: dict[str, Any]) -> Labelled:
        name = f"{record.get('__url__')}:{record.get('__key__')}"
        data, label = image_bytes(record, self.image_keys), record.get(self.label_key)
        if data is None or label is None:
            log.warning("skipping %s: no image (%s) or label (%s)", name, "/".join(self.image_keys), self.label_key)
            return None
        index = class_index(label.decode("utf-8", "replace"), self.classnames, name)
        pixels = decode_image(lambda: Image.open(io.BytesIO(data)), self.size, None, name)
        return None if pixels is None else (pixels, index)
