"""Taming/Lightning checkpoints → a VQGAN's weights, read without executing the pickle, converted once.

A published ``last.ckpt`` is a Lightning dict: ``state_dict`` (model *and* loss weights: LPIPS, the
discriminator), optimizer states, and pickled Lightning classes. :func:`clipag.checkpoints.read_lightning_checkpoint`
reads it safely; here the tensors the model needs are picked, checked (a missing or misshapen weight is an
error naming it) and cached as safetensors under ``<cache>/converted/``, so the pickle is read only once.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections import Counter
from pathlib import Path

import torch
from torch import nn

from clipag.cache import cache_lock, converted_path, source_identity
from clipag.checkpoints import CheckpointError, read_checkpoint, read_lightning_checkpoint, save_safetensors

__all__ = ["read_model_tensors", "load_model_weights", "summarize_keys"]


def summarize_keys(keys: list[str] | set[str]) -> str:
    """``loss.discriminator.* (20), transformer.* (388)``: ignored keys grouped by what they belong to."""
    groups: Counter[str] = Counter()
    for key in keys:
        parts = key.split(".")
        depth = 2 if parts[0] in ("loss", "first_stage_model") and len(parts) > 2 else 1
        groups[".".join(parts[:depth]) + ".*"] += 1
    return ", ".join(f"{name} ({count})" for name, count in sorted(groups.items()))


def _state_dict_of(obj: dict, path: Path) -> dict[str, torch.Tensor]:
    state_dict = obj.get("state_dict", obj)
    if not isinstance(state_dict, dict) or not state_dict:
        raise CheckpointError(f"{path}: no state_dict in this checkpoint (top-level keys: {sorted(map(str, obj))})")
    bad = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: state_dict entries that are not tensors: {bad[:5]}")
    return state_dict


def read_model_tensors(path: str | os.PathLike, wanted: set[str], download_root: str | os.PathLike | None = None,
                       cache_to: Path | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors of ``path`` named in ``wanted`` (as many as it has), and what was left out.

    ``.safetensors`` files are read directly. Pickled checkpoints are unpickled inertly once and their wanted
    tensors cached as safetensors (per file and wanted names, reused while the file is unchanged:
    :func:`clipag.cache.source_identity`); later calls read the cache.
    ``cache_to`` converts to that file instead (the registry's cache folder), always reading the pickle.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VQGAN checkpoint {path} not found")
    if path.suffix == ".safetensors":
        state_dict = read_checkpoint(path).state_dict
        ignored = sorted(set(state_dict) - wanted)
        return {k: v for k, v in state_dict.items() if k in wanted}, {"ignored": ignored, "inert": []}
    tag = hashlib.sha256("\n".join(sorted(wanted)).encode()).hexdigest()[:16]
    cached = cache_to or converted_path(path, download_root, tag=f":vqgan:{tag}")
    identity = source_identity(path)
    with cache_lock(cached, f"converting {path.name}"):
        if cache_to is None and cached.exists():
            try:
                checkpoint = read_checkpoint(cached)
                if checkpoint.metadata.get("source_identity") == identity:  # the same file, not a replaced one
                    return checkpoint.state_dict, json.loads(checkpoint.metadata["clipag_report"])
            except (CheckpointError, KeyError, ValueError) as e:
                warnings.warn(f"{cached}: {e}; converting {path} again", stacklevel=3)
        obj, inert = read_lightning_checkpoint(path)
        state_dict = _state_dict_of(obj, path)
        report = {"ignored": sorted(set(state_dict) - wanted), "inert": inert,
                  "extras": sorted(str(k) for k in obj if k != "state_dict")}
        kept = {k: v for k, v in state_dict.items() if k in wanted}
        save_safetensors(kept, cached, {"clipag_report": report, "source": str(path), "source_identity": identity})
    return kept, report


def load_model_weights(model: nn.Module, path: str | os.PathLike, ignore_keys: tuple[str, ...] = (),
                       download_root: str | os.PathLike | None = None) -> str:
    """Load ``path`` into ``model`` strictly (bar taming's ``ignore_keys`` prefixes); return a one-line report.

    Weights the model lacks (``loss.*``, a transformer's GPT) are skipped and reported; a weight the model
    needs but the file lacks, or one of the wrong shape, is an error naming it and the file.
    """
    expected = model.state_dict()
    state_dict, report = read_model_tensors(path, set(expected), download_root)
    dropped = lambda key: bool(ignore_keys) and key.startswith(tuple(ignore_keys))  # noqa: E731
    state_dict = {k: v for k, v in state_dict.items() if not dropped(k)}
    missing = [k for k in expected if k not in state_dict and not dropped(k)]
    if missing:
        raise CheckpointError(f"{path}: missing {len(missing)} weight(s) the VQGAN needs, e.g. {missing[:3]}: "
                              "the checkpoint does not match this config")
    wrong = [f"{k}: {tuple(v.shape)} in the file, {tuple(expected[k].shape)} in the model"
             for k, v in state_dict.items() if v.shape != expected[k].shape]
    if wrong:
        raise CheckpointError(f"{path}: shape mismatch for {len(wrong)} weight(s), e.g. {wrong[:3]}: "
                              "the checkpoint does not match this config")
    model.load_state_dict(state_dict, strict=False)
    parts = [f" ({len(state_dict)} tensors"]
    if report.get("ignored"):
        parts.append(f"; ignored, not part of the VQGAN: {summarize_keys(report['ignored'])}")
    if report.get("inert"):
        parts.append(f"; not imported: {', '.join(report['inert'])}")
    return "".join(parts) + ")"
