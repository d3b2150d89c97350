"""CLIPDraw with any CLIP ``clipag.load`` takes, on a pure-PyTorch vector rasterizer (no diffvg build).

* :func:`draw` / :class:`Drawer`: CLIPDraw (kvfrans/clipdraw) with upstream's defaults; ``clipag draw`` on
  the command line.
* :func:`render` / :func:`rasterize`: the differentiable rasterizer, with diffvg's conventions.
* ``clipag.adapters.clipdraw.pydiffvg``: a stand-in for diffvg's ``pydiffvg``, which ``clipag run`` puts
  under ``import pydiffvg`` for unmodified upstream scripts.
* :func:`save_svg` / :func:`load_svg`: SVG files that any renderer draws as :func:`render` does.
"""

from .draw import DrawConfig, Drawer, Drawing, DrawingInterrupted, draw, initial_strokes
from .raster import rasterize
from .scene import Circle, Ellipse, Path, Polygon, Rect, ShapeGroup, pack, render
from .svg import load_svg, save_svg, svg_string

__all__ = ["draw", "Drawer", "DrawConfig", "Drawing", "DrawingInterrupted", "initial_strokes", "render",
           "rasterize", "pack", "Path", "Polygon", "Rect", "Circle", "Ellipse", "ShapeGroup", "save_svg",
           "load_svg", "svg_string"]
