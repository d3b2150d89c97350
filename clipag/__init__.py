"""clipag: CLIP with Perceptually Aligned Gradients, as a drop-in for OpenAI's ``clip``.

``import clipag as clip`` gives ``load``, ``tokenize`` and ``available_models`` with OpenAI's
behaviour, loading CLIPAG's robust weights (and other robust CLIPs) instead.
"""

from .loader import load
from .registry import available_models
from .tokenizer import tokenize

__all__ = ["load", "tokenize", "available_models"]
__version__ = "0.1.0"
