"""``taming.modules.diffusionmodules`` (stand-in): only ``model``, the VQGAN's encoder and decoder."""
