"""CLIPStyler (Kwon & Ye, CVPR 2022) with CLIPAG: text-driven style transfer of one content image.

``clipag style photo.jpg "an oil painting"`` or :func:`style`; upstream's ``train_CLIPstyler.py`` itself runs
unmodified with ``clipag run --device cpu train_CLIPstyler.py ...`` (see docs/clipstyler.md). Names are
imported on first use, so the ``clipag`` command starts without loading torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from clipag.lazy import lazy_exports

__all__ = ["style", "Styler", "StyleConfig", "StyleResult", "StyleInterrupted", "StyleNet", "VGGContent",
           "load_vgg_content"]

_HOMES = {"style": "styler", "Styler": "styler", "StyleConfig": "styler", "StyleResult": "styler",
          "StyleInterrupted": "styler", "StyleNet": "stylenet", "VGGContent": "vgg", "load_vgg_content": "vgg"}

if TYPE_CHECKING:
    from .stylenet import StyleNet
    from .styler import StyleConfig, StyleInterrupted, Styler, StyleResult, style
    from .vgg import VGGContent, load_vgg_content


__getattr__, __dir__ = lazy_exports(__name__, _HOMES)
