"""``taming.modules.vqvae`` (stand-in): only ``quantize``, the VQGAN's quantizers."""
