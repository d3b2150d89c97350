"""open_clip ``hf-hub:`` repos: files through huggingface_hub and its cache, pickled weights converted once.

A repo holds ``open_clip_config.json`` and a weights file (``open_clip_model.safetensors``,
``open_clip_pytorch_model.safetensors`` or the pickled ``open_clip_pytorch_model.bin`` of older repos such as
chs20's and timm's). A repo with no weights is an error: open_clip would warn and return random weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import hf_hub_download, try_to_load_from_cache

from .cache import cache_lock, cache_root
from .checkpoints import CheckpointError, read_checkpoint, save_safetensors
from .hub import CONFIG_NAME, WEIGHTS_NAME, DownloadError, OfflineError, check_reachable, is_offline

__all__ = ["HUB_WEIGHT_NAMES", "check_repo_id", "read_hub_weights", "install_in_hub_cache"]

HUB_WEIGHT_NAMES = (WEIGHTS_NAME, "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin")


def check_repo_id(repo: str) -> str:
    """``repo`` if it is a valid ``ORG/NAME`` Hub id, else a ``ValueError`` that says what is wrong with it."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo)
    except HFValidationError as e:
        raise ValueError(f"hf-hub:{repo} is not a valid Hugging Face repo id ({e}). Use hf-hub:ORG/NAME, e.g. "
                         "hf-hub:chs20/fare2-clip") from e
    return repo


def _offline_advice(repo: str) -> str:
    return (f"On a machine with internet run `clipag download hf-hub:{repo}` and copy its Hugging Face cache "
            "(HF_HUB_CACHE) here, or set HF_HUB_OFFLINE=1 to use only what is cached.")


def _hub_download(repo: str, filename: str, cache_dir: str | None, force: bool = False) -> str | None:
    """A Hub file's local path, or ``None`` if the repo is known not to have it (online, or cached as absent).

    Online, an unreachable Hub fails at once (or falls back to a cached copy) instead of after huggingface_hub's
    retries, which take about half a minute per file.
    """
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:  # huggingface_hub >= 1.0; before it (what transformers 4 needs) a remote 404 is an EntryNotFoundError,
        from huggingface_hub.errors import RemoteEntryNotFoundError  # of which LocalEntryNotFoundError is a subclass
    except ImportError:
        from huggingface_hub.errors import EntryNotFoundError as RemoteEntryNotFoundError

    offline = is_offline()
    if not offline and (problem := check_reachable(constants.ENDPOINT)):
        cached = try_to_load_from_cache(repo, filename, cache_dir=cache_dir)
        if isinstance(cached, str) and not force:
            return cached
        raise DownloadError(f"could not download {filename} from hf-hub:{repo}: {problem}. Is this machine "
                            f"offline? {_offline_advice(repo)}")
    try:
        return hf_hub_download(repo, filename, cache_dir=cache_dir, local_files_only=offline, force_download=force)
    except LocalEntryNotFoundError as e:  # first: under huggingface_hub < 1.0 it is also an EntryNotFoundError
        if not offline:
            raise DownloadError(f"could not download {filename} from hf-hub:{repo}: {e}. {_offline_advice(repo)}") \
                from e
        if try_to_load_from_cache(repo, filename, cache_dir=cache_dir) is not None:
            return None  # an earlier online lookup recorded that the file does not exist
        raise OfflineError(f"hf-hub:{repo} ({filename}) is not in the Hugging Face cache and offline mode is on. "
                           f"{_offline_advice(repo)}") from e
    except RemoteEntryNotFoundError:
        return None


