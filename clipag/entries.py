"""Registry models downloaded from a URL (CLIPAG on Zenodo): fetch, verify, convert once, or import by hand.

The cache folder of such a model (``<cache>/ViT-B-32/``) is an open_clip Hub-layout folder:
``open_clip_config.json`` + ``open_clip_model.safetensors`` + ``source.json`` (where the file came from, its size
and sha256). Every step runs under the folder's inter-process lock, so any number of processes can ask for the
same model at once: one downloads and converts, the others wait and then read the result.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from .cache import DiskFullError, atomic_path, cache_lock, model_dir, read_json, write_json_atomic
from .checkpoints import Checkpoint, CheckpointError, read_checkpoint, save_safetensors
from .hub import CONFIG_NAME, WEIGHTS_NAME, OfflineError, fetch_and_convert, is_offline, sha256_of
from .model import build_model, load_weights
from .registry import ModelEntry

__all__ = ["fetch_entry", "load_entry", "import_checkpoint", "how_to_get", "CONFIG_METADATA_KEY"]

CONFIG_METADATA_KEY = "clipag_model_cfg"  # safetensors metadata: the model config, so a file is self-describing


def how_to_get(entry: ModelEntry, target: Path) -> str:
    """Every way to get ``entry`` into the cache, for messages about a missing or unusable file."""
    size = f" ({entry.size / 1e9:.1f} GB)" if entry.size and entry.size >= 1e8 else ""
    file = entry.filename or "FILE"
    return (f"Ways to get it: on a machine with internet run `clipag download {entry.name}` and copy {target} here; "
            f"or download {entry.source}{size} yourself and run `clipag import {entry.name} {file}`; or load a "
            "local model folder or file instead (clipag.load(PATH), --model PATH). To try clipag with no download "
            "at all: `python -m clipag.demo --quick`.")


def fetch_entry(entry: ModelEntry, download_root: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """Download a URL-sourced registry entry, verify it and cache it as safetensors; return the folder.

    An entry already in the cache is returned as is; :func:`load_entry` checks its integrity.
    """
    folder = model_dir(entry.name, download_root)
    if (folder / WEIGHTS_NAME).exists():
        return folder
    if is_offline():
        raise OfflineError(f"Model {entry.name} is not in the cache ({folder}) and offline mode is on "
                           "(HF_HUB_OFFLINE/CLIPAG_OFFLINE). " + how_to_get(entry, folder))

    fetch_and_convert(folder, str(entry.url), entry.filename or "download.pt", size=entry.size,
                      sha256=entry.sha256, what=entry.name, progress=progress, advice=how_to_get(entry, folder),
                      convert=lambda download, sha: import_checkpoint(entry, download, download_root, known_sha256=sha),
                      done=(folder / WEIGHTS_NAME).exists)
    return folder


def load_entry(entry: ModelEntry, download_root: str | os.PathLike | None = None) -> Checkpoint:
    """Read a URL-sourced entry from the cache, fetching it first; a corrupt cache file is fetched again."""
    folder = model_dir(entry.name, download_root)
    weights = folder / WEIGHTS_NAME
    for attempt in range(2):
        fetch_entry(entry, download_root)
        try:
            _verify_cached(folder)
            return read_checkpoint(weights)
        except CheckpointError as e:
            if is_offline() or attempt:
                raise CheckpointError(f"{e}. The cached file is unusable. " + how_to_get(entry, folder)) from e
            warnings.warn(f"{e}; deleting it and fetching it again", stacklevel=2)
            with cache_lock(folder, f"repairing {entry.name}"):
                weights.unlink(missing_ok=True)
    raise AssertionError("unreachable")


def import_checkpoint(entry: ModelEntry, file: str | os.PathLike, download_root: str | os.PathLike | None = None,
                      known_sha256: str | None = None) -> Path:
    """Verify ``file`` against the entry, check it fits the architecture, and cache it as safetensors.

    Under the cache folder's lock. A full disk raises :class:`clipag.cache.DiskFullError` naming the path and the
    space needed; ``file`` itself is never touched.
    """
    file = Path(file)
    folder = model_dir(entry.name, download_root)
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no such file to import as {entry.name}")
    with cache_lock(folder, f"importing {entry.name}"):
        size = file.stat().st_size
        if entry.size is not None and size != entry.size:
            raise CheckpointError(f"{file}: {size:,} bytes, but {entry.name} ({entry.source}) is {entry.size:,} "
                                  "bytes: truncated or a different file")
        sha = known_sha256 or sha256_of(file, progress=True)
        record = read_json(folder / "source.json")
        expected = entry.sha256 or record.get("sha256")
        if expected and sha != expected:
            raise CheckpointError(f"{file}: sha256 {sha} differs from {expected} "
                                  f"({'pinned' if entry.sha256 else 'recorded at first download'})")
        checkpoint = read_checkpoint(file)
        config = entry.model_config()
        model = build_model(config, initialize=False)
        load_weights(model, checkpoint.state_dict, str(file))  # proves keys and shapes fit before caching
        state = model.state_dict()
        weights = folder / WEIGHTS_NAME
        try:
            with atomic_path(weights) as tmp:  # the weights appear last: their presence means the folder is complete
                save_safetensors(state, tmp, metadata={CONFIG_METADATA_KEY: config, "clipag_entry": entry.name,
                                                       "source_sha256": sha})
                write_json_atomic(folder / CONFIG_NAME, {"model_cfg": config, "preprocess_cfg": entry.preprocess})
                write_json_atomic(folder / "source.json", {
                    "name": entry.name, "url": entry.source, "size": size, "sha256": sha,
                    "sha256_pinned": bool(entry.sha256), "safetensors_size": tmp.stat().st_size,
                })
        except DiskFullError as e:
            raise DiskFullError(weights, e.needed, e.free) from e  # the path the user knows, not the temp file
    return folder


def _verify_cached(folder: Path) -> None:
    """Cheap integrity check of a cache folder: recorded size, then the safetensors header (on read)."""
    weights = folder / WEIGHTS_NAME
    expected = read_json(folder / "source.json").get("safetensors_size")
    if expected is not None and weights.stat().st_size != expected:
        raise CheckpointError(f"{weights}: {weights.stat().st_size} bytes, expected {expected} (truncated)")
