"""Where weights come from: registry entries, ``hf-hub:`` ids and local files, all ending as safetensors.

Every source resolves to a :class:`ResolvedWeights` (an open_clip model config, a verified safetensors
or in-memory state dict, and a preprocess config). Registry downloads are cached as a Hub-layout folder
(``open_clip_config.json`` + ``open_clip_model.safetensors`` + ``source.json``), so the cache is itself
loadable by open_clip and by ``clipag.load(path)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import hf_hub_download, try_to_load_from_cache

from .checkpoints import Checkpoint, CheckpointError, infer_openai_config, read_checkpoint, save_safetensors
from .hub import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    DownloadError,
    OfflineError,
    cache_root,
    converted_path,
    download_url,
    is_offline,
    model_dir,
    read_json,
    sha256_of,
    write_json_atomic,
)
from .model import build_model, load_weights
from .registry import ModelEntry, get_entry, not_found_error

__all__ = ["ResolvedWeights", "resolve", "fetch_entry", "load_entry", "install_in_hub_cache", "import_checkpoint",
           "CONFIG_NAME", "WEIGHTS_NAME", "CONFIG_METADATA_KEY"]

_HUB_WEIGHT_NAMES = (WEIGHTS_NAME, "open_clip_pytorch_model.safetensors",
                     "open_clip_pytorch_model.bin")
CONFIG_METADATA_KEY = "clipag_model_cfg"  # safetensors metadata: the model config, so a file is self-describing


@dataclass
class ResolvedWeights:
    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    source: str
    preprocess: dict[str, Any] = field(default_factory=dict)


def _how_to_get(entry: ModelEntry, target: Path) -> str:
    return (f"On a machine with internet run `clipag download {entry.name}` and copy {target} here, "
            f"or download {entry.source} yourself and run `clipag import {entry.name} FILE`.")


def fetch_entry(entry: ModelEntry, download_root: str | os.PathLike | None = None,
                progress: bool = True) -> Path:
    """Download a URL-sourced registry entry, verify it and cache it as safetensors; return the folder.

    An entry already in the cache is returned as is; :func:`load_entry` checks its integrity.
    """
    folder = model_dir(entry.name, download_root)
    if (folder / WEIGHTS_NAME).exists():
        return folder
    if is_offline():
        raise OfflineError(f"Model {entry.name} is not in the cache ({folder}) and offline mode is on "
                           "(HF_HUB_OFFLINE/CLIPAG_OFFLINE). " + _how_to_get(entry, folder))
    download = folder / (entry.filename or "download.pt")
    recorded = read_json(folder / "source.json").get("sha256")
    sha = download_url(str(entry.url), download, size=entry.size, sha256=entry.sha256 or recorded,
                       progress=progress)
    try:
        import_checkpoint(entry, download, download_root, known_sha256=sha)
    finally:
        download.unlink(missing_ok=True)  # converted (or unusable): the pickle is never read again
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
                raise CheckpointError(f"{e}. The cached file is unusable. " + _how_to_get(entry, folder)) from e
            warnings.warn(f"{e}; deleting it and fetching it again", stacklevel=2)
            weights.unlink()
    raise AssertionError("unreachable")


def import_checkpoint(entry: ModelEntry, file: str | os.PathLike, download_root: str | os.PathLike | None = None,
                      known_sha256: str | None = None) -> Path:
    """Verify ``file`` against the entry, check it fits the architecture, and cache it as safetensors."""
    file = Path(file)
    folder = model_dir(entry.name, download_root)
    if entry.size is not None and file.stat().st_size != entry.size:
        raise CheckpointError(f"{file}: {file.stat().st_size} bytes, but {entry.name} ({entry.source}) is "
                              f"{entry.size} bytes: truncated or a different file")
    sha = known_sha256 or sha256_of(file, progress=True)
    expected = entry.sha256 or read_json(folder / "source.json").get("sha256")
    if expected and sha != expected:
        raise CheckpointError(f"{file}: sha256 {sha} differs from {expected} "
                              f"({'pinned' if entry.sha256 else 'recorded at first download'})")
    checkpoint = read_checkpoint(file)
    config = entry.model_config()
    model = build_model(config, initialize=False)
    load_weights(model, checkpoint.state_dict, str(file))  # proves keys and shapes fit before caching
    save_safetensors(model.state_dict(), folder / WEIGHTS_NAME,
                     metadata={CONFIG_METADATA_KEY: config, "clipag_entry": entry.name, "source_sha256": sha})
    write_json_atomic(folder / CONFIG_NAME, {"model_cfg": config, "preprocess_cfg": entry.preprocess})
    write_json_atomic(folder / "source.json", {
        "name": entry.name, "url": entry.source, "size": file.stat().st_size, "sha256": sha,
        "sha256_pinned": bool(entry.sha256), "safetensors_size": (folder / WEIGHTS_NAME).stat().st_size,
    })
    return folder


def _verify_cached(folder: Path) -> None:
    """Cheap integrity check of a cache folder: recorded size, then the safetensors header (on read)."""
    weights = folder / WEIGHTS_NAME
    expected = read_json(folder / "source.json").get("safetensors_size")
    if expected is not None and weights.stat().st_size != expected:
        raise CheckpointError(f"{weights}: {weights.stat().st_size} bytes, expected {expected} (truncated)")


def _hub_download(repo: str, filename: str, cache_dir: str | None, force: bool = False) -> str | None:
    """A Hub file's local path, or ``None`` if the repo is known not to have it (online, or cached as absent)."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:  # huggingface_hub >= 1.0; before it (what transformers 4 needs) a remote 404 is an EntryNotFoundError,
        from huggingface_hub.errors import RemoteEntryNotFoundError  # of which LocalEntryNotFoundError is a subclass
    except ImportError:
        from huggingface_hub.errors import EntryNotFoundError as RemoteEntryNotFoundError

    try:
        return hf_hub_download(repo, filename, cache_dir=cache_dir, local_files_only=is_offline(),
                               force_download=force)
    except LocalEntryNotFoundError as e:  # first: under huggingface_hub < 1.0 it is also an EntryNotFoundError
        if not is_offline():
            raise DownloadError(f"could not download {filename} from hf-hub:{repo}: {e}") from e
        if try_to_load_from_cache(repo, filename, cache_dir=cache_dir) is not None:
            return None  # an earlier online lookup recorded that the file does not exist
        raise OfflineError(
            f"hf-hub:{repo} ({filename}) is not in the Hugging Face cache and offline mode is on. "
            f"On a machine with internet run `clipag download hf-hub:{repo}` and copy its Hugging Face "
            "cache (HF_HUB_CACHE) here.") from e
    except RemoteEntryNotFoundError:
        return None


