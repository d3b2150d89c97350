"""Tensor ↔ PIL conversion and the files generation writes: PNG, animated GIF, contact-sheet grid."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

__all__ = ["to_pil", "save_png", "save_gif", "make_grid", "numbered"]


def to_pil(image: torch.Tensor) -> Image.Image:
    """A ``(3, H, W)`` or ``(1, 3, H, W)`` tensor in [0, 1] as an RGB image (values truncated to 8 bits,
    as the notebook's ``mul(255)...astype(uint8)`` does)."""
    if image.dim() == 4:
        image = image[0]
    array = image.detach().float().clamp(0, 1).mul(255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array)


def _atomic_save(image: Image.Image, path: Path, **kwargs: object) -> None:
    """Write via a temporary file so an interrupted run never leaves a truncated image behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format=kwargs.pop("format", None) or Image.registered_extensions().get(path.suffix.lower()),
               **kwargs)
    os.replace(tmp, path)


def save_png(image: Image.Image, path: str | os.PathLike) -> Path:
    path = Path(path)
    _atomic_save(image, path, format="PNG")
    return path


def save_gif(frames: Sequence[Image.Image], path: str | os.PathLike, duration_ms: int = 100,
             hold_last_ms: int = 1000) -> Path:
    """An endlessly looping GIF of ``frames``; the last frame (the result) is held longer."""
    if not frames:
        raise ValueError("no frames to write")
    path = Path(path)
    durations = [duration_ms] * (len(frames) - 1) + [hold_last_ms]
    _atomic_save(frames[0], path, format="GIF", save_all=True, append_images=list(frames[1:]), loop=0,
                 duration=durations, disposal=1)
    return path


def make_grid(images: Sequence[Image.Image], columns: int | None = None, pad: int = 2,
              row_labels: Sequence[str] | None = None) -> Image.Image:
    """Paste equally sized images into a white-padded grid, ``columns`` per row (default: near square).

    ``row_labels`` (one per row, e.g. the prompts) are written in a column left of the images.
    """
    if not images:
        raise ValueError("no images for the grid")
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    if row_labels is not None and len(row_labels) != rows:
        raise ValueError(f"{len(row_labels)} row labels for {rows} rows")
    font = ImageFont.load_default()
    left = 0
    if row_labels:
        measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        left = 2 * pad + 4 + max(math.ceil(measure.textlength(label, font=font)) for label in row_labels)
    w, h = images[0].size
    sheet = Image.new("RGB", (left + columns * (w + pad) + pad, rows * (h + pad) + pad), "white")
    for i, image in enumerate(images):
        sheet.paste(image, (left + pad + (i % columns) * (w + pad), pad + (i // columns) * (h + pad)))
    draw = ImageDraw.Draw(sheet)
    for row, label in enumerate(row_labels or []):
        draw.text((2 * pad, pad + row * (h + pad) + h // 2), label, fill="black", font=font, anchor="lm")
    return sheet


def numbered(path: str | os.PathLike, index: int | str) -> Path:
    """``out.png`` → ``out-003.png`` (or ``out-grid.png``) for runs that write several files."""
    path = Path(path)
    tag = f"{index:03d}" if isinstance(index, int) else index
    return path.with_name(f"{path.stem}-{tag}{path.suffix}")
