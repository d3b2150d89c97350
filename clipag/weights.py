"""Where weights come from: registry entries, ``hf-hub:`` ids and local files, all ending as safetensors.

Every source resolves to a :class:`ResolvedWeights` (an open_clip model config, a verified safetensors
or in-memory state dict, and a preprocess config), whose config is checked (:mod:`clipag.model_config`) before
anything is built from it. Registry downloads live in :mod:`clipag.entries`, Hub repos in
:mod:`clipag.hub_repos`; a user's pickled file is converted here, once, into ``<cache>/converted/``.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .cache import cache_lock, converted_path, read_json, source_identity
from .checkpoints import Checkpoint, CheckpointError, infer_openai_config, is_pickled, read_checkpoint, save_safetensors
from .entries import CONFIG_METADATA_KEY, fetch_entry, import_checkpoint, load_entry
from .hub import CONFIG_NAME, WEIGHTS_NAME
from .hub_repos import HUB_WEIGHT_NAMES, install_in_hub_cache, read_hub_weights
from .model_config import check_model_config
from .registry import get_entry, not_found_error

__all__ = ["ResolvedWeights", "resolve", "fetch_entry", "load_entry", "install_in_hub_cache", "import_checkpoint",
           "read_local_checkpoint", "CONFIG_NAME", "WEIGHTS_NAME", "CONFIG_METADATA_KEY"]

# Suffixes that say a name is meant as a file, whatever else it looks like (registry names have none).
_FILE_SUFFIXES = frozenset({".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".pkl", ".json", ".png", ".jpg",
                            ".jpeg", ".gif", ".svg", ".npz", ".npy", ".zip", ".tar", ".onnx", ".h5"})


@dataclass
class ResolvedWeights:
    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    source: str
    preprocess: dict[str, Any] = field(default_factory=dict)


def read_local_checkpoint(path: Path, download_root: str | os.PathLike | None) -> Checkpoint:
    """Read a user's checkpoint; a pickled one is converted to safetensors in the cache on first use.

    The conversion is kept per file and reused while the file's identity (size, mtime, inode, change time:
    :func:`clipag.cache.source_identity`) is unchanged, so a replaced file converts anew. A cache that cannot
    take the conversion (full, read-only) does not fail the load: the file is read directly, with a warning.
    """
    path = Path(path)
    if not is_pickled(path):
        return read_checkpoint(path)
    converted = converted_path(path, download_root)
    identity = source_identity(path)
    cached = _read_conversion(converted, identity, path)
    if cached is not None:
        return cached
    with cache_lock(converted, f"converting {path.name}"):
        cached = _read_conversion(converted, identity, path)  # another process may have converted it meanwhile
        if cached is not None:
            return cached
        checkpoint = read_checkpoint(path)
        try:
            save_safetensors(checkpoint.state_dict, converted, {"source_format": checkpoint.format,
                                                                "source": str(path), "source_identity": identity})
        except OSError as e:  # DiskFullError, a read-only cache...
            warnings.warn(f"could not cache the safetensors conversion of {path} at {converted} ({e}); it was read "
                          "directly and will be converted on a later load", stacklevel=3)
    return checkpoint


def _read_conversion(converted: Path, identity: str, path: Path) -> Checkpoint | None:
    if not converted.exists():
        return None
    try:
        cached = read_checkpoint(converted)
        if cached.metadata.get("source_identity") == identity:
            return Checkpoint(cached.state_dict, cached.metadata["source_format"])
    except (CheckpointError, KeyError) as e:
        warnings.warn(f"{converted}: {e}; converting {path} again", stacklevel=4)
    return None


def _config_for_file(path: Path, metadata: dict[str, str], fmt: str, state_dict: dict[str, torch.Tensor],
                     quick_gelu: bool | None) -> tuple[dict[str, Any], dict[str, Any]]:
    sidecar = read_json(path.parent / CONFIG_NAME) if path.suffix == ".safetensors" else {}
    if CONFIG_METADATA_KEY in metadata:
        try:
            config, preprocess = json.loads(metadata[CONFIG_METADATA_KEY]), sidecar.get("preprocess_cfg", {})
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path}: corrupt model config in its metadata ({e})") from e
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
    if quick_gelu is not None and isinstance(config, dict):
        config["quick_gelu"] = quick_gelu
    return config, preprocess


def _checked(resolved: ResolvedWeights, where: str) -> ResolvedWeights:
    numel = sum(t.numel() for t in resolved.state_dict.values())
    check_model_config(resolved.config, where, numel)
    return resolved


def _missing_path_error(name: str, path: Path) -> Exception:
    """A name that can only be a path, naming no existing file: say so, not "unknown model"."""
    looks_like_path = name.startswith((".", "/", "~")) or path.suffix.lower() in _FILE_SUFFIXES
    if looks_like_path:
        return FileNotFoundError(f"{name}: no such file or folder (looked for {path.absolute()}). A model is a "
                                 "registry name (`clipag models`), hf-hub:ORG/NAME, a model folder or a weights file.")
    return not_found_error(name)


def resolve(name: str, download_root: str | os.PathLike | None = None,
            quick_gelu: bool | None = None) -> ResolvedWeights:
    """Turn a registry name, ``hf-hub:`` id, Hub-layout folder or checkpoint file into weights + config."""
    from .hf.read import resolve_transformers  # transformers-format CLIPs (folders, hf-hub repos, registry entries)

    entry = get_entry(name)
    if (transformers_weights := resolve_transformers(name, entry, download_root, quick_gelu)) is not None:
        return _checked(transformers_weights, transformers_weights.source)
    if entry is not None and entry.hf_repo:
        config, state_dict, source = read_hub_weights(entry.hf_repo, None, download_root)
        model_cfg = dict(config["model_cfg"], quick_gelu=entry.quick_gelu)  # the registry pins the activation
        return _checked(ResolvedWeights(model_cfg, state_dict, source,
                                        config.get("preprocess_cfg", entry.preprocess)), f"{source} ({CONFIG_NAME})")
    if entry is not None:
        checkpoint = load_entry(entry, download_root)
        return ResolvedWeights(json.loads(checkpoint.metadata[CONFIG_METADATA_KEY]), checkpoint.state_dict,
                               entry.name, entry.preprocess)
    if name.startswith("hf-hub:"):
        config, state_dict, source = read_hub_weights(name.removeprefix("hf-hub:"), None, download_root)
        model_cfg = dict(config["model_cfg"])
        if quick_gelu is not None:
            model_cfg["quick_gelu"] = quick_gelu
        return _checked(ResolvedWeights(model_cfg, state_dict, source, config.get("preprocess_cfg", {})),
                        f"{source} ({CONFIG_NAME})")
    path = Path(name).expanduser()
    if path.is_dir():
        weights = next((path / n for n in HUB_WEIGHT_NAMES if (path / n).is_file()), None)
        if weights is None or not (path / CONFIG_NAME).is_file():
            raise CheckpointError(f"{path}: a model folder needs {CONFIG_NAME} and one of "
                                  f"{', '.join(HUB_WEIGHT_NAMES)}")
        path = weights
    if not path.is_file():
        raise _missing_path_error(name, path)
    checkpoint = read_local_checkpoint(path, download_root)
    config, preprocess = _config_for_file(path, checkpoint.metadata, checkpoint.format, checkpoint.state_dict,
                                          quick_gelu)
    return _checked(ResolvedWeights(config, checkpoint.state_dict, str(path), preprocess), str(path))