def _fetch_hub(repo: str, cache_dir: str | None = None) -> tuple[dict[str, Any], str]:
    """``(open_clip_config, local weights path)``; a repo without weights is an error, never random init."""
    config_path = _hub_download(repo, CONFIG_NAME, cache_dir)
    if config_path is None:
        raise RuntimeError(f"hf-hub:{repo} has no {CONFIG_NAME}; it is not an open_clip repository")
    config = json.loads(Path(config_path).read_text(encoding="utf-8"))
    names = list(_HUB_WEIGHT_NAMES)
    if is_offline():  # offline, whichever weights file is cached wins
        names.sort(key=lambda n: not isinstance(try_to_load_from_cache(repo, n, cache_dir=cache_dir), str))
    for name in names:
        path = _hub_download(repo, name, cache_dir)
        if path is not None:
            return config, path
    raise RuntimeError(f"hf-hub:{repo} has no weights file (looked for {', '.join(_HUB_WEIGHT_NAMES)}); "
                       "refusing to return a randomly initialised model")


def _read_hub_weights(repo: str, cache_dir: str | None, download_root: str | os.PathLike | None) -> \
        tuple[dict[str, Any], dict[str, torch.Tensor], str]:
    config, hub_path = _fetch_hub(repo, cache_dir)
    revision = Path(hub_path).parent.name
    converted = cache_root(download_root) / "hub" / repo.replace("/", "--") / f"{revision}.safetensors"
    path = converted if hub_path.endswith(".bin") and converted.exists() else Path(hub_path)
    try:
        checkpoint = read_checkpoint(path)
    except CheckpointError as e:
        if is_offline():
            raise CheckpointError(f"{e}. Offline mode is on, so it cannot be fetched again.") from e
        warnings.warn(f"{e}; fetching it again", stacklevel=3)
        converted.unlink(missing_ok=True)
        checkpoint = read_checkpoint(_hub_download(repo, Path(hub_path).name, cache_dir, force=True) or hub_path)
    if checkpoint.format != "safetensors":  # a pickled .bin: convert once, never unpickle it again
        save_safetensors(checkpoint.state_dict, converted)
    return config, checkpoint.state_dict, f"hf-hub:{repo}"


def _read_local_file(path: Path, download_root: str | os.PathLike | None) -> Checkpoint:
    """Read a user's checkpoint; a pickled one is converted to safetensors in the cache on first use.

    The conversion is keyed by the file's absolute path, size and mtime, so an edited file converts anew.
    """
    if not zipfile.is_zipfile(path):
        return read_checkpoint(path)
    converted = converted_path(path, download_root)
    if converted.exists():
        try:
            cached = read_checkpoint(converted)
            return Checkpoint(cached.state_dict, cached.metadata["source_format"])
        except (CheckpointError, KeyError) as e:
            warnings.warn(f"{converted}: {e}; converting {path} again", stacklevel=3)
    checkpoint = read_checkpoint(path)
    save_safetensors(checkpoint.state_dict, converted, {"source_format": checkpoint.format, "source": str(path)})
    return checkpoint


