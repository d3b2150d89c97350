"""Training data: webdataset shards, CSV/TSV, image folders and a synthetic source, all exactly resumable.

Every rank × loader worker is a *slot* that reads its own deterministic stream: per epoch a seeded list of
units (shards, or a share of a shuffled index), each read in windows shuffled by a seeded permutation.
A sample's position ``(epoch, unit, window start, index in window)`` and its augmentation seed are pure
functions of the seed, so a checkpoint stores each slot's position, and resuming re-opens the unit at the
window, skips what was consumed, and yields the very batches an uninterrupted run would have.
Corrupt samples (undecodable images, missing captions, broken tar members) are skipped and counted.
"""

from __future__ import annotations

import io
import logging
import random
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..datasets import decode_image, image_bytes, read_csv, read_image_folder, shard_sources, tar_records
from ..eval import load_templates
from ..tokenizer import tokenize
from .synthetic import SyntheticImages

__all__ = ["build_source", "fit_workers", "Batches", "make_loader", "Position", "START"]

log = logging.getLogger("clipag.finetune")
Position = tuple[int, int, int, int]  # (epoch, unit, window start, items emitted from the window)
START: Position = (0, 0, 0, 0)
Item = tuple[torch.Tensor, torch.Tensor, int]  # pixels in [0,1], tokens, label (-1 = none)


def _rng(*parts: Any) -> random.Random:
    """A generator seeded by a string: sha512-based, so identical in every process (unlike ``hash``)."""
    return random.Random("-".join(map(str, parts)))


class Source:
    """Base: ``units`` lists what a slot reads in an epoch, ``read`` yields raw records, ``decode`` makes items."""

    window = 1  # records shuffled together; map-style sources are already shuffled by index
    num_samples: int | None = None
    classnames: list[str] | None = None

    def __init__(self, image_size: int, context_length: int, seed: int, augment: bool) -> None:
        self.image_size, self.context_length, self.seed, self.augment = image_size, context_length, seed, augment
        self.errors = 0  # unreadable records met while reading (not decoding); a per-process counter

    def units(self, epoch: int, slot: int, num_slots: int) -> list[Any]:
        raise NotImplementedError

    def max_slots(self) -> int | None:
        """How many slots can each read something new per epoch; ``None``: any number."""
        return None

    def read(self, unit: Any, start: int) -> Iterator[Any]:
        raise NotImplementedError

    def decode(self, raw: Any, rng: random.Random) -> Item | None:
        raise NotImplementedError

    def tokens(self, caption: str) -> torch.Tensor:
        return tokenize([caption], context_length=self.context_length, truncate=True)[0]

    def image_item(self, load: Callable[[], Image.Image], caption: str, label: int, rng: random.Random,
                   name: str) -> Item | None:
        pixels = decode_image(load, self.image_size, rng if self.augment else None, name)
        return None if pixels is None else (pixels, self.tokens(caption), label)


class IndexedSource(Source):
    """Sources with random access: each epoch shuffles all indices and deals them out to the slots."""

    def units(self, epoch: int, slot: int, num_slots: int) -> list[Any]:
        order = list(range(self.num_samples))
        _rng(self.seed, "epoch", epoch).shuffle(order)
        return [[(epoch, i) for i in order[slot::num_slots]]]

    def read(self, unit: list, start: int) -> Iterator[Any]:
        return iter(unit[start:])


class SyntheticSource(IndexedSource):
    def __init__(self, classes: int, size: int, **kw: Any) -> None:
        super().__init__(**kw)
        self.images = SyntheticImages(classes, self.image_size)
        self.num_samples, self.classnames = size, self.images.classnames

    def decode(self, raw: tuple[int, int], rng: random.Random) -> Item:
        epoch, index = raw  # a new epoch draws new samples: the synthetic stream never repeats
        pixels, caption, label = self.images.item(epoch * self.num_samples + index)
        return pixels, self.tokens(caption), label


