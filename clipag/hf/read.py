"""``clipag.load`` of transformers-format CLIPs, from a local folder or an ``hf-hub:`` repo.

Such a model has ``config.json`` (``model_type: clip``) and ``model.safetensors`` or ``pytorch_model.bin`` (or their
sharded ``*.index.json`` forms), optionally ``preprocessor_config.json``. It is converted once to clipag's layout and
cached as safetensors, like every other format; a pickled ``.bin`` is read with ``weights_only=True`` once and never
again. No transformers install is needed: the conversion is :mod:`clipag.hf.convert`'s tensor bookkeeping.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..cache import cache_lock, cache_root, converted_path, source_identity
from ..checkpoints import CheckpointError, read_checkpoint, save_safetensors
from ..entries import CONFIG_METADATA_KEY
from ..hub import CONFIG_NAME, OfflineError, is_offline
from ..hub_repos import _hub_download, check_repo_id
from ..model import build_model, load_weights
from ..registry import ModelEntry
from ..weights import ResolvedWeights
from .convert import from_transformers_config, from_transformers_preprocess, from_transformers_state_dict

__all__ = ["HF_CONFIG", "HF_PREPROCESSOR", "HF_WEIGHT_NAMES", "resolve_transformers", "is_transformers_folder",
           "read_folder"]

HF_CONFIG, HF_PREPROCESSOR, HF_PROCESSOR = "config.json", "preprocessor_config.json", "processor_config.json"
HF_WEIGHT_NAMES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                   "pytorch_model.bin.index.json")
_PREPROCESS_KEY = "clipag_preprocess_cfg"


def is_transformers_folder(path: Path) -> bool:
    """A folder with transformers' ``config.json`` and no open_clip config (open_clip's layout wins if both)."""
    return (path / HF_CONFIG).is_file() and not (path / CONFIG_NAME).is_file()


def resolve_transformers(name: str, entry: ModelEntry | None, download_root: str | os.PathLike | None,
                         quick_gelu: bool | None) -> ResolvedWeights | None:
    """Weights for ``name`` if it is a transformers-format CLIP (registry entry, ``hf-hub:`` repo or folder), else None.

    Called first by :func:`clipag.weights.resolve`; ``None`` hands ``name`` back to the open_clip-layout readers.
    """
    if entry is not None:
        if getattr(entry, "layout", "open_clip") != "transformers":
            return None
        resolved = _read_hub(str(entry.hf_repo), download_root)
        resolved.config["quick_gelu"] = entry.quick_gelu  # the registry pins the activation
        return resolved
    if name.startswith("hf-hub:"):
        resolved = _read_hub_if_transformers(name.removeprefix("hf-hub:"), download_root)
    else:
        path = Path(name).expanduser()
        resolved = read_folder(path, download_root) if path.is_dir() and is_transformers_folder(path) else None
    if resolved is not None and quick_gelu is not None:
        resolved.config["quick_gelu"] = quick_gelu
    return resolved


def read_folder(folder: Path, download_root: str | os.PathLike | None = None) -> ResolvedWeights:
    """A local transformers-format folder, converted once and again whenever one of its files changes."""
    config = _clip_config(folder / HF_CONFIG, str(folder))
    names = [n for n in HF_WEIGHT_NAMES if (folder / n).is_file()]
    if not names:
        raise CheckpointError(f"{folder}: has {HF_CONFIG} but no weights file "
                              f"(looked for {', '.join(HF_WEIGHT_NAMES)})")
    key_file = folder / names[0]
    inputs = sorted(p for p in folder.iterdir() if p.is_file() and (
        p.name.startswith(("model", "pytorch_model")) or p.name in (HF_CONFIG, HF_PREPROCESSOR, HF_PROCESSOR)))
    identity = ";".join(f"{p.name}={source_identity(p)}" for p in inputs)  # shards and processor config included
    return _convert_once(config, lambda: _folder_processor(folder),
                         lambda: _read_weights(key_file, lambda f: folder / f),
                         converted_path(key_file, download_root, tag=":transformers"), str(folder), identity)


def _folder_processor(folder: Path) -> dict[str, Any]:
    """``preprocessor_config.json``, or the image processor transformers 5 nests in ``processor_config.json``."""
    if (folder / HF_PREPROCESSOR).is_file():
        return _read_json(folder / HF_PREPROCESSOR)
    if (folder / HF_PROCESSOR).is_file():
        return _read_json(folder / HF_PROCESSOR).get("image_processor", {})
    return {}


def _read_hub_if_transformers(repo: str, download_root: str | os.PathLike | None) -> ResolvedWeights | None:
    """``None`` for an open_clip-layout repo; the converted weights for a transformers one."""
    check_repo_id(repo)
    try:
        if _hub_download(repo, CONFIG_NAME, None) is not None:
            return None  # open_clip layout: weights.py reads it
    except OfflineError as offline:
        try:
            _hub_download(repo, HF_CONFIG, None)
        except OfflineError:
            raise offline from None
    if _hub_download(repo, HF_CONFIG, None) is None:
        raise RuntimeError(f"hf-hub:{repo} has neither {CONFIG_NAME} (open_clip) nor {HF_CONFIG} (transformers): "
                           "not a CLIP repository clipag can read")
    return _read_hub(repo, download_root)


def _read_hub(repo: str, download_root: str | os.PathLike | None) -> ResolvedWeights:
    config_path = _hub_download(repo, HF_CONFIG, None)
    if config_path is None:
        raise RuntimeError(f"hf-hub:{repo} has no {HF_CONFIG}; it is not a transformers model repository")
    config = _clip_config(Path(config_path), f"hf-hub:{repo}")
    revision = Path(config_path).parent.name
    converted = cache_root(download_root) / "hub" / repo.replace("/", "--") / f"{revision}.transformers.safetensors"

    def read() -> dict[str, torch.Tensor]:
        name = _hub_weights_name(repo)
        return _read_weights(Path(str(_hub_download(repo, name, None))), lambda f: _require(repo, f))

    def processor() -> dict[str, Any]:
        standalone = _optional_hub_json(repo, HF_PREPROCESSOR)
        if standalone:
            return standalone
        nested = _optional_hub_json(repo, HF_PROCESSOR)
        if nested:
            return nested.get("image_processor", {})
        if standalone is None or nested is None:
            warnings.warn(f"hf-hub:{repo}: its image processor config is not in the Hugging Face cache (offline); "
                          "preprocessing defaults to OpenAI's (bicubic, short side, center crop, OpenAI mean/std)",
                          stacklevel=5)
        return {}

    return _convert_once(config, processor, read, converted, f"hf-hub:{repo}")


def _hub_weights_name(repo: str) -> str:
    names = list(HF_WEIGHT_NAMES)
    if is_offline():  # offline, whichever weights file is cached wins
        from huggingface_hub import try_to_load_from_cache

        names.sort(key=lambda n: not isinstance(try_to_load_from_cache(repo, n), str))
    for name in names:
        if _hub_download(repo, name, None) is not None:
            return name
    raise RuntimeError(f"hf-hub:{repo} has no weights file (looked for {', '.join(HF_WEIGHT_NAMES)}); "
                       "refusing to return a randomly initialised model")


def _require(repo: str, filename: str) -> Path:
    path = _hub_download(repo, filename, None)
    if path is None:
        raise CheckpointError(f"hf-hub:{repo}: its index names {filename}, which the repository does not have")
    return Path(path)


def _optional_hub_json(repo: str, filename: str) -> dict[str, Any] | None:
    """The file's JSON, ``{}`` if the repo has no such file, ``None`` if offline and the cache cannot tell."""
    try:
        path = _hub_download(repo, filename, None)
    except OfflineError:
        return None
    return _read_json(Path(path)) if path else {}


