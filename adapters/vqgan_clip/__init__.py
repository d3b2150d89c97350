"""VQGAN+CLIP with clipag: a taming-compatible VQGAN in plain PyTorch, the VQGAN-CLIP loop, and stand-ins.

    from clipag.adapters.vqgan_clip import VQGANCLIP, VQGANCLIPConfig
    gen = VQGANCLIP("ViT-B/32", "vqgan_imagenet_f16_16384", settings=VQGANCLIPConfig(steps=300))
    gen.run("a castle in the clouds|dark:-0.5", seed=0).image.save("castle.png")

Layout: ``modules`` (taming's encoder/decoder/quantizers), ``vqgan`` (VQModel, GumbelVQ, Net2NetTransformer's
first stage, yaml configs), ``checkpoint`` (Lightning checkpoints read inertly, converted once), ``registry``
(the released VQGANs), ``losses``/``cutouts``/``loop`` (VQGAN-CLIP's algorithm), ``cli`` (``clipag vqgan``),
``taming/`` (what ``clipag run`` imports as ``taming.models.*``). Names load lazily: importing this package is cheap.
"""

from __future__ import annotations

from clipag.lazy import lazy_exports

_EXPORTS = {
    "VQGANCLIP": "loop", "VQGANCLIPConfig": "loop", "VQGANCLIPResult": "loop", "VQGANCLIPInterrupted": "loop",
    "VQModel": "vqgan", "GumbelVQ": "vqgan", "Net2NetTransformer": "vqgan", "load_vqgan": "vqgan",
    "load_config": "vqgan", "VQGANS": "registry", "fetch_vqgan": "registry", "import_vqgan": "registry",
    "parse_prompts": "losses", "Prompt": "losses", "Cutouts": "cutouts",
}
__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
