"""Read CLIP weights from any format without executing code.

Formats: ``.safetensors``; a zip ``torch.save`` file holding a state dict or an open_clip training
checkpoint (``{"state_dict": ...}``, ``module.`` prefixes); an OpenAI TorchScript archive; a PyTorch
Lightning checkpoint (:func:`read_lightning_checkpoint`).
Pickles are read by :mod:`clipag.unpickling`, which never runs them: ``torch.load(weights_only=True)`` plus
numpy's numbers, an inert reader for TorchScript archives, and one for Lightning checkpoints.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .cache import DiskFullError, atomic_path, ensure_space, is_disk_full
from .unpickling import describe_global, inert_load, read_torchscript_tensors, unsafe_globals, weights_only_globals

__all__ = ["CheckpointError", "Checkpoint", "read_checkpoint", "read_lightning_checkpoint", "save_safetensors",
           "infer_openai_config", "refusal_message", "is_pickled"]

# torch.save's legacy (pre-1.6) format starts by pickling a magic number (protocol 2, LONG1 of 10 bytes).
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8"

# TorchScript archives deflate their source code; nothing legitimate there comes near this.
_MAX_COMPRESSED_MEMBER = 64 << 20

# Tensors OpenAI's TorchScript archives carry that are not weights (OpenAI's build_model drops them too).
_NON_WEIGHT_KEYS = ("input_resolution", "context_length", "vocab_size")


class CheckpointError(RuntimeError):
    """A weights file is truncated, corrupt, unsafe or not a CLIP checkpoint. The message names the file."""


@dataclass
class Checkpoint:
    state_dict: dict[str, torch.Tensor]
    format: str  # "safetensors" | "open_clip" | "state_dict" | "torchscript"
    metadata: dict[str, str] = field(default_factory=dict)


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Load the weights in ``path``; raise :class:`CheckpointError` naming the file if it is unusable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: file is empty")
    with open(path, "rb") as f:
        magic = f.read(16)
    if zipfile.is_zipfile(path):
        names = _check_torch_zip(path)
        if any(n.endswith("/constants.pkl") for n in names):
            return Checkpoint(_strip_non_weights(_read_torchscript(path)), "torchscript")
        return _read_pickle(path, mmap=True)
    if magic.startswith(_LEGACY_TORCH_MAGIC):  # torch.save before PyTorch 1.6 (or _use_new_zipfile_serialization=False)
        return _read_pickle(path, mmap=False)
    if magic.startswith(b"PK") or path.suffix in (".pt", ".pth", ".bin", ".ckpt"):
        raise CheckpointError(f"{path}: truncated or corrupt torch checkpoint (not a valid zip archive)")
    if len(magic) > 8 and magic[8:9] != b"{":  # a safetensors file starts with its header's length, then JSON
        raise CheckpointError(f"{path}: not a weights file ({_file_kind(magic)}). clipag reads .safetensors, torch "
                              "checkpoints (.pt/.pth/.bin) and OpenAI TorchScript archives; see docs/formats.md")
    return _read_safetensors(path)


def is_pickled(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a torch pickle (zip or pre-1.6 format), the kind of file clipag converts once."""
    with open(path, "rb") as f:
        magic = f.read(16)
    return magic.startswith(_LEGACY_TORCH_MAGIC) or zipfile.is_zipfile(path)


_MAGIC_KINDS = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
                (b"%PDF", "a PDF document"), (b"\x1f\x8b", "a gzip archive"), (b"<svg", "an SVG image"),
                (b"<?xml", "an XML file"), (b"\x93NUMPY", "a numpy array file"), (b"\x89HDF", "an HDF5 file"))


def _file_kind(magic: bytes) -> str:
    for prefix, kind in _MAGIC_KINDS:
        if magic.startswith(prefix):
            return f"it is {kind}"
    if magic[:1] in (b"{", b"["):
        return "it is JSON text"
    return "its first bytes match no format clipag reads"


