"""``taming.models.vqgan``: ``VQModel`` and ``GumbelVQ`` with taming's constructors and weight names."""

from clipag.adapters.vqgan_clip.vqgan import GumbelVQ, VQModel

__all__ = ["VQModel", "GumbelVQ"]
