"""The ``amp`` knob every optimiser shares: CLIP under autocast, with fp32 weights.

``auto`` is bf16 on CUDA (fp16 where the GPU has no bf16) and off elsewhere: on a CPU the default stays exact
fp32, and ``bf16`` there is an opt-in (1.5-1.6x on CPUs with native bf16; the numbers change slightly).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["AMP_MODES", "check_amp", "autocast_for"]

AMP_MODES = ("auto", "bf16", "fp16", "off")


def check_amp(amp: str) -> str:
    if amp not in AMP_MODES:
        raise ValueError(f"amp must be auto, bf16, fp16 or off, got {amp!r}")
    return amp


def autocast_for(amp: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast context ``amp`` asks for on ``device`` (a null context when it is off)."""
    import torch  # here, so the CLIs can read AMP_MODES without importing torch

    if check_amp(amp) == "off" or (amp == "auto" and device.type != "cuda"):
        return contextlib.nullcontext()
    if amp == "auto":
        amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)
