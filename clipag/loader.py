"""``clipag.load``: OpenAI's ``clip.load`` contract, backed by the registry, the Hub and safe files."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any

import torch

from .model import CLIP, CustomTextCLIP, attach_preprocess, build_model, load_weights, make_preprocess
from .weights import resolve

__all__ = ["load"]


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
    load_weights(model, resolved.state_dict, resolved.source)
    model.to(device)
    attach_preprocess(model, resolved.preprocess)  # generation and adapters read mean/std from the model
    return model, make_preprocess(model.visual.input_resolution, resolved.preprocess)
