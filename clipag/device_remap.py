"""``clipag run --device D``: send a script's hard-coded CUDA requests to another device.

CLIPDraw, VQGAN-CLIP and CLIPStyler all write ``torch.device('cuda')``, ``device='cuda'``, ``.cuda()`` or
``.to('cuda')``. A ``TorchFunctionMode`` sees every one of those calls (factories, ``torch.device``,
``Tensor.to``/``.cuda``, and ``Module.to``/``.cuda`` through them), in the script and in every module it
imports, so nothing has to be edited. The mode lives on the main thread (PyTorch keeps modes per
thread) and is inherited by forked data-loader workers.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["remap_device", "install", "uninstall", "target"]

_state: dict[str, Any] = {"target": None, "mode": None, "patched": {}}


def target() -> torch.device | None:
    """The device CUDA requests go to, or None when no remapping is installed."""
    return _state["target"]


def remap_device(device: Any) -> Any:
    """``device`` with CUDA replaced by the installed target; anything else (or no target) unchanged.

    Accepts what PyTorch accepts: ``torch.device``, ``'cuda'``/``'cuda:0'`` strings, or a CUDA index.
    """
    dest = _state["target"]
    if dest is None or device is None:
        return device
    if isinstance(device, torch.device):
        return dest if device.type == "cuda" else device
    if isinstance(device, str):
        return dest if device.split(":")[0] == "cuda" else device
    return device


def _is_cuda(device: Any) -> bool:
    return (isinstance(device, torch.device) and device.type == "cuda") or (
        isinstance(device, str) and device.split(":")[0] == "cuda")


class _CudaToTarget(TorchFunctionMode):
    """Rewrites device arguments of every torch call; the rest passes through untouched."""

    def __init__(self, dest: torch.device) -> None:
        super().__init__()
        self.dest = dest

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda:  # t.cuda(), t.cuda(0), Module.cuda() through it
            kwargs.pop("device", None)
            return args[0].to(self.dest, **kwargs)
        if func is torch.device and args and _is_cuda(args[0]):  # torch.device('cuda'), ('cuda', 0)
            return self.dest
        if "device" in kwargs and _is_cuda(kwargs["device"]):
            kwargs["device"] = self.dest
        if args and any(_is_cuda(a) for a in args):  # t.to('cuda'), t.to(torch.device('cuda'))
            args = tuple(self.dest if _is_cuda(a) else a for a in args)
        return func(*args, **kwargs)


def install(device: str | torch.device) -> torch.device:
    """Map every CUDA request in this process (main thread) to ``device``; returns it as a torch.device.

    With a non-CUDA target, ``torch.cuda.is_available()`` answers False and ``device_count()`` 0, so a
    script's ``'cuda' if torch.cuda.is_available() else 'cpu'`` picks its CPU path, and
    ``torch.cuda.synchronize``/``empty_cache`` become no-ops.
    """
    uninstall()
    dest = torch.device(device)
    if dest.type == "cuda" and dest.index is None:
        dest = torch.device("cuda", 0)
    _state["target"] = dest
    mode = _CudaToTarget(dest)
    mode.__enter__()
    _state["mode"] = mode
    if dest.type != "cuda":
        no_op = lambda *args, **kwargs: None
        for name, value in (("is_available", lambda: False), ("device_count", lambda: 0),
                            ("synchronize", no_op), ("empty_cache", no_op)):
            _state["patched"][name] = getattr(torch.cuda, name)
            setattr(torch.cuda, name, value)
    print(f"[clipag] --device {dest}: CUDA requests go to {dest}", file=sys.stderr)
    return dest


def uninstall() -> None:
    """Undo :func:`install` (used by tests; ``clipag run`` keeps the mapping for the process's life)."""
    if _state["mode"] is not None:
        _state["mode"].__exit__(None, None, None)
    for name, value in _state["patched"].items():
        setattr(torch.cuda, name, value)
    _state.update(target=None, mode=None, patched={})