def _check_torch_zip(path: Path) -> list[str]:
    """The archive's member names, after checking that its declared sizes can be true.

    torch stores tensors and pickles uncompressed (only TorchScript's small source files are deflated), so such a
    member cannot be larger than the file. A compressed tensor or pickle (a 2 MB file can declare 2 GiB) is refused
    before anything is decompressed or allocated.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f"{path}: truncated or corrupt torch checkpoint ({e})") from e
    size = path.stat().st_size
    for info in infos:
        compressed = info.compress_type != zipfile.ZIP_STORED
        if compressed and ("/data/" in info.filename or info.filename.endswith(".pkl")
                           or info.file_size > _MAX_COMPRESSED_MEMBER):
            raise CheckpointError(f"{path}: member {info.filename} is compressed ({info.compress_size:,} bytes that "
                                  f"claim to expand to {info.file_size:,}); torch stores tensors and pickles "
                                  "uncompressed, so this is not a torch checkpoint. Nothing was decompressed.")
        if not compressed and info.file_size > size:
            raise CheckpointError(f"{path}: member {info.filename} declares {info.file_size:,} bytes, more than the "
                                  f"whole file ({size:,}): truncated or corrupt")
    return [info.filename for info in infos]


def _read_safetensors(path: Path) -> Checkpoint:
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
        state_dict = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: truncated or corrupt safetensors file ({e})") from e
    return Checkpoint(state_dict, "safetensors", metadata)


def _read_pickle(path: Path, mmap: bool) -> Checkpoint:
    """A torch pickle through the weights-only loader (numpy numbers allowed); tensors are memory-mapped, so
    the optimizer state of a training checkpoint is never read into memory, only skipped."""
    try:
        with weights_only_globals():
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise CheckpointError(refusal_message(path, e)) from e
    except (RuntimeError, EOFError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path}: truncated or corrupt torch checkpoint ({e})") from e
    fmt = "state_dict"
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj, fmt = obj["state_dict"], "open_clip"  # a training checkpoint: epoch, optimizer, scaler are dropped
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: not a CLIP checkpoint (expected a state dict of tensors)")
    if all(k.startswith("module.") for k in obj):
        obj = {k.removeprefix("module."): v for k, v in obj.items()}
    return Checkpoint(_strip_non_weights(obj), fmt)


def refusal_message(path: Path, error: Exception) -> str:
    """Why a pickle was refused: every global outside the allow-list, found without running the file, and
    whether each could run code."""
    try:
        names = unsafe_globals(path)
    except Exception:  # noqa: BLE001 - a file too broken to scan: fall back to the unpickler's own complaint
        names = []
    found = ("it names " + "; ".join(describe_global(n) for n in names) if names
             else (str(error).splitlines() or ["it holds objects beyond tensors and plain containers"])[-1].strip())
    return (f"{path}: refused to unpickle: {found}. clipag rebuilds only tensors, numbers and plain containers "
            "from a pickle; nothing from this file was run. If you trust the file, load it yourself with "
            "torch.load(weights_only=False), save its state_dict with safetensors.torch.save_file, and pass that "
            ".safetensors file instead.")


def _strip_non_weights(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state_dict.items() if k not in _NON_WEIGHT_KEYS}


def _read_torchscript(path: Path) -> dict[str, torch.Tensor]:
    try:
        state_dict = read_torchscript_tensors(path)
        if not state_dict:
            raise ValueError("the archive holds no tensors")
        return state_dict
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: refused to read TorchScript archive: {e}. Nothing from it was run.") from e
    except (StopIteration, KeyError, zipfile.BadZipFile, EOFError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: truncated or corrupt TorchScript archive ({e!r})") from e


def read_lightning_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], list[str]]:
    """Unpickle a PyTorch Lightning (or similar training) checkpoint without running any of its code.

    Real Lightning 1.x checkpoints pickle the ``ModelCheckpoint`` callback class as a key of ``callbacks``, so
    ``weights_only=True`` refuses them. :func:`clipag.unpickling.inert_load` rebuilds tensors with torch's own
    rebuilders, turns every other named class into an inert placeholder, and refuses a pickle that names a
    code-running function (``os.system``, ``builtins.eval``...). Returns ``(top-level dict, names of the
    placeholder classes)``; the caller picks the tensors it needs.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.stat().st_size == 0 or not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint (not a valid torch zip archive)")
    try:
        obj, inert = inert_load(path)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: refused to unpickle: {e}. Nothing from it was run.") from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: truncated or corrupt torch checkpoint ({e})") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not a training checkpoint (a {type(obj).__name__}, not a dict)")
    return obj, inert


def save_safetensors(state_dict: dict[str, torch.Tensor], path: str | os.PathLike,
                     metadata: dict[str, Any] | None = None) -> None:
    """Write ``state_dict`` atomically (:func:`clipag.cache.atomic_path`); non-string metadata is JSON-encoded.

    The disk's free space is checked first, and a disk that fills up during the write raises
    :class:`clipag.cache.DiskFullError` naming ``path`` and the space needed; ``path`` is then left as it was.
    """
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    tensors = {k: v.detach().contiguous() for k, v in state_dict.items()}
    path = Path(path)
    needed = sum(t.numel() * t.element_size() for t in tensors.values()) + (1 << 20)
    ensure_space(path, needed)
    with atomic_path(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata=meta)
        except (SafetensorError, OSError) as e:
            if is_disk_full(e):
                raise DiskFullError(path, needed, None) from e
            raise


def infer_openai_config(state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Derive an open_clip model config from OpenAI-layout weight shapes (ViT and ModifiedResNet).

    Heads follow OpenAI's rule (width // 64); the activation is QuickGELU, as OpenAI trained with.
    """
    sd = state_dict
    embed_dim = sd["text_projection"].shape[1]
    text_width = sd["ln_final.weight"].shape[0]
    text_layers = len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")})
    text_cfg = {"context_length": sd["positional_embedding"].shape[0],
                "vocab_size": sd["token_embedding.weight"].shape[0],
                "width": text_width, "heads": text_width // 64, "layers": text_layers}
    if "visual.proj" in sd:
        width = sd["visual.conv1.weight"].shape[0]
        patch = sd["visual.conv1.weight"].shape[-1]
        grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        layers = len({k.split(".")[3] for k in sd if k.startswith("visual.transformer.resblocks.")})
        vision_cfg = {"image_size": grid * patch, "layers": layers, "width": width, "patch_size": patch,
                      "head_width": 64}
    else:
        counts = [len({k.split(".")[2] for k in sd if k.startswith(f"visual.layer{i}.")}) for i in (1, 2, 3, 4)]
        width = sd["visual.layer1.0.conv1.weight"].shape[0]
        grid = round((sd["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
        vision_cfg = {"image_size": grid * 32, "layers": counts, "width": width, "head_width": 64}
    return {"embed_dim": embed_dim, "quick_gelu": True, "vision_cfg": vision_cfg, "text_cfg": text_cfg}
