"""Stand-in for the ``taming`` package (CompVis/taming-transformers) under ``clipag run``.

Only what VQGAN+CLIP scripts import: ``taming.models.vqgan`` (``VQModel``, ``GumbelVQ``) and
``taming.models.cond_transformer`` (``Net2NetTransformer``'s first stage), built by
:mod:`clipag.adapters.vqgan_clip` without Lightning. See :mod:`clipag.standins`.
"""
