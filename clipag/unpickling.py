"""Reading pickled checkpoints without running them: the one home of clipag's unpickling rules.

Three readers, from strict to lenient, and none of them ever resolves a global outside an allow-list:

- :func:`weights_only_globals` wraps ``torch.load(weights_only=True)`` with numpy's number rebuilders added
  (training checkpoints hold numpy learning rates; see :func:`numpy_globals`).
- :func:`read_torchscript_tensors` reads an OpenAI TorchScript archive's tensors. ``weights_only`` refuses such
  archives and ``torch.jit.load`` would run their code; no maintained library reads them inertly, hence this.
- :func:`inert_load` reads training checkpoints that pickle their framework's classes (Lightning callbacks):
  such classes become inert placeholders, and code-running globals are refused outright.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

__all__ = ["numpy_globals", "weights_only_globals", "unsafe_globals", "describe_global", "read_torchscript_tensors",
           "InertObject", "inert_load"]

# Modules whose functions run code or touch the system. A pickle naming one of them is an attack, not a
# checkpoint. (Safety does not rest on this list: no global outside an allow-list is ever resolved to a real
# object. The list decides what error messages say and turns such a pickle into an outright refusal.)
_CODE_MODULES = frozenset({
    "builtins", "__builtin__", "os", "posix", "nt", "subprocess", "sys", "importlib", "runpy", "shutil", "socket",
    "pickle", "_pickle", "marshal", "types", "code", "codeop", "ctypes", "multiprocessing", "pty", "webbrowser",
    "functools", "operator", "io", "tempfile", "signal", "threading", "asyncio", "inspect", "pdb", "timeit",
    "platform", "commands", "popen2", "urllib", "http", "requests", "_posixsubprocess", "posixpath", "ntpath",
})


def _runs_code(module: str) -> bool:
    return module.split(".")[0] in _CODE_MODULES or module in _CODE_MODULES


def describe_global(name: str) -> str:
    """A pickled global for an error message: its name, and whether it could run code."""
    if _runs_code(name.rsplit(".", 1)[0]):
        return f"{name} (it can run code)"
    return (f"{name} (not known to run code, but outside the allow-list of tensors, numbers and plain containers, "
            "so it is never imported)")


def numpy_globals() -> list[tuple[Any, str]]:
    """numpy's scalar, dtype and array rebuilders, under every name a pickle may give them.

    Training checkpoints hold numpy numbers beside their weights: open_clip's cosine schedule set
    ``numpy.float64`` learning rates until 2024-11, so its checkpoints of that era (CLIPAG's among them) are
    refused by a bare ``weights_only=True``. numpy 1.x pickles them as ``numpy.core.multiarray.scalar``,
    numpy 2.x as ``numpy._core.multiarray.scalar``; since numpy 1.25 a dtype is an instance of a
    ``numpy.dtypes`` class, which the weights-only unpickler checks before it sets the dtype's state. These
    only build numbers and arrays from bytes and already-rebuilt objects; none of them imports or calls code.
    """
    import numpy as np

    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    entries: list[tuple[Any, str]] = [(np.dtype, "numpy.dtype"), (np.ndarray, "numpy.ndarray")]
    for package in ("numpy.core", "numpy._core"):
        entries += [(multiarray.scalar, f"{package}.multiarray.scalar"),
                    (multiarray._reconstruct, f"{package}.multiarray._reconstruct")]
    dtype_classes = {type(np.dtype(code)) for code in np.typecodes["All"]} - {np.dtype}
    entries += [(cls, f"{cls.__module__}.{cls.__qualname__}") for cls in sorted(dtype_classes, key=str)]
    return entries


# torch's safe_globals() swaps one process-wide list: serialise our loads so that two threads reading
# checkpoints at once never see each other's context end mid-load.
_SAFE_GLOBALS_LOCK = threading.RLock()


@contextlib.contextmanager
def weights_only_globals() -> Iterator[None]:
    """Within it, ``torch.load(weights_only=True)`` also rebuilds numpy numbers (:func:`numpy_globals`)."""
    with _SAFE_GLOBALS_LOCK, torch.serialization.safe_globals(numpy_globals()):
        yield


def unsafe_globals(path: str | os.PathLike) -> list[str]:
    """The globals in a torch pickle that :func:`weights_only_globals` would refuse, found without running it."""
    with weights_only_globals():
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))


# --- OpenAI TorchScript archives -------------------------------------------------------------------------

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
        raise pickle.UnpicklingError(f"it names {describe_global(f'{module}.{name}')}")

    def persistent_load(self, pid: Any) -> torch.Tensor:
        _, dtype, key, _location, numel = pid
        if key not in self.storages:
            name = f"{self.prefix}/data/{key}"
            declared, needed = self.archive.getinfo(name).file_size, numel * dtype.itemsize
            if declared != needed:  # checked before reading: a member's size is whatever the archive declares
                raise ValueError(f"{name} declares {declared:,} bytes, but its tensor storage needs {needed:,}")
            raw = bytearray(self.archive.read(name))
            self.storages[key] = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        return self.storages[key]


def read_torchscript_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The weights of a TorchScript archive, by attribute path, without running the archive.

    Raises :class:`pickle.UnpicklingError` for a global outside tensors and containers, and the archive's own
    errors (``KeyError``, ``zipfile.BadZipFile``, ``EOFError``...) for a corrupt file.
    """
    with zipfile.ZipFile(path) as archive:
        data_pkl = next(n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1)
        prefix = data_pkl.rsplit("/", 1)[0]
        with archive.open(data_pkl) as f:
            root = _TorchScriptUnpickler(f, archive, prefix).load()
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


# --- training checkpoints that pickle their framework's classes -------------------------------------------

class InertObject:
    """Stands in for a class a pickle names but that we never import (Lightning callbacks...).

    Calling it, building it or setting its state only stores the arguments; nothing of the named class runs.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<inert {type(self).__module__}.{type(self).__qualname__}>"


def _allowed_globals() -> dict[str, Any]:
    """What the weights-only loader resolves: torch's rebuilders, dtypes and containers, plus numpy's numbers."""
    from torch import _weights_only_unpickler

    allowed = dict(_weights_only_unpickler._get_allowed_globals())
    for obj in torch.serialization.get_safe_globals():
        if not isinstance(obj, tuple):
            allowed[f"{obj.__module__}.{obj.__qualname__}"] = obj
    allowed.update({name: obj for obj, name in numpy_globals()})
    return allowed


class _InertUnpickler(pickle.Unpickler):
    """``find_class`` for torch.load: allowed globals are real, code modules are refused, and every other
    class becomes an :class:`InertObject` subclass of the same name (recorded in ``inert``)."""

    allowed: dict[str, Any] = {}
    inert: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        full = f"{module}.{name}"
        if full in self.allowed:
            return self.allowed[full]
        if _runs_code(module):
            raise pickle.UnpicklingError(f"it names {describe_global(full)}")
        if full not in self.inert:
            self.inert[full] = type(name, (InertObject,), {"__module__": module, "__qualname__": name})
        return self.inert[full]


def inert_load(path: str | os.PathLike) -> tuple[Any, list[str]]:
    """``torch.load`` a training checkpoint with unknown classes as placeholders: ``(object, their names)``.

    Tensors are rebuilt by torch's own weights-only rebuilders. Raises :class:`pickle.UnpicklingError` for a
    code-running global (``os.system``, ``builtins.eval``...), and torch's errors for a corrupt file.
    """
    unpickler = type("InertUnpickler", (_InertUnpickler,), {"allowed": _allowed_globals(), "inert": {}})
    module = type(pickle)("clipag_inert_pickle")
    module.Unpickler, module.load, module.__name__ = unpickler, pickle.load, "clipag_inert_pickle"
    obj = torch.load(Path(path), map_location="cpu", pickle_module=module, weights_only=False, mmap=True)
    return obj, sorted(unpickler.inert)
