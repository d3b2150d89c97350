"""Adapters that put CLIPAG into existing CLIP-guided generators (CLIPDraw, VQGAN+CLIP, CLIPStyler).

This folder is installed as ``clipag.adapters`` (a top-level ``adapters`` package would collide with
AdapterHub's). One sub-package per framework; each is importable without the others' dependencies. Each also
carries the stand-in its upstream script needs under ``clipag run`` (``clipdraw.pydiffvg``, ``vqgan_clip.taming``);
``cog`` stands in for cog's pre-0.1 predictor API, which CLIPDraw's ``predict.py`` is written against.
"""
