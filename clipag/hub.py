"""Downloads and offline mode: the one path every weight file takes from the network into the cache.

Direct URLs (CLIPAG lives on Zenodo, the VQGANs on heibox) are fetched here with resume, a progress bar and
size/sha256 checks of the file on disk, under the cache's inter-process lock (:mod:`clipag.cache`). Hub repos go
through huggingface_hub and its cache. Anything pickled is converted once to safetensors in clipag's cache and
never unpickled again; :func:`fetch_and_convert` keeps a verified download until its conversion has succeeded.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tqdm.auto import tqdm

from .cache import (
    DiskFullError,
    cache_lock,
    cache_root,
    converted_path,
    ensure_space,
    is_disk_full,
    model_dir,
    open_no_follow,
    read_json,
    remove_link,
    write_json_atomic,
)

__all__ = ["DownloadError", "OfflineError", "is_offline", "download_url", "fetch_and_convert", "sha256_of",
           "check_reachable", "CONFIG_NAME", "WEIGHTS_NAME",
           # the cache's own helpers, re-exported for code that imported them from here
           "cache_root", "model_dir", "converted_path", "read_json", "write_json_atomic"]

CHUNK = 1 << 20
CONFIG_NAME = "open_clip_config.json"  # open_clip's Hub layout, which every cached model folder follows
WEIGHTS_NAME = "open_clip_model.safetensors"


class DownloadError(RuntimeError):
    """A download failed or its content did not verify. The message names the URL and the file."""


class OfflineError(RuntimeError):
    """Offline mode is on and a file is not in the cache. The message says how to get it."""


def is_offline() -> bool:
    """``CLIPAG_OFFLINE=1`` or huggingface_hub's offline switch (``HF_HUB_OFFLINE``)."""
    from huggingface_hub import constants

    flag = os.environ.get("CLIPAG_OFFLINE", "").strip().lower()
    return flag in ("1", "true", "yes", "on") or bool(constants.HF_HUB_OFFLINE)


def sha256_of(path: str | os.PathLike, progress: bool = False) -> str:
    digest = hashlib.sha256()
    size = os.path.getsize(path)
    with open(path, "rb") as f, tqdm(total=size, unit="B", unit_scale=True, disable=not progress,
                                     desc=f"sha256 {Path(path).name}") as bar:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


_REACHABLE: dict[str, tuple[float, str | None]] = {}


def check_reachable(url: str, timeout: float = 5.0) -> str | None:
    """``None`` if ``url``'s host answers a TCP connection, else why not (name lookup or connection error).

    One quick look, remembered for a minute, so that a machine with no network fails at once with advice
    instead of after a library's minute of retries.
    """
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    key = f"{host}:{port}"
    cached = _REACHABLE.get(key)
    if cached and time.monotonic() - cached[0] < 60:
        return cached[1]
    try:
        with socket.create_connection((host, port), timeout=timeout):
            problem = None
    except OSError as e:
        problem = f"cannot reach {host} ({e.strerror or e})"
    _REACHABLE[key] = (time.monotonic(), problem)
    return problem


def _size_note(size: int | None) -> str:
    return f" ({size / 1e9:.1f} GB)" if size and size >= 1e8 else ""


