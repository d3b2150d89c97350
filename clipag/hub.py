"""Downloads, verification, the cache and offline mode: the one path every weight file takes.

Direct URLs (CLIPAG lives on Zenodo) are fetched here with resume, a progress bar, size/sha256 checks
and an atomic rename. Hub repos go through huggingface_hub and its cache. Anything pickled is read
once with ``weights_only=True`` and converted to safetensors in clipag's cache, so it is never
unpickled again.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

__all__ = ["DownloadError", "OfflineError", "cache_root", "model_dir", "converted_path", "is_offline", "download_url",
           "sha256_of", "read_json", "write_json_atomic", "CONFIG_NAME", "WEIGHTS_NAME"]

CHUNK = 1 << 20
CONFIG_NAME = "open_clip_config.json"  # open_clip's Hub layout, which every cached model folder follows
WEIGHTS_NAME = "open_clip_model.safetensors"


class DownloadError(RuntimeError):
    """A download failed or its content did not verify. The message names the URL and the file."""


class OfflineError(RuntimeError):
    """Offline mode is on and a file is not in the cache. The message says how to get it."""


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
    """Where a user's pickled checkpoint is cached as safetensors (``<cache>/converted/``).

    Keyed by the file's absolute path, size and mtime (and ``tag``, for readers that keep only some tensors),
    so an edited or replaced file is converted anew.
    """
    path = Path(file)
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}{tag}".encode()).hexdigest()[:32]
    return cache_root(download_root) / "converted" / f"{key}.safetensors"


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


def download_url(url: str, dest: str | os.PathLike, *, size: int | None = None, sha256: str | None = None,
                 progress: bool = True, timeout: float = 60.0) -> str:
    """Fetch ``url`` to ``dest`` and return its sha256.

    A partial ``dest.part`` is resumed with an HTTP Range request (restarted if the server ignores it).
    The result must match ``size`` and ``sha256`` when given; only then is it renamed into place, so
    ``dest`` is either absent or complete. A mismatch deletes the partial file and raises.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    if size is not None and have > size:
        part.unlink()
        have = 0
    digest = hashlib.sha256()
    request = urllib.request.Request(url, headers={"User-Agent": "clipag", **({"Range": f"bytes={have}-"}
                                                                              if have else {})})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the partial file already holds everything
            response = None
        else:
            raise DownloadError(f"downloading {url} to {dest} failed: HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, OSError) as e:
        raise DownloadError(f"downloading {url} to {dest} failed: {e}. Partial data (if any) is kept in "
                            f"{part} and resumes next time.") from e
    if response is not None and response.status != 206:
        have = 0  # the server sent the whole file: start over
    if have:
        with open(part, "rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
    if response is not None:
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else size
        try:
            with response, open(part, "ab" if have else "wb") as out, tqdm(
                total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                desc=dest.name, disable=not progress,
            ) as bar:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
                out.flush()
                os.fsync(out.fileno())
        except (OSError, http.client.HTTPException) as e:
            raise DownloadError(f"downloading {url} to {dest} was interrupted ({e}); "
                                f"{part} keeps the partial data and resumes next time") from e
    got = part.stat().st_size
    if size is not None and got != size:
        if got > size:
            part.unlink()
        raise DownloadError(f"{url}: got {got} bytes in {part}, expected {size}"
                            + ("; the partial file is kept and resumes next time" if got < size else
                               "; the file was deleted"))
    actual = digest.hexdigest()
    if sha256 is not None and actual != sha256.lower():
        part.unlink()
        raise DownloadError(f"{url}: sha256 {actual} of {dest} does not match the expected {sha256}; "
                            "the file was deleted")
    os.replace(part, dest)
    return actual


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as e:
        raise RuntimeError(f"{path}: corrupt JSON ({e})") from e


def write_json_atomic(path: str | os.PathLike, data: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
