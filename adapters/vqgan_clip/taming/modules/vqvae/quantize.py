"""``taming.modules.vqvae.quantize`` (stand-in): ``VectorQuantizer2`` and ``GumbelQuantize``, the quantizers of the
released VQGANs, with taming's constructors, outputs and parameter names (:mod:`..vqgan_clip.modules`).

Not covered: ``VectorQuantizer`` (taming's first version, which no released VQGAN uses), ``EmbeddingEMA`` and
``EMAVectorQuantizer``; importing one raises an ``ImportError`` that says so.
"""

from __future__ import annotations

from typing import Any

from clipag.adapters.vqgan_clip.modules import GumbelQuantize, VectorQuantizer2

__all__ = ["VectorQuantizer2", "GumbelQuantize"]

_NOT_COVERED = ("VectorQuantizer", "EmbeddingEMA", "EMAVectorQuantizer")


def __getattr__(name: str) -> Any:
    if name in _NOT_COVERED:
        raise ImportError(f"taming.modules.vqvae.quantize.{name} is not covered by clipag's taming stand-in, which "
                          f"has {' and '.join(__all__)} (the released VQGANs' quantizers)")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
