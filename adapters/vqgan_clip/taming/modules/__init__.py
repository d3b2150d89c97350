"""``taming.modules`` (stand-in): the VQGAN's building blocks, ``diffusionmodules.model`` and ``vqvae.quantize``.

taming's losses (``losses.lpips``, ``losses.vqperceptual``: LPIPS and the discriminator, training-only and needing
their own downloaded weights), its transformer and its other modules are not part of the stand-in; importing one
says so (see :mod:`clipag.standins`).
"""
