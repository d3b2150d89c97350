"""Training checkpoints: atomic, self-contained, readable with ``torch.load(weights_only=True)``, and tied to
the run (and branch of it) that wrote them.

A checkpoint holds only tensors, containers and primitives (the project never unpickles objects): model
and optimiser state dicts, the gradient scaler's and LR schedule's state, the step, every rank's data
positions and RNG states, and ``run``: the id of the branch that wrote it and its *lineage*, the list of
``[branch id, from step, to step or None]`` segments its history is made of. A run starts as one branch;
resuming from an older step (a rewind) starts a new branch that shares the segments up to that step. A
checkpoint belongs to a lineage when one of its segments holds the checkpoint's branch and step, so
``--resume latest`` and the rotation of old checkpoints only ever see the run's own history.

Files are written to a temp name (``.step_N.pt.PID.tmp``, created exclusively: never through a link), fsynced
and renamed, so a run killed at any instant leaves either the previous checkpoint or the new one, never a torn
file; :func:`remove_stale_temps` clears what killed writers leave behind.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import random
import re
from pathlib import Path
from typing import Any

import torch

__all__ = ["save", "load", "find_latest", "rng_state", "set_rng_state", "checkpoint_dir", "listing", "run_info",
           "on_lineage", "truncate", "LEGACY", "remove_stale_temps", "STEP_NAME"]

log = logging.getLogger("clipag.finetune")
_NAME = re.compile(r"^step_(\d+)\.pt$")
STEP_NAME = r"step_\d+\.pt"  # a checkpoint's file name, as a pattern (for its temp files)
Lineage = list[list[Any]]  # [[branch id (None: written before run ids existed), from step, to step or None]]
LEGACY: Lineage = [[None, 0, None]]  # the history of checkpoints that carry no run id


def checkpoint_dir(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / "checkpoints"


def on_lineage(branch: str | None, step: int, lineage: Lineage) -> bool:
    """Whether the checkpoint that ``branch`` wrote at ``step`` is part of the history ``lineage``."""
    return any(branch == b and start < step <= (math.inf if end is None else end) for b, start, end in lineage)


def truncate(lineage: Lineage, step: int) -> Lineage:
    """``lineage`` up to ``step``: the shared past of a branch started there."""
    return [[b, start, step if end is None else min(end, step)] for b, start, end in lineage if start < step]


def run_info(path: str | os.PathLike) -> tuple[int, str | None, Lineage]:
    """``(step, branch id, lineage)`` of a checkpoint, read without loading its tensors (memory-mapped), and
    remembered while the file is unchanged (rotation asks at every save)."""
    stat = os.stat(path)
    key = (os.fspath(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if key not in _INFO:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        run = state.get("run") or {"id": None, "lineage": LEGACY}
        _INFO[key] = int(state["step"]), run["id"], [list(segment) for segment in run["lineage"]]
        del state
    step, branch, lineage = _INFO[key]
    return step, branch, [list(segment) for segment in lineage]


_INFO: dict[tuple[str, int, int, int], tuple[int, str | None, Lineage]] = {}


def listing(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``step_N.pt`` file in the checkpoint folder, newest step first."""
    folder = checkpoint_dir(output_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), folder / entry.name) for entry in os.scandir(folder) if (m := _NAME.match(entry.name))]
    return sorted(found, reverse=True)


def save(state: dict[str, Any], output_dir: str | os.PathLike, step: int, keep: int = 2,
         lineage: Lineage | None = None) -> Path:
    """Write ``checkpoints/step_{step}.pt`` atomically, then delete the oldest checkpoints of ``lineage``
    (``state["run"]["lineage"]``) beyond the newest ``keep``. Checkpoints of other histories are never touched,
    nor is the file just written."""
    folder = checkpoint_dir(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step_{step:08d}.pt"
    tmp = folder / f".{path.name}.{os.getpid()}.tmp"
    fd = _create(tmp)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _sync_dir(folder)
    lineage = lineage if lineage is not None else state.get("run", {}).get("lineage", LEGACY)
    older = [(s, p) for s, p in listing(output_dir) if s < step and _belongs(p, lineage)]
    for _, old in older[max(keep, 1) - 1:]:
        old.unlink(missing_ok=True)
    return path


def _create(tmp: Path) -> int:
    """Create ``tmp`` exclusively: never through a link someone left at that name. A regular file there can only
    be left by an earlier process with this PID (killed; containers reuse PIDs): it is removed first."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    try:
        return os.open(tmp, flags, 0o666)
    except FileExistsError:
        if not tmp.is_symlink() and tmp.is_file():
            tmp.unlink()
            return os.open(tmp, flags, 0o666)
        raise FileExistsError(errno.EEXIST, "not a file this process wrote; move it away to save checkpoints",
                              str(tmp)) from None


def _sync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); elsewhere a no-op."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _belongs(path: Path, lineage: Lineage) -> bool:
    try:
        step, branch, _ = run_info(path)
    except Exception:  # unreadable: not provably ours, so never deleted by rotation
        return False
    return on_lineage(branch, step, lineage)


def load(path: str | os.PathLike) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def find_latest(output_dir: str | os.PathLike, lineage: Lineage | None = None) -> tuple[Path, dict[str, Any]] | None:
    """The newest readable checkpoint of ``lineage`` (default: the folder's run, see ``rundir``); a corrupt
    newest file falls back to the one before, and checkpoints of any other run or branch are never picked."""
    if lineage is None:
        from .rundir import current_lineage

        lineage = current_lineage(output_dir)
    for _, path in listing(output_dir):
        try:
            step, branch, _ = run_info(path)
            if not on_lineage(branch, step, lineage):
                continue
            return path, load(path)
        except Exception as e:  # torn by something other than us (disk full, copy): try the previous one
            log.warning("checkpoint %s is unreadable (%s); trying an older one", path, e)
    return None


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine (unknown counts as alive: its files are left alone)."""
    if pid == os.getpid():  # a leftover of an earlier process with our PID: we write no temp files while cleaning
        return False
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True


def remove_stale_temps(folder: str | os.PathLike, names: str) -> tuple[list[Path], list[Path]]:
    """Delete the temp files ``.NAME.PID[.RANDOM].tmp`` (``NAME`` matching ``names``) that killed writers left
    in ``folder``: ``(removed, kept)``.

    Only regular files directly in ``folder`` whose PID is not a live process on this machine; links are never
    followed or removed, nothing else is touched, and a live PID's file is kept (another host's, on a shared disk?).
    """
    folder = Path(folder)
    removed: list[Path] = []
    kept: list[Path] = []
    if not folder.is_dir():
        return removed, kept
    # .NAME.PID.tmp (checkpoints), or clipag.cache.atomic_path's .NAME.PID.RANDOM.tmp (the export)
    pattern = re.compile(rf"^\.(?:{names})\.(\d+)(?:\.\w+)?\.tmp$")
    for entry in os.scandir(folder):
        m = pattern.match(entry.name)
        if not m or not entry.is_file(follow_symlinks=False):
            continue
        if _alive(int(m.group(1))):
            kept.append(Path(entry.path))
            continue
        try:
            os.unlink(entry.path)
            removed.append(Path(entry.path))
        except FileNotFoundError:  # removed by someone else meanwhile
            pass
    return removed, kept


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
