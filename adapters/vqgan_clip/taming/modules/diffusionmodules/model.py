"""``taming.modules.diffusionmodules.model`` (stand-in): the VQGAN's ``Encoder`` and ``Decoder`` and their blocks,
with taming's constructors and parameter names (clipag's plain-PyTorch versions, :mod:`..vqgan_clip.modules`).

Not covered: ``Model`` (the diffusion U-Net), ``VUNet``, ``SimpleDecoder``, ``UpsampleDecoder`` and
``get_timestep_embedding``; importing one raises an ``ImportError`` that says so.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from clipag.adapters.vqgan_clip.modules import AttnBlock, Decoder, Downsample, Encoder, ResnetBlock, Upsample
from torch import nn

__all__ = ["Encoder", "Decoder", "ResnetBlock", "AttnBlock", "Upsample", "Downsample", "Normalize", "nonlinearity"]

_NOT_COVERED = ("Model", "VUNet", "SimpleDecoder", "UpsampleDecoder", "get_timestep_embedding")


def Normalize(in_channels: int) -> nn.GroupNorm:  # noqa: N802 (taming's name)
    """taming's normalisation layer: GroupNorm with 32 groups, eps 1e-6, affine."""
    return nn.GroupNorm(num_groups=32, num_channels=in_channels, eps=1e-6, affine=True)


def nonlinearity(x: torch.Tensor) -> torch.Tensor:
    """taming's swish, ``x * sigmoid(x)``."""
    return F.silu(x)


def __getattr__(name: str) -> Any:
    if name in _NOT_COVERED:
        raise ImportError(f"taming.modules.diffusionmodules.model.{name} is not covered by clipag's taming stand-in, "
                          f"which has the VQGAN's blocks only: {', '.join(__all__)}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
