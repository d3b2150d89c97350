"""clipag: CLIP with Perceptually Aligned Gradients, as a drop-in for OpenAI's ``clip``.

``import clipag as clip`` gives ``load``, ``tokenize`` and ``available_models`` with OpenAI's
behaviour, loading CLIPAG's robust weights (and other robust CLIPs) instead, plus ``generate``.
Each name is imported on first use, so the ``clipag`` command starts without loading torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .lazy import lazy_exports

__all__ = ["load", "tokenize", "available_models", "generate"]
__version__ = "0.1.0"

_HOMES = {"load": "loader", "tokenize": "tokenizer", "available_models": "registry", "generate": "generation"}

if TYPE_CHECKING:
    from .generation import generate
    from .loader import load
    from .registry import available_models
    from .tokenizer import tokenize


__getattr__, __dir__ = lazy_exports(__name__, _HOMES)
