"""clipag: CLIP with Perceptually Aligned Gradients, as a drop-in for OpenAI's ``clip``.

``import clipag as clip`` gives ``load``, ``tokenize`` and ``available_models`` with OpenAI's
behaviour, loading CLIPAG's robust weights (and other robust CLIPs) instead.
"""

from .loader import load
from .registry import available_models
from .tokenizer import tokenize

__all__ = ["load", "tokenize", "available_models", "generate"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # ``generate`` loads on first use: ``import clipag`` stays as light as OpenAI's ``import clip``.
    if name == "generate":
        from .generation import generate

        return generate
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
