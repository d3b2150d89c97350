"""A procedural captioned dataset: coloured shapes on plain backgrounds, rendered by this project.

Small enough to pretrain a CLIP from scratch on a CPU in minutes, and compositional enough that a
generated image can be judged by something that never saw CLIP (see ``judge.py``).

Design, measured (``docs/demo.md``): shapes are big (55–85% of the side) with thick strokes, on black or
white. With a grey background and thinner, smaller shapes some colour/background pairs differed by only
~0.45 per pixel (L2 over RGB), so an L2 ε=1 perturbation could nearly erase a stroke: adversarial
finetuning then had to give up clean accuracy (shape accuracy fell to 80%). Ring, cross and bar need no
fine detail to tell apart at 32 px; circle/square/triangle did (a small CLIP never separated circle from
square).
"""

from __future__ import annotations

import io
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

__all__ = ["COLORS", "SHAPES", "BACKGROUNDS", "ShapeClass", "CLASSES", "render", "random_sample",
           "render_pool", "caption", "class_prompt", "write_shards"]

COLORS = {"red": (215, 40, 40), "green": (40, 170, 60), "blue": (45, 75, 225), "yellow": (225, 205, 35)}
SHAPES = ("ring", "cross", "bar")
BACKGROUNDS = {"black": (15, 15, 15), "white": (240, 240, 240)}
SUPERSAMPLE = 4  # render large, then downsample, for anti-aliased edges


@dataclass(frozen=True)
class ShapeClass:
    color: str
    shape: str

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"


CLASSES = [ShapeClass(color, shape) for color in COLORS for shape in SHAPES]


def caption(cls: ShapeClass, background: str) -> str:
    return f"a {cls.color} {cls.shape} on a {background} background"


def class_prompt(cls: ShapeClass, background: str = "black") -> str:
    """The prompt zero-shot classification and generation use (a caption with a fixed background)."""
    return caption(cls, background)


def render(cls: ShapeClass, background: str, size: int, rng: random.Random) -> Image.Image:
    """One image: a jittered colour, a random scale and position, a faint noise so no two are alike."""
    big = size * SUPERSAMPLE
    image = Image.new("RGB", (big, big), BACKGROUNDS[background])
    draw = ImageDraw.Draw(image)
    extent = rng.uniform(0.55, 0.85) * big
    cx = rng.uniform(extent / 2 + 1, big - extent / 2 - 1)
    cy = rng.uniform(extent / 2 + 1, big - extent / 2 - 1)
    color = tuple(int(min(255, max(0, c + rng.randint(-20, 20)))) for c in COLORS[cls.color])
    half, stroke = extent / 2, extent * rng.uniform(0.24, 0.32)
    if cls.shape == "ring":
        draw.ellipse((cx - half, cy - half, cx + half, cy + half), outline=color, width=round(stroke))
    elif cls.shape == "cross":
        draw.rectangle((cx - half, cy - stroke / 2, cx + half, cy + stroke / 2), fill=color)
        draw.rectangle((cx - stroke / 2, cy - half, cx + stroke / 2, cy + half), fill=color)
    else:  # a horizontal bar
        draw.rectangle((cx - half, cy - stroke / 2, cx + half, cy + stroke / 2), fill=color)
    image = image.resize((size, size), Image.Resampling.BOX)
    noise = np.random.default_rng(rng.getrandbits(32)).normal(0, 4, (size, size, 3))
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255).astype(np.uint8))


def random_sample(size: int, rng: random.Random, background: str | None = None) -> tuple[Image.Image, str, int]:
    """``(image, caption, class index)`` for a uniformly drawn class and background (or the given one)."""
    index = rng.randrange(len(CLASSES))
    background = background or rng.choice(list(BACKGROUNDS))
    return render(CLASSES[index], background, size, rng), caption(CLASSES[index], background), index


def render_pool(count: int, size: int, seed: int, background: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` rendered shapes as a [0,1] tensor with their class indices."""
    rng = random.Random(seed)
    images, labels = [], []
    for _ in range(count):
        image, _, index = random_sample(size, rng, background)
        images.append(torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1))
        labels.append(index)
    return torch.stack(images), torch.tensor(labels)


def _samples(count: int, size: int, seed: int) -> Iterator[dict[str, object]]:
    rng = random.Random(seed)
    for i in range(count):
        image, text, index = random_sample(size, rng)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        yield {"__key__": f"{seed:04d}{i:08d}", "png": buffer.getvalue(), "txt": text, "cls": str(index)}


def write_shards(folder: str | Path, count: int, size: int = 32, seed: int = 0, per_shard: int = 2000) -> str:
    """Write ``count`` samples as webdataset shards (img2dataset-style keys); return the brace pattern."""
    import webdataset as wds

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(str(folder / "shapes-%05d.tar"), maxcount=per_shard, verbose=0) as sink:
        for sample in _samples(count, size, seed):
            sink.write(sample)
        shards = sink.shard
    return str(folder / f"shapes-{{00000..{shards - 1:05d}}}.tar")
