"""``clipag.load``: OpenAI's ``clip.load`` contract, backed by the registry, the Hub and safe files."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any

import torch

from .model import CLIP, CustomTextCLIP, attach_preprocess, build_model, load_weights, make_preprocess
from .weights import resolve

__all__ = ["load", "resolve_model", "input_resolution"]


def _default_precision(device: torch.device) -> str:
    """OpenAI keeps fp16 weights off the CPU; ``CLIPAG_PRECISION=fp32`` keeps fp32 for unmodified scripts."""
    forced = os.environ.get("CLIPAG_PRECISION")
    if forced:
        return forced
    return "fp32" if device.type == "cpu" else "fp16"


def load(name: str, device: str | torch.device = "cuda" if torch.cuda.is_available() else "cpu",  # noqa: B008 (OpenAI's signature)
         jit: bool = False, download_root: str | None = None, *, precision: str | None = None,
         quick_gelu: bool | None = None) -> tuple[CLIP | CustomTextCLIP, Callable[[Any], torch.Tensor]]:
    """Load a model and its preprocess transform, exactly as ``clip.load`` would.

    ``name`` is a registry name (see :func:`available_models`), an ``hf-hub:ORG/REPO`` id, a Hub-layout
    folder, or a checkpoint file (OpenAI TorchScript, OpenAI state dict, open_clip checkpoint,
    ``.safetensors``). On CPU the model is fp32; elsewhere fp16 weights with fp32 LayerNorm, like
    OpenAI's. ``precision="fp32"`` (or ``CLIPAG_PRECISION=fp32``) keeps fp32 everywhere.
    ``quick_gelu`` overrides the activation for files whose activation cannot be known.
    """
    if jit:
        warnings.warn("clipag has no TorchScript models; jit=True is ignored and the eager model is returned",
                      stacklevel=2)
    device = torch.device(device)
    resolved = resolve(name, download_root=download_root, quick_gelu=quick_gelu)
    model = build_model(resolved.config, precision=precision or _default_precision(device), initialize=False)
    load_weights(model, resolved.state_dict, resolved.source, assign=True)  # the weights are held once
    model.to(device)
    attach_preprocess(model, resolved.preprocess)  # generation and adapters read mean/std from the model
    return model, make_preprocess(model.visual.input_resolution, resolved.preprocess)


def resolve_model(model: Any, device: str | torch.device | None = None,
                  ) -> tuple[torch.nn.Module, Callable[[Any], torch.Tensor] | None, torch.device]:
    """What every optimiser accepts as ``model``: ``(model, preprocess or None, device)``.

    A name or path is loaded with fp32 weights (autocast, not OpenAI's fp16 weights, is how they run fast on
    a GPU) on ``device``, default CUDA when available. A CLIP already loaded stays on its device, which
    ``device`` must agree with; its preprocess is then unknown here (None).
    """
    if isinstance(model, str | os.PathLike):
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        loaded, preprocess = load(str(model), device=device, precision="fp32")
        return loaded, preprocess, device
    if not (hasattr(model, "encode_image") and hasattr(model, "encode_text") and hasattr(model, "visual")):
        raise TypeError(f"model must be a name/path for clipag.load or a CLIP model, got {type(model).__name__}")
    model_device = next(model.parameters()).device
    if device is not None and torch.device(device) != model_device:
        raise ValueError(f"the model is on {model_device} but device={device!r}; move it first (model.to(...))")
    return model, None, model_device


def input_resolution(model: Any) -> int:
    """The side of the images ``model.encode_image`` takes (clipag's, OpenAI's or open_clip's CLIP)."""
    visual = model.visual
    size = getattr(visual, "input_resolution", None) or visual.image_size
    return int(size[0] if isinstance(size, tuple | list) else size)