def _config_for_file(path: Path, metadata: dict[str, str], fmt: str, state_dict: dict[str, torch.Tensor],
                     quick_gelu: bool | None) -> tuple[dict[str, Any], dict[str, Any]]:
    sidecar = read_json(path.parent / CONFIG_NAME) if path.suffix == ".safetensors" else {}
    if CONFIG_METADATA_KEY in metadata:
        config, preprocess = json.loads(metadata[CONFIG_METADATA_KEY]), sidecar.get("preprocess_cfg", {})
    elif "model_cfg" in sidecar:
        config, preprocess = sidecar["model_cfg"], sidecar.get("preprocess_cfg", {})
    else:
        try:
            config, preprocess = infer_openai_config(state_dict), {}
        except KeyError as e:
            raise CheckpointError(f"{path}: not a CLIP checkpoint in OpenAI/open_clip layout "
                                  f"(no {e}); pass a folder with {CONFIG_NAME}") from e
        # open_clip training checkpoints (CLIPAG's format) come from open_clip configs, which use GELU.
        config["quick_gelu"] = fmt != "open_clip"
    if quick_gelu is not None:
        config["quick_gelu"] = quick_gelu
    return config, preprocess


def resolve(name: str, download_root: str | os.PathLike | None = None,
            quick_gelu: bool | None = None) -> ResolvedWeights:
    """Turn a registry name, ``hf-hub:`` id, Hub-layout folder or checkpoint file into weights + config."""
    entry = get_entry(name)
    from .hf.read import resolve_transformers  # transformers-format CLIPs (folders, hf-hub repos, registry entries)

    if (transformers_weights := resolve_transformers(name, entry, download_root, quick_gelu)) is not None:
        return transformers_weights
    if entry is not None and entry.hf_repo:
        config, state_dict, source = _read_hub_weights(entry.hf_repo, None, download_root)
        model_cfg = dict(config["model_cfg"], quick_gelu=entry.quick_gelu)  # the registry pins the activation
        return ResolvedWeights(model_cfg, state_dict, source, config.get("preprocess_cfg", entry.preprocess))
    if entry is not None:
        checkpoint = load_entry(entry, download_root)
        return ResolvedWeights(json.loads(checkpoint.metadata[CONFIG_METADATA_KEY]), checkpoint.state_dict,
                               entry.name, entry.preprocess)
    if name.startswith("hf-hub:"):
        config, state_dict, source = _read_hub_weights(name.removeprefix("hf-hub:"), None, download_root)
        model_cfg = dict(config["model_cfg"])
        if quick_gelu is not None:
            model_cfg["quick_gelu"] = quick_gelu
        return ResolvedWeights(model_cfg, state_dict, source, config.get("preprocess_cfg", {}))
    path = Path(name).expanduser()
    if path.is_dir():
        weights = next((path / n for n in _HUB_WEIGHT_NAMES if (path / n).is_file()), None)
        if weights is None or not (path / CONFIG_NAME).is_file():
            raise CheckpointError(f"{path}: a model folder needs {CONFIG_NAME} and one of {_HUB_WEIGHT_NAMES}")
        path = weights
    if not path.is_file():
        raise not_found_error(name)
    checkpoint = _read_local_file(path, download_root)
    config, preprocess = _config_for_file(path, checkpoint.metadata, checkpoint.format, checkpoint.state_dict,
                                          quick_gelu)
    return ResolvedWeights(config, checkpoint.state_dict, str(path), preprocess)


def install_in_hub_cache(folder: str | os.PathLike, repo: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Place a Hub-layout folder into the Hugging Face cache as ``repo``'s ``main`` revision.

    Lets ``clipag.load("hf-hub:ORG/NAME")`` work offline with a model that was copied, not downloaded
    (``clipag import hf-hub:ORG/NAME FOLDER``). The revision name is the content hash of the files.
    """
    from huggingface_hub import constants

    folder = Path(folder)
    resolve(str(folder))  # loads and checks config + weights before anything is installed
    files = [CONFIG_NAME, WEIGHTS_NAME] + (["README.md"] if (folder / "README.md").is_file() else [])
    for name in files[:2]:
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder}: not a Hub-layout model folder (no {name})")
    digest = hashlib.sha1()
    for name in files:
        with open(folder / name, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    base = Path(cache_dir or constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
    snapshot = base / "snapshots" / digest.hexdigest()
    snapshot.mkdir(parents=True, exist_ok=True)
    for name in files:
        tmp = snapshot / f".{name}.tmp"
        shutil.copyfile(folder / name, tmp)
        os.replace(tmp, snapshot / name)
    (base / "refs").mkdir(exist_ok=True)
    ref_tmp = base / "refs" / ".main.tmp"
    ref_tmp.write_text(digest.hexdigest())
    os.replace(ref_tmp, base / "refs" / "main")
    return snapshot
