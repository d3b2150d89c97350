"""CLIPDraw with any CLIP ``clipag.load`` takes, on a pure-PyTorch vector rasterizer (no diffvg build).

* :func:`draw` / :class:`Drawer`: CLIPDraw (kvfrans/clipdraw) with upstream's defaults; ``clipag draw`` on
  the command line.
* :func:`render` / :func:`rasterize`: the differentiable rasterizer, with diffvg's conventions.
* ``clipag.adapters.clipdraw.pydiffvg``: a stand-in for diffvg's ``pydiffvg``, which ``clipag run`` puts
  under ``import pydiffvg`` for unmodified upstream scripts.
* :func:`save_svg` / :func:`load_svg`: SVG files that any renderer draws as :func:`render` does.

Names load lazily: importing this package (as ``clipag --help`` does for ``clipag draw``) does not import torch.
"""

from __future__ import annotations

from clipag.lazy import lazy_exports

_EXPORTS = {
    "draw": "drawer", "Drawer": "drawer", "DrawConfig": "drawer", "Drawing": "drawer",
    "DrawingInterrupted": "drawer", "initial_strokes": "drawer", "rasterize": "raster", "render": "scene",
    "pack": "scene", "Path": "scene", "Polygon": "scene", "Rect": "scene", "Circle": "scene",
    "Ellipse": "scene", "ShapeGroup": "scene", "save_svg": "svg", "load_svg": "svg", "svg_string": "svg",
}
__all__ = list(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
