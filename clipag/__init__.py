"""clipag: CLIP with Perceptually Aligned Gradients, as a drop-in for OpenAI's ``clip``.

``import clipag as clip`` gives ``load``, ``tokenize`` and ``available_models`` with OpenAI's
behaviour, loading CLIPAG's robust weights (and other robust CLIPs) instead, plus ``generate``.
Each name is imported on first use, so the ``clipag`` command starts without loading torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["load", "tokenize", "available_models", "generate"]
__version__ = "0.1.0"

_HOMES = {"load": "loader", "tokenize": "tokenizer", "available_models": "registry", "generate": "generation"}

if TYPE_CHECKING:
    from .generation import generate
    from .loader import load
    from .registry import available_models
    from .tokenizer import tokenize


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