def _fetch_hub(repo: str, cache_dir: str | None = None) -> tuple[dict[str, Any], str, str]:
    """``(open_clip_config, config path, local weights path)``; no weights is an error, never random init."""
    config_path = _hub_download(repo, CONFIG_NAME, cache_dir)
    if config_path is None:
        raise RuntimeError(f"hf-hub:{repo} has no {CONFIG_NAME}; it is not an open_clip repository")
    try:
        config = json.loads(Path(config_path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{config_path}: corrupt JSON ({e})") from e
    if not isinstance(config, dict) or not isinstance(config.get("model_cfg"), dict):
        raise CheckpointError(f"{config_path}: no model_cfg object; not an open_clip config")
    names = list(HUB_WEIGHT_NAMES)
    if is_offline():  # offline, whichever weights file is cached wins
        names.sort(key=lambda n: not isinstance(try_to_load_from_cache(repo, n, cache_dir=cache_dir), str))
    for name in names:
        path = _hub_download(repo, name, cache_dir)
        if path is not None:
            return config, config_path, path
    raise RuntimeError(f"hf-hub:{repo} has no weights file (looked for {', '.join(HUB_WEIGHT_NAMES)}); "
                       "refusing to return a randomly initialised model")


def read_hub_weights(repo: str, cache_dir: str | None, download_root: str | os.PathLike | None) -> \
        tuple[dict[str, Any], dict[str, torch.Tensor], str]:
    """``(open_clip config, state dict, "hf-hub:REPO")``; a pickled ``.bin`` is converted once, under a lock."""
    check_repo_id(repo)
    config, config_path, hub_path = _fetch_hub(repo, cache_dir)
    revision = Path(hub_path).parent.name
    converted = cache_root(download_root) / "hub" / repo.replace("/", "--") / f"{revision}.safetensors"
    if not hub_path.endswith(".bin"):
        return config, _read_or_refetch(repo, Path(hub_path), cache_dir, None), f"hf-hub:{repo}"
    with cache_lock(converted, f"converting hf-hub:{repo}"):
        state_dict = _read_or_refetch(repo, converted if converted.exists() else Path(hub_path), cache_dir, converted)
        if not converted.exists():  # a pickled .bin: convert once, never unpickle it again
            try:
                save_safetensors(state_dict, converted)
            except OSError as e:
                warnings.warn(f"could not cache the conversion of hf-hub:{repo} at {converted} ({e}); loading it from "
                              f"{hub_path} directly this time", stacklevel=3)
    return config, state_dict, f"hf-hub:{repo}"


def _read_or_refetch(repo: str, path: Path, cache_dir: str | None, converted: Path | None) -> dict[str, torch.Tensor]:
    try:
        return read_checkpoint(path).state_dict
    except CheckpointError as e:
        if is_offline():
            raise CheckpointError(f"{e}. Offline mode is on, so it cannot be fetched again.") from e
        warnings.warn(f"{e}; fetching it again", stacklevel=4)
        if converted is not None:
            converted.unlink(missing_ok=True)
        name = path.name if converted is None or path != converted else "open_clip_pytorch_model.bin"
        fresh = _hub_download(repo, name, cache_dir, force=True)
        return read_checkpoint(fresh or path).state_dict


def install_in_hub_cache(folder: str | os.PathLike, repo: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Place a Hub-layout folder into the Hugging Face cache as ``repo``'s ``main`` revision.

    Lets ``clipag.load("hf-hub:ORG/NAME")`` work offline with a model that was copied, not downloaded
    (``clipag import hf-hub:ORG/NAME FOLDER``). The revision name is the content hash of the files.
    """
    from huggingface_hub import constants

    from .weights import resolve

    check_repo_id(repo)
    folder = Path(folder)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder}: not a Hub-layout model folder (no {name})")
    resolve(str(folder))  # loads and checks config + weights before anything is installed
    files = [CONFIG_NAME, WEIGHTS_NAME] + (["README.md"] if (folder / "README.md").is_file() else [])
    digest = hashlib.sha1()
    for name in files:
        with open(folder / name, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    base = Path(cache_dir or constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
    snapshot = base / "snapshots" / digest.hexdigest()
    with cache_lock(base, f"installing hf-hub:{repo}"):
        snapshot.mkdir(parents=True, exist_ok=True)
        for name in files:
            tmp = snapshot / f".{name}.{os.getpid()}.tmp"
            shutil.copyfile(folder / name, tmp)
            os.replace(tmp, snapshot / name)
        (base / "refs").mkdir(exist_ok=True)
        ref_tmp = base / "refs" / f".main.{os.getpid()}.tmp"
        ref_tmp.write_text(digest.hexdigest())
        os.replace(ref_tmp, base / "refs" / "main")
    return snapshot
