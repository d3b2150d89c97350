"""Adapters that put CLIPAG into existing CLIP-guided generators (CLIPDraw, VQGAN+CLIP, CLIPStyler).

This folder is installed as ``clipag.adapters`` (a top-level ``adapters`` package would collide with
AdapterHub's). One sub-package per framework; each is importable without the others' dependencies.
"""
