"""``taming.models``: the VQGAN model classes (stand-in, see :mod:`clipag.adapters.vqgan_clip.taming`)."""

from . import cond_transformer, vqgan

__all__ = ["cond_transformer", "vqgan"]
