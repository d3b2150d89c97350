"""Read CLIP weights from any format without executing code.

Formats: ``.safetensors``; a zip ``torch.save`` file holding a state dict or an open_clip training
checkpoint (``{"state_dict": ...}``, ``module.`` prefixes); an OpenAI TorchScript archive; a PyTorch
Lightning checkpoint (:func:`read_lightning_checkpoint`).
Pickles go through ``torch.load(weights_only=True)`` only. TorchScript archives are refused by that
loader and ``torch.jit.load`` would run their code, so we read their tensors with a tiny restricted
unpickler instead (no maintained library does this without executing the archive). Lightning
checkpoints pickle Lightning's own classes, which ``weights_only`` refuses; they get a restricted
unpickler that turns such classes into inert placeholders.
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

__all__ = ["CheckpointError", "Checkpoint", "read_checkpoint", "read_lightning_checkpoint", "InertObject",
           "save_safetensors", "infer_openai_config"]

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
        magic = f.read(8)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if any(n.endswith("/constants.pkl") for n in names):
            return Checkpoint(_strip_non_weights(_read_torchscript(path)), "torchscript")
        return _read_pickle(path)
    if magic.startswith(b"PK") or path.suffix in (".pt", ".pth", ".bin", ".ckpt"):
        raise CheckpointError(f"{path}: truncated or corrupt torch checkpoint (not a valid zip archive)")
    return _read_safetensors(path)


def _read_safetensors(path: Path) -> Checkpoint:
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
        state_dict = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: truncated or corrupt safetensors file ({e})") from e
    return Checkpoint(state_dict, "safetensors", metadata)


def _read_pickle(path: Path) -> Checkpoint:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused to unpickle: it holds objects beyond tensors and plain containers, "
            f"which could execute code. Nothing from it was run. ({str(e).splitlines()[0]})"
        ) from e
    except (RuntimeError, EOFError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path}: truncated or corrupt torch checkpoint ({e})") from e
    fmt = "state_dict"
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj, fmt = obj["state_dict"], "open_clip"
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: not a CLIP checkpoint (expected a state dict of tensors)")
    if all(k.startswith("module.") for k in obj):
        obj = {k.removeprefix("module."): v for k, v in obj.items()}
    return Checkpoint(_strip_non_weights(obj), fmt)


def _strip_non_weights(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state_dict.items() if k not in _NON_WEIGHT_KEYS}


class _ScriptObject:
    """Stands in for any ``__torch__.*`` class: keeps its attributes, runs nothing."""

    def __setstate__(self, state: Any) -> None:
        self.attributes = state if isinstance(state, dict) else {}


_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: tuple, stride: tuple, *_: Any) -> torch.Tensor:
    return storage.as_strided(size, stride, offset)


class _TorchScriptUnpickler(pickle.Unpickler):
    """Resolves only tensors, storages and containers; every other global is refused."""

    def __init__(self, file: Any, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(file)
        self.archive, self.prefix, self.storages = archive, prefix, {}

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("__torch__"):
            return _ScriptObject
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if module == "collections" and name == "OrderedDict":
            return dict
        raise pickle.UnpicklingError(f"global '{module}.{name}' is forbidden")

    def persistent_load(self, pid: Any) -> torch.Tensor:
        _, dtype, key, _location, _numel = pid
        if key not in self.storages:
            raw = bytearray(self.archive.read(f"{self.prefix}/data/{key}"))
            self.storages[key] = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        return self.storages[key]


def _read_torchscript(path: Path) -> dict[str, torch.Tensor]:
    try:
        with zipfile.ZipFile(path) as archive:
            data_pkl = next(n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1)
            prefix = data_pkl.rsplit("/", 1)[0]
            with archive.open(data_pkl) as f:
                root = _TorchScriptUnpickler(f, archive, prefix).load()
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: refused to read TorchScript archive ({e}); nothing from it was run") from e
    except (StopIteration, KeyError, zipfile.BadZipFile, EOFError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: truncated or corrupt TorchScript archive ({e!r})") from e
    state_dict: dict[str, torch.Tensor] = {}

    def walk(obj: _ScriptObject, prefix: str) -> None:
        for name, value in getattr(obj, "attributes", {}).items():
            if isinstance(value, torch.Tensor):
                state_dict[prefix + name] = value.clone()  # own the memory, drop the shared zip buffer
            elif isinstance(value, _ScriptObject):
                walk(value, f"{prefix}{name}.")

    walk(root, "")
    # TorchScript keeps non-persistent tensors (OpenAI's `attn_mask`) as attributes; they are not weights.
    return {k: v for k, v in state_dict.items() if not k.endswith("attn_mask")}


class InertObject:
    """Stands in for a class a pickle names but that we never import (Lightning callbacks, numpy scalars...).

    Calling it, building it or setting its state only stores the arguments; nothing of the named class runs.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<inert {type(self).__module__}.{type(self).__qualname__}>"


