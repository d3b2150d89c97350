"""``taming.models.cond_transformer``: ``Net2NetTransformer``, of which only the first stage (the VQGAN) is built."""

from clipag.adapters.vqgan_clip.vqgan import Net2NetTransformer

__all__ = ["Net2NetTransformer"]
