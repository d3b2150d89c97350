"""The cache's files: where they live, and how many processes write them without losing anything.

Rules every writer here follows, because caches are shared (torchrun ranks, notebooks, group-writable folders):

- **One writer per file or folder at a time**: :func:`cache_lock` is an inter-process lock (the ``filelock``
  library, ``flock`` on POSIX: the kernel drops it when its process dies, so a killed process never leaves a
  lock that blocks forever). A process that waits says so on stderr.
- **Atomic**: :func:`atomic_path` writes to a fresh private temp name next to the target and ``os.replace``s it,
  so a target is absent or complete. Temp files left by a killed writer are deleted by the next holder of the lock.
- **No writing through links**: a symlink where the cache writes is never followed (``O_NOFOLLOW``; a link in
  place of a temp or partial file is removed, not written through), and nothing outside the target's folder is
  deleted.
- **Space is checked first**, and a full disk is an error that names the path and the space needed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["cache_root", "model_dir", "converted_path", "source_identity", "cache_lock", "atomic_path",
           "open_no_follow", "remove_link", "DiskFullError", "ensure_space", "is_disk_full", "read_json",
           "write_json_atomic"]

_TEMP_SUFFIX = ".tmp"


def cache_root(download_root: str | os.PathLike | None = None) -> Path:
    """``download_root``, else ``$CLIPAG_CACHE``, else ``$XDG_CACHE_HOME/clipag`` (``~/.cache/clipag``)."""
    if download_root is not None:
        return Path(download_root).expanduser()
    if os.environ.get("CLIPAG_CACHE"):
        return Path(os.environ["CLIPAG_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "clipag"


def model_dir(name: str, download_root: str | os.PathLike | None = None) -> Path:
    """The cache folder of a registry model (``ViT-B/32`` → ``<cache>/ViT-B-32``)."""
    return cache_root(download_root) / name.replace("/", "-")


def converted_path(file: str | os.PathLike, download_root: str | os.PathLike | None = None, tag: str = "") -> Path:
    """Where a user's pickled checkpoint is cached as safetensors: ``<cache>/converted/<key>.safetensors``.

    One slot per file (its resolved path, and ``tag`` for readers that keep only some tensors). Whether the slot
    still matches the file is :func:`source_identity`'s job, recorded in the slot's metadata.
    """
    key = hashlib.sha256(f"{Path(file).resolve()}{tag}".encode()).hexdigest()[:32]
    return cache_root(download_root) / "converted" / f"{key}.safetensors"


def source_identity(file: str | os.PathLike) -> str:
    """What identifies a file's content without reading it: size, mtime, inode and ctime.

    Size and mtime alone miss a file replaced by one of the same size with its mtime restored (``cp -p``,
    ``touch -r``); the inode and the change time cannot be set back by a user, so a replaced file is noticed.
    """
    st = os.stat(file)
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}:{st.st_ctime_ns}"


# --- locks ----------------------------------------------------------------------------------------------------

_LOCKS: dict[str, Any] = {}  # one FileLock object per path: re-entrant in a thread, exclusive between threads
_LOCKS_GUARD = threading.Lock()


def _file_lock(path: Path) -> Any:
    from filelock import FileLock

    with _LOCKS_GUARD:
        if str(path) not in _LOCKS:
            _LOCKS[str(path)] = FileLock(str(path))
        return _LOCKS[str(path)]


@contextlib.contextmanager
def cache_lock(target: str | os.PathLike, doing: str, wait_message_every: float = 60.0) -> Iterator[None]:
    """Hold the inter-process lock of ``target`` (a cache file or folder) while ``doing`` something to it.

    The lock file is ``.locks/NAME.lock`` beside ``target`` (lock files are never deleted: deleting one while
    another process waits on it would let two holders in). Another process holding it is waited for, with a line
    on stderr. On entry, temp files that a killed writer left for ``target`` are deleted: nobody else can be
    writing them while we hold the lock.
    """
    from filelock import Timeout

    target = Path(target)
    lock_path = target.parent / ".locks" / f"{target.name}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    remove_link(lock_path)
    lock = _file_lock(lock_path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"[clipag] waiting for another process {doing} ({target}; lock {lock_path})", file=sys.stderr,
              flush=True)
        while True:
            try:
                lock.acquire(timeout=wait_message_every)
                break
            except Timeout:
                print(f"[clipag] still waiting for another process {doing} ({target})", file=sys.stderr, flush=True)
    try:
        _remove_stale_temps(target)
        yield
    finally:
        lock.release()


def _remove_stale_temps(target: Path) -> None:
    """Delete temp files a killed writer left: ``.NAME.*.tmp`` beside ``target`` and, for a folder, inside it."""
    places = [(target.parent, f".{target.name}.")]
    if target.is_dir() and not target.is_symlink():
        places.append((target, "."))
    for folder, prefix in places:
        with contextlib.suppress(OSError):
            for entry in os.scandir(folder):
                if entry.name.startswith(prefix) and entry.name.endswith(_TEMP_SUFFIX) and \
                        not entry.is_dir(follow_symlinks=False):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)  # a link is removed itself; its target is never touched


# --- writing --------------------------------------------------------------------------------------------------

def remove_link(path: Path) -> None:
    """If ``path`` is a symlink, remove the link (never its target) and say so: the cache writes no link."""
    if path.is_symlink():
        warnings.warn(f"{path} is a symbolic link (to {os.readlink(path)}); clipag never writes through links in "
                      "its cache, so it removed the link (its target is untouched)", stacklevel=3)
        path.unlink()


def open_no_follow(path: Path, append: bool) -> int:
    """A file descriptor to write ``path``: appending to the existing file, or creating a fresh one.

    Never follows a symlink (``O_NOFOLLOW``), so a link planted at ``path`` cannot redirect the write.
    """
    flags = os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    if append:
        return os.open(path, flags | os.O_APPEND)
    remove_link(path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o666)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh private temp path beside ``path``; when the block succeeds it replaces ``path`` atomically.

    The temp file is created exclusively under a random name (a planted link cannot be written through), given
    the usual permissions for the umask, and deleted if the block fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir() and not path.is_symlink():
        raise IsADirectoryError(f"{path} is a folder, where clipag must write a file")
    # .NAME.PID.RANDOM.tmp: the PID lets a cleaner without the lock (finetune's) tell a live writer's file
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=_TEMP_SUFFIX)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp and safetensors make 0600 files; cache files are shared like any
        os.replace(tmp, path)  # replaces a link at `path` itself, never its target
    finally:
        tmp.unlink(missing_ok=True)


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as e:
        raise RuntimeError(f"{path}: corrupt JSON ({e})") from e


def write_json_atomic(path: str | os.PathLike, data: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# --- space ----------------------------------------------------------------------------------------------------

def _size(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


class DiskFullError(OSError):
    """Not enough space to write a cache file. The message names the path and the space needed."""

    def __init__(self, path: Path, needed: int | None, free: int | None, note: str = "") -> None:
        need = f"it needs about {_size(needed)}" if needed else "the disk is full"
        have = f", {_size(free)} are free there" if free is not None else ""
        super().__init__(errno.ENOSPC, f"not enough disk space to write {path}: {need}{have}.{note}")
        self.path, self.needed, self.free = path, needed, free

    def __str__(self) -> str:
        return str(self.strerror)


def is_disk_full(error: BaseException) -> bool:
    """An ``OSError`` with ENOSPC/EDQUOT, or safetensors' Rust error that carries it only in its text."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return "No space left on device" in str(error) or "Disk quota exceeded" in str(error)


def ensure_space(path: Path, needed: int, note: str = "") -> None:
    """Raise :class:`DiskFullError` before writing ``needed`` bytes at ``path`` if its disk has less free."""
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise DiskFullError(path, needed, free, note)