class FolderSource(IndexedSource):
    def __init__(self, root: str, classnames: str | None, templates: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.samples, self.classnames = read_image_folder(root, classnames)
        self.num_samples = len(self.samples)
        self.template = load_templates(templates)[0]  # one caption per class: same class, same (merged) text

    def decode(self, raw: tuple[int, int], rng: random.Random) -> Item | None:
        path, label = self.samples[raw[1]]
        return self.image_item(lambda: Image.open(path), self.template.format(self.classnames[label]), label, rng,
                               path)


class CsvSource(IndexedSource):
    def __init__(self, path: str, separator: str | None, img_key: str, caption_key: str, **kw: Any) -> None:
        super().__init__(**kw)
        rows = read_csv(path, separator, {"--csv-img-key": img_key, "--csv-caption-key": caption_key},
                        may_be_empty=(caption_key,))
        base = Path(path).parent
        self.rows = [(str(base / r[img_key]), r[caption_key]) for _, r in rows]  # absolute paths survive the join
        self.num_samples = len(self.rows)

    def decode(self, raw: tuple[int, int], rng: random.Random) -> Item | None:
        path, caption = self.rows[raw[1]]
        return self.image_item(lambda: Image.open(path), caption, -1, rng, path)


class WebDatasetSource(Source):
    """img2dataset shards (``{key}.jpg`` + ``{key}.txt``); ``::`` joins sources, braces expand."""

    def __init__(self, urls: str, resampled: bool, weights: str | None, window: int, image_keys: str,
                 caption_key: str, num_samples: int | None, **kw: Any) -> None:
        super().__init__(**kw)
        self.sources = shard_sources(urls)
        self.shards = [shard for source in self.sources for shard in source]
        self.weights = [float(w) for w in weights.split("::")] if weights else [1.0] * len(self.sources)
        if len(self.weights) != len(self.sources):
            raise ValueError(f"{len(self.weights)} upsampling factors for {len(self.sources)} sources")
        self.resampled, self.window, self.num_samples = resampled, max(1, window), num_samples
        self.image_keys, self.caption_key = image_keys.split(";"), caption_key

    def max_slots(self) -> int | None:
        return None if self.resampled else len(self.shards)  # a shard is read whole by one slot

    def units(self, epoch: int, slot: int, num_slots: int) -> list[Any]:
        if self.resampled:  # one shard per "epoch" of a slot, drawn by source weight then uniformly
            rng = _rng(self.seed, "resample", slot, epoch)
            source = rng.choices(self.sources, weights=self.weights)[0]
            return [rng.choice(source)]
        if len(self.shards) < num_slots:
            raise ValueError(f"{len(self.shards)} shards cannot feed {num_slots} ranks × workers; use fewer "
                             "--workers, more shards, or --dataset-resampled")
        shards = list(self.shards)
        _rng(self.seed, "shards", epoch).shuffle(shards)
        return shards[slot::num_slots]

    def _on_error(self, exn: Exception) -> None:
        self.errors += 1

    def read(self, unit: str, start: int) -> Iterator[Any]:
        return islice(tar_records(unit, self._on_error), start, None)

    def decode(self, raw: dict[str, Any], rng: random.Random) -> Item | None:
        name = f"{raw.get('__url__')}:{raw.get('__key__')}"
        data, caption = image_bytes(raw, self.image_keys), raw.get(self.caption_key)
        if data is None or caption is None:
            log.warning("skipping %s: no image (%s) or caption (%s)", name, "/".join(self.image_keys),
                        self.caption_key)
            return None
        return self.image_item(lambda: Image.open(io.BytesIO(data)), caption.decode("utf-8", "replace").strip(), -1,
                               rng, name)


def build_source(args: Any, image_size: int, context_length: int) -> Source:
    kw = dict(image_size=image_size, context_length=context_length, seed=args.seed, augment=args.augment)
    if args.dataset_type == "synthetic":
        return SyntheticSource(args.synthetic_classes, args.synthetic_size, **kw)
    if args.dataset_type == "folder":
        return FolderSource(args.train_data, args.classnames, args.templates, **kw)
    if args.dataset_type == "csv":
        return CsvSource(args.train_data, args.csv_separator, args.csv_img_key, args.csv_caption_key, **kw)
    return WebDatasetSource(args.train_data, args.dataset_resampled, args.train_data_upsampling_factors,
                            args.shuffle_window, args.image_key, args.caption_key, args.train_num_samples, **kw)


def fit_workers(source: Source, world_size: int, workers: int) -> int:
    """The loader workers per rank ``source`` can feed: ``workers``, or fewer (with a warning) when there are
    fewer shards than ranks × workers. Fewer shards than ranks is an error: no worker count fixes that."""
    limit = source.max_slots()
    if limit is None or limit >= world_size * max(1, workers):
        return workers
    if limit < world_size:
        raise ValueError(f"{limit} shards cannot feed {world_size} ranks: each rank needs at least one shard; use "
                         "more shards, fewer ranks, or --dataset-resampled")
    fitted = limit // world_size
    log.warning("%d shards cannot feed %d rank(s) × %d workers (a shard is read whole by one worker): using %d "
                "worker(s) per rank; --dataset-resampled would keep %d", limit, world_size, workers, fitted, workers)
    return fitted


def slot_stream(source: Source, slot: int, num_slots: int, position: Position) -> Iterator[tuple[Item | None,
                                                                                                 Position]]:
    """``(item or None if corrupt, position after it)`` forever, starting at ``position``."""
    epoch, unit_index, window_start, emitted = position
    empty_epochs = 0
    while True:
        units, read = source.units(epoch, slot, num_slots), 0
        for unit in range(unit_index, len(units)):
            records = source.read(units[unit], window_start)
            while window := list(islice(records, source.window)):
                read += len(window)
                order = list(range(len(window)))
                _rng(source.seed, "window", slot, epoch, unit, window_start).shuffle(order)
                for k in range(emitted, len(window)):
                    rng = _rng(source.seed, "sample", slot, epoch, unit, window_start, k)
                    yield source.decode(window[order[k]], rng), (epoch, unit, window_start, k + 1)
                window_start, emitted = window_start + len(window), 0
            window_start = emitted = 0
        empty_epochs = 0 if read else empty_epochs + 1
        if empty_epochs >= 100:
            raise RuntimeError(f"data slot {slot} of {num_slots} read nothing in 100 epochs: the data is missing or "
                               "unreadable, or there are fewer samples than ranks × workers")
        epoch, unit_index = epoch + 1, 0


class Batches(torch.utils.data.IterableDataset):
    """Collated batches for one rank; loader worker ``w`` serves logical slot ``(consumed + w) % workers``.

    A DataLoader takes batches from its workers round-robin starting at worker 0, so after resuming at
    ``consumed`` batches this mapping hands out the logical slots in the same order as the first run.
    Each batch carries ``position`` (``[logical slot, *position]``) and ``skipped`` (corrupt samples).
    """

    def __init__(self, source: Source, batch_size: int, rank: int, world_size: int, workers: int, consumed: int,
                 positions: dict[int, Position]) -> None:
        super().__init__()
        self.source, self.batch_size, self.rank, self.world_size = source, batch_size, rank, world_size
        self.workers, self.consumed, self.positions = max(1, workers), consumed, positions

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        logical = (self.consumed + (info.id if info else 0)) % self.workers
        slot = self.rank * self.workers + logical
        stream = slot_stream(self.source, slot, self.world_size * self.workers, self.positions.get(logical, START))
        while True:
            items: list[Item] = []
            skipped, errors = 0, self.source.errors
            for entry in stream:
                item, position = entry
                if item is None:
                    skipped += 1
                    if skipped > 1000 and not items:
                        raise RuntimeError(f"{skipped} samples in a row could not be decoded; check --train-data")
                    continue
                items.append(item)
                if len(items) == self.batch_size:
                    break
            yield {"images": torch.stack([i[0] for i in items]), "tokens": torch.stack([i[1] for i in items]),
                   "labels": torch.tensor([i[2] for i in items]), "position": torch.tensor([logical, *position]),
                   "skipped": torch.tensor(skipped + self.source.errors - errors)}


def make_loader(source: Source, batch_size: int, rank: int, world_size: int, workers: int, consumed: int,
                positions: dict[int, Position], pin_memory: bool) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(Batches(source, batch_size, rank, world_size, workers, consumed, positions),
                                       batch_size=None, num_workers=workers, pin_memory=pin_memory,
                                       persistent_workers=False)
