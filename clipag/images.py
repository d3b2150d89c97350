"""Tensor ↔ PIL conversion and the files generators write: PNG, animated GIF, contact sheets, labelled grids."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw

__all__ = ["to_pil", "save_png", "save_gif", "make_grid", "labelled_grid", "model_label", "numbered"]


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


def make_grid(images: Sequence[Image.Image], columns: int | None = None, pad: int = 2) -> Image.Image:
    """Paste equally sized images into a white-padded grid, ``columns`` per row (default: near square)."""
    if not images:
        raise ValueError("no images for the grid")
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    w, h = images[0].size
    sheet = Image.new("RGB", (columns * (w + pad) + pad, rows * (h + pad) + pad), "white")
    for i, image in enumerate(images):
        sheet.paste(image, (pad + (i % columns) * (w + pad), pad + (i // columns) * (h + pad)))
    return sheet


def _wrap(draw: ImageDraw.ImageDraw, text: str, width: int) -> str:
    """Greedy word wrap to ``width`` pixels, so long prompts fit beside their row."""
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return "\n".join(lines)


def labelled_grid(cells: Sequence[Sequence[Image.Image]], row_labels: Sequence[str] = (),
                  group_labels: Sequence[str] = (), group_size: int | None = None, cell_size: int | None = None,
                  gap: int = 12, label_width: int = 120) -> Image.Image:
    """The comparison sheet every CLI draws (CLIP vs CLIPAG, one row per prompt).

    ``cells[row][column]``; columns come in groups of ``group_size`` (one group per model, say), each
    headed by its ``group_labels`` entry and separated by ``gap`` pixels. Cells are resized to
    ``cell_size`` (default: the first cell's width) with nearest-neighbour, so small images stay crisp.
    """
    if not cells or not cells[0]:
        raise ValueError("no images for the grid")
    columns = len(cells[0])
    if any(len(row) != columns for row in cells):
        raise ValueError("every row of the grid needs the same number of images")
    group_size = group_size or columns
    if columns % group_size:
        raise ValueError(f"{columns} columns do not split into groups of {group_size}")
    size = cell_size or cells[0][0].width
    left = label_width if row_labels else 0
    header = 20 if group_labels else 0
    groups = columns // group_size
    sheet = Image.new("RGB", (left + columns * size + gap * (groups - 1), header + len(cells) * size), "white")
    draw = ImageDraw.Draw(sheet)
    x_of = lambda column: left + column * size + gap * (column // group_size)
    for group, label in enumerate(group_labels):
        draw.text((x_of(group * group_size) + 4, 4), label, fill="black")
    for row, images in enumerate(cells):
        if row < len(row_labels):
            draw.multiline_text((4, header + row * size + 4), _wrap(draw, row_labels[row], left - 8), fill="black")
        for column, image in enumerate(images):
            tile = image.convert("RGB")
            if tile.size != (size, size):
                tile = tile.resize((size, size), Image.Resampling.NEAREST)
            sheet.paste(tile, (x_of(column), header + row * size))
    return sheet


def model_label(model: str | os.PathLike) -> str:
    """A model's title in a grid: registry names and ids as they are, paths by their last component."""
    path = Path(model)
    return path.name if path.exists() else str(model)


def numbered(path: str | os.PathLike, index: int | str) -> Path:
    """``out.png`` → ``out-003.png`` (or ``out-grid.png``) for runs that write several files."""
    path = Path(path)
    tag = f"{index:03d}" if isinstance(index, int) else index
    return path.with_name(f"{path.stem}-{tag}{path.suffix}")
