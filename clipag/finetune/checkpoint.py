"""Training checkpoints: atomic, self-contained, and readable with ``torch.load(weights_only=True)``.

A checkpoint holds only tensors, containers and primitives (the project never unpickles objects): model
and optimiser state dicts, the gradient scaler's and LR schedule's state, the step, every rank's data
positions and RNG states. Files are written to a temp name, fsynced and renamed, so a run killed at any
instant leaves either the previous checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import logging
import os
import random
import re
from pathlib import Path
from typing import Any

import torch

__all__ = ["save", "load", "find_latest", "rng_state", "set_rng_state", "checkpoint_dir"]

log = logging.getLogger("clipag.finetune")
_NAME = re.compile(r"^step_(\d+)\.pt$")


def checkpoint_dir(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / "checkpoints"


def save(state: dict[str, Any], output_dir: str | os.PathLike, step: int, keep: int = 2) -> Path:
    """Write ``checkpoints/step_{step}.pt`` atomically; keep the newest ``keep`` files."""
    folder = checkpoint_dir(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step_{step:08d}.pt"
    tmp = folder / f".{path.name}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    for old in _checkpoints(folder)[max(keep, 1):]:
        old.unlink(missing_ok=True)
    return path


def _checkpoints(folder: Path) -> list[Path]:
    """Checkpoint files, newest step first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def load(path: str | os.PathLike) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def find_latest(output_dir: str | os.PathLike) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that reads back (a corrupt newest file falls back to the one before)."""
    for path in _checkpoints(checkpoint_dir(output_dir)):
        try:
            return path, load(path)
        except Exception as e:  # torn by something other than us (disk full, copy): try the previous one
            log.warning("checkpoint %s is unreadable (%s); trying an older one", path, e)
    return None


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's RNG states as tensors and tuples (python's state is a tuple of ints)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
