"""Tensor ↔ PIL conversion and the files generators write: PNG, animated GIF, contact sheets, labelled grids.

Also the checks that keep a run's result: :func:`check_output` (a file) and :func:`check_output_folder` refuse an
output path that cannot be written before any work starts, and every file is written through :func:`atomic_write`,
which saves the result somewhere else (and says where) when the target vanished or became unwritable during the run.
"""

from __future__ import annotations

import math
import os
import secrets
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw

__all__ = ["to_pil", "save_png", "save_gif", "make_grid", "labelled_grid", "model_label", "numbered", "result_path",
           "check_output", "check_output_folder", "atomic_write", "OutputError", "Outputs"]


def to_pil(image: torch.Tensor) -> Image.Image:
    """A ``(3, H, W)`` or ``(1, 3, H, W)`` tensor in [0, 1] as an RGB image (values truncated to 8 bits,
    as the notebook's ``mul(255)...astype(uint8)`` does)."""
    if image.dim() == 4:
        image = image[0]
    array = image.detach().float().clamp(0, 1).mul(255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array)


class OutputError(OSError):
    """A result could not be written where asked; ``rescued`` is where it was saved instead (None: nowhere)."""

    def __init__(self, message: str, path: Path, rescued: Path | None) -> None:
        super().__init__(message)
        self.path, self.rescued = path, rescued


def _write_via_temp(path: Path, write: Callable[[Path], object]) -> None:
    """``write`` a temporary file beside ``path``, then rename it into place: never a truncated ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")  # unique: runs may share a folder
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _free_name(folder: Path, name: str) -> Path:
    """``folder/name``, or ``folder/stem-1.ext``, ``-2``... when taken: a rescue never overwrites a file."""
    candidate, stem, suffix = folder / name, Path(name).stem, Path(name).suffix
    k = 0
    while candidate.exists():
        k += 1
        candidate = folder / f"{stem}-{k}{suffix}"
    return candidate


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object], what: str = "the result") -> Path:
    """Write ``path`` through ``write(tmp_path)`` atomically; return ``path``.

    If that fails (the folder was deleted, a disk filled, permissions changed while a long run worked), the same
    bytes go to the current folder, else the temporary folder, under the same name, and :class:`OutputError`
    says both paths: the run's result is never lost to a bad path.
    """
    path = Path(path)
    try:
        _write_via_temp(path, write)
        return path
    except OSError as error:
        reason = error.strerror or str(error)
        blocker = next((p for p in (path.parent, *path.parent.parents) if p.exists() and not p.is_dir()), None)
        if blocker is not None:  # mkdir's "File exists" would not say which file is in the way
            reason = f"{blocker} is a file, not a folder"
        for folder in (Path.cwd(), Path(tempfile.gettempdir())):
            try:
                rescued = _free_name(folder, path.name)
                _write_via_temp(rescued, write)
            except OSError:
                continue
            raise OutputError(f"could not write {path} ({reason}); {what} was saved to {rescued} instead",
                              path, rescued) from error
        raise OutputError(f"could not write {path} ({reason}), nor a copy in the current or the temporary folder; "
                          f"{what} is lost", path, None) from error


def _atomic_save(image: Image.Image, path: Path, **kwargs: object) -> None:
    image_format = kwargs.pop("format", None) or Image.registered_extensions().get(path.suffix.lower())
    atomic_write(path, lambda tmp: image.save(tmp, format=image_format, **kwargs), what="the image")


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


def result_path(path: str | os.PathLike, index: int, several: bool, compare: bool = False) -> Path:
    """The one naming rule of the generator CLIs: ``path`` for a single result, ``NAME-003.EXT`` for the fourth
    of several, ``NAME-003-compare.EXT`` for a ``--compare`` model's (see :mod:`clipag.cli_options`)."""
    if not several:
        return Path(path)
    return numbered(path, f"{index:03d}-compare" if compare else index)


# What each kind of output is written as, so a path is refused before a run rather than after it.
_FORMATS = {".png": "PNG", ".gif": "GIF", ".svg": "SVG"}


def check_output(path: str | os.PathLike | None, option: str, suffixes: Sequence[str] = (".png",),
                 append: bool = False) -> None:
    """Raise ``ValueError`` (naming ``option`` and the path) unless ``path`` can be written: its extension is one of
    ``suffixes``, it is not a folder, every existing parent is a folder, and this process can create files there
    (with ``append``, an existing file must be writable itself).

    Nothing is left behind: the check creates and removes a temporary file (or folder, where the output's folder
    does not exist yet and will be made by the write).
    """
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{option} {path}: is a folder; give a file name, e.g. {path / ('result' + suffixes[0])}")
    if path.suffix.lower() not in suffixes:
        kinds = " or ".join(f"{_FORMATS.get(s, s)} ({s})" for s in suffixes)
        raise ValueError(f"{option} {path}: writes {kinds}; give a file name ending in {' or '.join(suffixes)}, "
                         f"e.g. {path.with_suffix(suffixes[0]).name}")
    if append and path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"{option} {path}: the file is not writable (results are appended to it); choose another "
                         "file or make it writable")
    _check_can_create(path.parent, option, path)


def check_output_folder(path: str | os.PathLike | None, option: str) -> None:
    """Raise ``ValueError`` (naming ``option`` and the path) unless ``path`` is, or can be made, a folder this
    process can create files in. Nothing is left behind."""
    if path is None:
        return
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {path}: is a file; give a folder (it is made if missing)")
    _check_can_create(path, option, path)


def _check_can_create(folder: Path, option: str, path: Path) -> None:
    """``folder``, or the nearest of its parents that exists, is a folder in which files can be created."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{option} {path}: {existing} is a file, not a folder")
    try:
        if existing == folder:
            fd, probe = tempfile.mkstemp(dir=folder, prefix=".clipag-check-")
            os.close(fd)
            os.unlink(probe)
        else:
            os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".clipag-check-"))
    except OSError as e:
        raise ValueError(f"{option} {path}: cannot create files in {existing.resolve()} ({e.strerror or e}); "
                         "choose another folder") from None


class Outputs:
    """Writes a CLI run's files and prints each path; a file that cannot be written where asked is saved elsewhere
    (:func:`atomic_write`), reported at once, and the run goes on, so later results are kept too.

    ``status(code)`` is the command's exit code: ``code``, or 1 if any file went elsewhere.
    """

    def __init__(self, command: str) -> None:
        self.command = command
        self.failures: list[OutputError] = []

    def write(self, save: Callable[..., os.PathLike | str], *args: object) -> Path | None:
        """``save(*args)`` (``save_png``, ``save_gif``, a drawing's ``save_svg``...), its path printed."""
        try:
            path = Path(save(*args))
        except OutputError as e:
            self.failures.append(e)
            print(f"{self.command}: error: {e}", file=sys.stderr)
            if e.rescued is not None:
                print(e.rescued)
            return e.rescued
        print(path)
        return path

    def status(self, code: int = 0) -> int:
        return 1 if self.failures and code == 0 else code