# Modules whose functions run code or touch the system. A pickle naming one of them is an attack, not a
# checkpoint: refuse it outright. (Safety does not rest on this list: no global outside torch's own
# weights-only allow-list is ever resolved to a real object. The list turns the attack into an error.)
_CODE_MODULES = frozenset({
    "builtins", "__builtin__", "os", "posix", "nt", "subprocess", "sys", "importlib", "runpy", "shutil", "socket",
    "pickle", "_pickle", "marshal", "types", "code", "codeop", "ctypes", "multiprocessing", "pty", "webbrowser",
    "functools", "operator", "io", "tempfile", "signal", "threading", "asyncio", "inspect", "pdb", "timeit",
    "platform", "commands", "popen2", "urllib", "http", "requests",
})


def _allowed_globals() -> dict[str, Any]:
    """What ``torch.load(weights_only=True)`` itself resolves: tensor and storage rebuilders, dtypes, containers."""
    from torch import _weights_only_unpickler

    allowed = dict(_weights_only_unpickler._get_allowed_globals())
    for obj in torch.serialization.get_safe_globals():
        if not isinstance(obj, tuple):
            allowed[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return allowed


class _InertUnpickler(pickle.Unpickler):
    """``find_class`` for torch.load: torch's weights-only globals are real, code modules are refused, and
    every other class becomes an :class:`InertObject` subclass of the same name (recorded in ``inert``)."""

    allowed: dict[str, Any] = {}
    inert: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        full = f"{module}.{name}"
        if full in self.allowed:
            return self.allowed[full]
        root = module.split(".")[0]
        if root in _CODE_MODULES or module in _CODE_MODULES:
            raise pickle.UnpicklingError(f"global '{full}' is forbidden: it could execute code")
        if full not in self.inert:
            self.inert[full] = type(name, (InertObject,), {"__module__": module, "__qualname__": name})
        return self.inert[full]


def read_lightning_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], list[str]]:
    """Unpickle a PyTorch Lightning (or similar training) checkpoint without running any of its code.

    Real Lightning 1.x checkpoints pickle the ``ModelCheckpoint`` callback class as a key of ``callbacks``, so
    ``weights_only=True`` refuses them. Here tensors are rebuilt by torch's own (weights-only) rebuilders, every
    other named class becomes an inert placeholder, and a pickle that names a code-running function
    (``os.system``, ``builtins.eval``...) is refused. Returns ``(top-level dict, names of the placeholder
    classes)``; the caller picks the tensors it needs.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.stat().st_size == 0 or not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint (not a valid torch zip archive)")
    unpickler = type("InertUnpickler", (_InertUnpickler,), {"allowed": _allowed_globals(), "inert": {}})
    module = type(pickle)("clipag_inert_pickle")
    module.Unpickler, module.load, module.__name__ = unpickler, pickle.load, "clipag_inert_pickle"
    try:
        obj = torch.load(path, map_location="cpu", pickle_module=module, weights_only=False, mmap=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: refused to unpickle ({e}). Nothing from it was run.") from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: truncated or corrupt torch checkpoint ({e})") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not a training checkpoint (a {type(obj).__name__}, not a dict)")
    return obj, sorted(unpickler.inert)


def save_safetensors(state_dict: dict[str, torch.Tensor], path: str | os.PathLike,
                     metadata: dict[str, Any] | None = None) -> None:
    """Write ``state_dict`` atomically (temp file + ``os.replace``); non-string metadata is JSON-encoded."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    tensors = {k: v.detach().contiguous() for k, v in state_dict.items()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # safetensors creates 0600 files; weights are meant to be shared like any file
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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