def download_url(url: str, dest: str | os.PathLike, *, size: int | None = None, sha256: str | None = None,
                 progress: bool = True, timeout: float = 60.0, advice: str = "", lock: bool = True) -> str:
    """Fetch ``url`` to ``dest`` and return the sha256 of the file on disk.

    Under ``dest``'s inter-process lock: a partial ``dest.part`` is resumed with an HTTP Range request
    (restarted if the server ignores it); the finished file's size and sha256 are checked on disk, and only then is
    it renamed into place, so ``dest`` is absent or complete. A process that waited for another one downloading
    the same file finds it done. ``advice`` ends the message of a failed connection (what else the user can do).
    ``lock=False`` is for a caller that already holds the lock of ``dest``'s folder.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with cache_lock(dest, f"downloading {dest.name}") if lock else contextlib.nullcontext():
        if sha256 and dest.is_file() and not dest.is_symlink() and (size is None or dest.stat().st_size == size) \
                and sha256_of(dest) == sha256.lower():
            return sha256.lower()  # another process finished it while we waited
        part = dest.with_name(dest.name + ".part")
        remove_link(part)
        have = part.stat().st_size if part.exists() else 0
        if size is not None and have > size:
            part.unlink()
            have = 0
        if size is not None:
            ensure_space(part, size - have, " Free some space, or set CLIPAG_CACHE to a larger disk.")
        _fetch(url, dest, part, have, size, progress, timeout, advice)
        got = part.stat().st_size
        if size is not None and got != size:
            if got > size:
                part.unlink()
            raise DownloadError(f"{url}: got {got} bytes in {part}, expected {size}"
                                + ("; the partial file is kept and resumes next time" if got < size else
                                   "; the file was deleted"))
        actual = sha256_of(part, progress=progress and got > 1e8)  # what is on disk, not what was received
        if sha256 is not None and actual != sha256.lower():
            part.unlink()
            raise DownloadError(f"{url}: sha256 {actual} of {dest} does not match the expected {sha256}; "
                                "the file was deleted")
        os.replace(part, dest)
        return actual


def _fetch(url: str, dest: Path, part: Path, have: int, size: int | None, progress: bool, timeout: float,
           advice: str) -> None:
    """Append the rest of ``url`` to ``part`` (which holds its first ``have`` bytes)."""
    request = urllib.request.Request(url, headers={"User-Agent": "clipag", **({"Range": f"bytes={have}-"}
                                                                              if have else {})})
    kept = (f" {part} keeps {have:,} bytes and resumes next time." if have else "")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the partial file already holds everything
            return
        raise DownloadError(f"downloading {url}{_size_note(size)} to {dest} failed: HTTP {e.code} {e.reason}."
                            f"{kept} {advice}".rstrip()) from e
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DownloadError(f"downloading {url}{_size_note(size)} to {dest} failed: {reason}.{kept} "
                            f"{advice}".rstrip()) from e
    if response.status != 206:
        have = 0  # the server sent the whole file: start over
    length = response.headers.get("Content-Length")
    total = have + int(length) if length is not None else size
    fd = open_no_follow(part, append=bool(have))
    try:
        with response, os.fdopen(fd, "ab" if have else "wb") as out, tqdm(
            total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
            desc=dest.name, disable=not progress,
        ) as bar:
            while chunk := response.read(CHUNK):
                out.write(chunk)
                bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
    except OSError as e:
        if is_disk_full(e):
            raise DiskFullError(part, (size or 0) - part.stat().st_size or None, None,
                                f" {part} keeps what arrived and resumes next time.") from e
        raise DownloadError(f"downloading {url} to {dest} was interrupted ({e}); "
                            f"{part} keeps the partial data and resumes next time") from e
    except http.client.HTTPException as e:
        raise DownloadError(f"downloading {url} to {dest} was interrupted ({e}); "
                            f"{part} keeps the partial data and resumes next time") from e


def fetch_and_convert(folder: Path, url: str, filename: str, *, size: int | None, sha256: str | None,
                      convert: Callable[[Path, str], None], done: Callable[[], bool], what: str, advice: str = "",
                      progress: bool = True) -> None:
    """Download ``url`` into ``folder`` and ``convert(download, sha256)`` it, under the folder's lock.

    The download is verified (size, and sha256: pinned, or the one recorded at first download in
    ``folder/source.json``). It is deleted only after a successful conversion: a full disk or a killed process
    keeps it, and the next call re-verifies and converts it without downloading again. ``convert`` writes the
    folder's files and its ``source.json``, which records the sha256 (trust on first use) once the file converted.
    ``done()`` says whether the folder is complete: a process that waited for the lock finds it so and returns.
    """
    download = folder / filename
    with cache_lock(folder, f"downloading {what}"):
        if done():
            return
        record = read_json(folder / "source.json")
        expected = sha256 or record.get("sha256")
        sha = _verified_leftover(download, size, expected)
        if sha is None:
            sha = download_url(url, download, size=size, sha256=expected, progress=progress, advice=advice,
                               lock=False)
        try:
            convert(download, sha)
        except DiskFullError as e:
            raise DiskFullError(e.path, e.needed, e.free, f" The verified download {download} is kept: free some "
                                "space (or set CLIPAG_CACHE to a larger disk) and run the same command again; it "
                                "converts the kept file without downloading it.") from e
        download.unlink()  # converted: the pickle is never read again


def _verified_leftover(download: Path, size: int | None, expected: str | None) -> str | None:
    """The sha256 of a complete, verified download left by an interrupted conversion, else ``None``."""
    if not download.is_file() or download.is_symlink():
        return None
    if size is not None and download.stat().st_size != size:
        return None
    sha = sha256_of(download, progress=download.stat().st_size > 1e8)
    if expected and sha != expected:
        download.unlink()
        return None
    print(f"[clipag] {download}: a verified download is already here; converting it", file=sys.stderr, flush=True)
    return sha