def _read_weights(path: Path, locate: Callable[[str], Path]) -> dict[str, torch.Tensor]:
    """One weights file, or every shard an ``*.index.json`` names (``locate`` finds a shard by file name)."""
    if path.name.endswith(".index.json"):
        weight_map = _read_json(path).get("weight_map", {})
        state_dict: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            state_dict.update(read_checkpoint(locate(shard)).state_dict)
        missing = sorted(set(weight_map) - set(state_dict))
        if missing:
            raise CheckpointError(f"{path}: shards lack {missing[:5]}")
        return state_dict
    return read_checkpoint(path).state_dict


def _convert_once(config: dict[str, Any], read_processor: Callable[[], dict[str, Any]],
                  read_weights: Callable[[], dict[str, torch.Tensor]], converted: Path, source: str,
                  identity: str = "") -> ResolvedWeights:
    """The cached conversion if there is a usable one for this ``identity`` of the source (a Hub revision is its
    own identity), else convert and cache it, under the conversion's inter-process lock."""
    with cache_lock(converted, f"converting {source}"):
        if converted.exists():
            cached = _read_cached(converted, identity)
            if cached is not None:
                return ResolvedWeights(cached[0], cached[1], source, cached[2])
        return _convert(config, read_processor, read_weights, converted, source, identity)


def _convert(config: dict[str, Any], read_processor: Callable[[], dict[str, Any]],
             read_weights: Callable[[], dict[str, torch.Tensor]], converted: Path, source: str,
             identity: str) -> ResolvedWeights:
    hf_state_dict = read_weights()
    try:
        model_cfg = from_transformers_config(config, hf_state_dict)
        state_dict = from_transformers_state_dict(hf_state_dict)
        preprocess = from_transformers_preprocess(read_processor())
    except (RuntimeError, KeyError) as e:
        raise CheckpointError(f"{source}: cannot read it as a CLIP: {e}") from e
    load_weights(build_model(model_cfg, initialize=False), state_dict, source)  # proves it fits before caching
    try:
        save_safetensors(state_dict, converted, {CONFIG_METADATA_KEY: model_cfg, _PREPROCESS_KEY: preprocess,
                                                 "source": source, "source_format": "transformers",
                                                 "source_identity": identity})
    except OSError as e:  # a full or read-only cache costs the conversion, not the load
        warnings.warn(f"could not cache the conversion of {source} at {converted} ({e}); it was read directly",
                      stacklevel=4)
    return ResolvedWeights(model_cfg, state_dict, source, preprocess)


def _read_cached(converted: Path, identity: str) -> tuple[dict[str, Any], dict[str, torch.Tensor],
                                                          dict[str, Any]] | None:
    try:
        cached = read_checkpoint(converted)
        if cached.metadata.get("source_identity", "") != identity:
            return None  # the source changed since it was converted
        return (json.loads(cached.metadata[CONFIG_METADATA_KEY]), cached.state_dict,
                json.loads(cached.metadata[_PREPROCESS_KEY]))
    except (CheckpointError, KeyError, json.JSONDecodeError) as e:
        warnings.warn(f"{converted}: {e}; converting again", stacklevel=4)
        converted.unlink(missing_ok=True)
        return None


def _clip_config(path: Path, source: str) -> dict[str, Any]:
    """``config.json``, checked to be transformers' CLIP before any weights are read."""
    config = _read_json(path)
    if config.get("model_type") != "clip":
        raise CheckpointError(f"{source}: {HF_CONFIG} says model_type={config.get('model_type')!r}; clipag reads "
                              "transformers' CLIP (model_type 'clip') and open_clip layouts")
    return config


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable JSON ({e})") from e
