"""A stand-in for diffvg's ``pydiffvg`` (BachiLi/diffvg), backed by clipag's pure-PyTorch rasterizer.

``clipag run script.py`` makes ``import pydiffvg`` resolve here when the real diffvg is not importable, and
``import clipag.adapters.clipdraw.pydiffvg as pydiffvg`` works anywhere. Covered, with diffvg's signatures:

* ``Path`` (lines, quadratics, cubics; open or closed), ``Polygon``, ``Rect``, ``Circle``, ``Ellipse``,
  ``ShapeGroup`` (constant RGBA fill and/or stroke, even-odd or non-zero rule, a similarity
  ``shape_to_canvas``);
* ``RenderFunction.serialize_scene(...)`` and ``RenderFunction.apply(width, height, num_samples_x,
  num_samples_y, seed, background_image, *scene_args)``: returns ``(H, W, 4)``, straight RGB + alpha, on
  ``get_device()``, differentiable in points, stroke widths, colours and the background (an output size
  other than the canvas's scales the scene, as diffvg does, for equal x and y scales). The box filter
  (diffvg's default) is computed analytically, so ``num_samples_*`` and ``seed`` do not change the result
  (``set_sampling("supersample")`` evaluates ``max(num_samples_x, num_samples_y)``² sub-pixels instead);
* ``set_use_gpu``/``get_use_gpu``, ``set_device``/``get_device`` (a CUDA device goes through
  ``clipag run --device``'s remapping), ``set_print_timing``, ``imwrite``, ``save_svg``, ``svg_to_scene``,
  ``prettify`` (an ElementTree element as indented XML, as scripts that build their own SVG call it).

Not covered, and raising ``NotImplementedError`` that names the call: gradient colours, per-point stroke
widths, pixel filters other than a 0.5-radius box, ``use_prefiltering``, ``OutputType.sdf``,
``eval_positions``, sheared ``shape_to_canvas``, ``save_svg(use_gamma=True)``, ``from_svg_path`` and the
rest of diffvg's SVG-optimisation helpers.
"""

from __future__ import annotations

import enum
import os
import time
from typing import Any

import numpy as np
import torch

from clipag import device_remap

from .raster import rasterize
from .scene import Circle, Ellipse, LinearGradient, Path, Polygon, RadialGradient, Rect, ShapeGroup, pack
from .svg import load_svg
from .svg import save_svg as _save_svg

__all__ = ["Path", "Polygon", "Rect", "Circle", "Ellipse", "ShapeGroup", "LinearGradient", "RadialGradient",
           "PixelFilter", "FilterType", "OutputType", "RenderFunction", "set_use_gpu", "get_use_gpu", "set_device",
           "get_device", "set_print_timing", "set_sampling", "imwrite", "save_svg", "svg_to_scene", "prettify"]


class FilterType(enum.IntEnum):
    box = 0
    tent = 1
    radial_parabolic = 2
    hann = 3


class OutputType(enum.IntEnum):
    color = 1
    sdf = 2


class PixelFilter:
    def __init__(self, type: FilterType = FilterType.box, radius: Any = None) -> None:
        self.type = type
        self.radius = torch.tensor(0.5) if radius is None else torch.as_tensor(radius)


_state: dict[str, Any] = {"use_gpu": torch.cuda.is_available(), "print_timing": False,
                          "sampling": os.environ.get("CLIPAG_DIFFVG_SAMPLING", "analytic")}
_state["device"] = torch.device("cuda") if _state["use_gpu"] else torch.device("cpu")


def set_use_gpu(v: bool) -> None:
    """diffvg's switch: False sends rendering to the CPU; True keeps the current device."""
    _state["use_gpu"] = bool(v)
    if not v:
        _state["device"] = torch.device("cpu")


def get_use_gpu() -> bool:
    return _state["use_gpu"]


def set_device(d: Any) -> None:
    """Render on ``d``; a CUDA device follows ``clipag run --device`` (e.g. to the CPU or MPS)."""
    device = torch.device(device_remap.remap_device(d))
    _state["device"] = device
    _state["use_gpu"] = device.type == "cuda"


def get_device() -> torch.device:
    return _state["device"]


def set_print_timing(val: bool) -> None:
    _state["print_timing"] = bool(val)


def set_sampling(mode: str) -> None:
    """clipag extension: ``"analytic"`` (default; exact box filter of each layer's coverage) or
    ``"supersample"`` (``num_samples``² sub-pixels, each filtered, averaged as diffvg averages its samples)."""
    if mode not in ("analytic", "supersample"):
        raise ValueError(f"sampling must be 'analytic' or 'supersample', got {mode!r}")
    _state["sampling"] = mode


class _Scene:
    """What ``serialize_scene`` hands to ``apply``: the scene's tensors as they are at that call (shallow copies
    of the shape objects, so the very tensors a script later sets ``requires_grad`` on, or clamps through
    ``.data``, are the ones rendered, exactly as diffvg's serialized argument list holds them)."""

    def __init__(self, shapes: list, groups: list) -> None:
        self.shapes = [_shallow(s) for s in shapes]
        self.groups = [_shallow(g) for g in groups]


def _shallow(obj: Any) -> Any:
    """A copy sharing every attribute (``copy.copy`` without its generic machinery, which cost ~10 µs each)."""
    clone = object.__new__(type(obj))
    clone.__dict__.update(obj.__dict__)
    return clone


class RenderFunction:
    """diffvg's ``torch.autograd.Function`` interface; gradients come from autograd through the rasterizer."""

    @staticmethod
    def serialize_scene(canvas_width: int, canvas_height: int, shapes: list, shape_groups: list,
                        filter: PixelFilter | None = None, output_type: OutputType = OutputType.color,
                        use_prefiltering: bool = False, eval_positions: torch.Tensor | None = None) -> list:
        filt = filter or PixelFilter()
        if filt.type != FilterType.box or abs(float(filt.radius) - 0.5) > 1e-6:
            raise NotImplementedError(f"pydiffvg.RenderFunction.serialize_scene(filter={filt.type.name} radius "
                                      f"{float(filt.radius)}): only the default box filter of radius 0.5 is "
                                      "covered by clipag's stand-in")
        if output_type != OutputType.color:
            raise NotImplementedError("pydiffvg.RenderFunction.serialize_scene(output_type=OutputType.sdf) is not "
                                      "covered by clipag's stand-in")
        if use_prefiltering:
            raise NotImplementedError("pydiffvg.RenderFunction.serialize_scene(use_prefiltering=True) is not "
                                      "covered by clipag's stand-in")
        if eval_positions is not None and eval_positions.numel():
            raise NotImplementedError("pydiffvg.RenderFunction.serialize_scene(eval_positions=...) is not covered "
                                      "by clipag's stand-in")
        points = [s.points for s in shapes if getattr(s, "points", None) is not None]
        if points and not torch.isfinite(torch.cat([p.detach().reshape(-1) for p in points])).all():
            bad = next(i for i, s in enumerate(shapes)
                       if getattr(s, "points", None) is not None and not torch.isfinite(s.points).all())
            raise ValueError(f"pydiffvg.RenderFunction.serialize_scene: shape {bad} has non-finite points")
        return [canvas_width, canvas_height, len(shapes), len(shape_groups), _Scene(shapes, shape_groups)]

    @staticmethod
    def apply(width: int, height: int, num_samples_x: int, num_samples_y: int, seed: int,
              background_image: torch.Tensor | None, *args: Any) -> torch.Tensor:
        if len(args) != 5 or not isinstance(args[4], _Scene):
            raise NotImplementedError("pydiffvg.RenderFunction.apply: scene_args must come from clipag's "
                                      "RenderFunction.serialize_scene (diffvg's raw argument lists are not covered)")
        canvas_width, canvas_height, _, _, scene = args
        scale = width / canvas_width  # diffvg maps the canvas onto the output image
        if abs(height / canvas_height - scale) > 1e-9:
            raise NotImplementedError(f"pydiffvg.RenderFunction.apply: rendering a {canvas_width}x{canvas_height} "
                                      f"canvas at {width}x{height} (unequal scales) is not covered by clipag's "
                                      "stand-in")
        device = get_device()
        start = time.perf_counter()
        packed = pack(scene.shapes, scene.groups, device)
        if scale != 1:
            packed.points, packed.widths = packed.points * scale, packed.widths * scale
        if background_image is not None and background_image.shape[-1] == 3:
            raise NotImplementedError("Background image must have 4 channels, not 3. Add a fourth channel with all "
                                      "ones via torch.ones().")  # diffvg's own message
        samples = max(int(num_samples_x), int(num_samples_y)) if _state["sampling"] == "supersample" else 1
        image = rasterize(packed.points, packed.widths, packed.colors, packed.structure, width, height,
                          background=background_image, samples=samples)
        if _state["print_timing"]:
            print(f"Forward pass, time: {time.perf_counter() - start:.5f} s")
        return image


def imwrite(img: Any, filename: str, gamma: float = 2.2, normalize: bool = False) -> None:
    """Save an ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)`` image in [0, 1] with ``x ** (1/gamma)`` on RGB, as
    diffvg does (8 bits, truncated); a tensor may require grad or live on any device."""
    from PIL import Image

    directory = os.path.dirname(filename)
    if directory:
        os.makedirs(directory, exist_ok=True)
    array = img if isinstance(img, np.ndarray) else img.detach().float().cpu().numpy()
    array = np.array(array, dtype=np.float64)  # a copy: the caller's tensor is never touched
    if normalize:
        span = array.max() - array.min()
        if span > 0:
            array = (array - array.min()) / span
    array = np.clip(array, 0.0, 1.0)
    if array.ndim == 2:
        array = array[:, :, None]
    array[:, :, :3] = np.power(array[:, :, :3], 1.0 / gamma)
    pixels = (array * 255).astype(np.uint8)
    Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels).save(filename)


def save_svg(filename: str, width: int, height: int, shapes: list, shape_groups: list,
             use_gamma: bool = False) -> None:
    _save_svg(filename, width, height, shapes, shape_groups, use_gamma=use_gamma)


def prettify(elem: Any) -> str:
    """diffvg's ``prettify``: the ElementTree element ``elem`` as a string with an XML declaration, one element per
    line, children indented by two spaces (xml.dom.minidom's pretty printing, which diffvg's output has)."""
    from xml.dom import minidom
    from xml.etree import ElementTree

    return minidom.parseString(ElementTree.tostring(elem, encoding="utf-8")).toprettyxml(indent="  ")


def svg_to_scene(filename: str) -> tuple[int, int, list, list]:
    """``(canvas_width, canvas_height, shapes, shape_groups)`` of an SVG file (see clipag's SVG reader)."""
    return load_svg(filename)


_NOT_COVERED = ("from_svg_path", "OptimizableSvg", "render_pytorch", "parse_svg", "parse_scene", "svg_to_str",
                "DiffVGCallback", "LinearGradientPoints")


def __getattr__(name: str) -> Any:
    if name in _NOT_COVERED:
        raise NotImplementedError(f"pydiffvg.{name} is not covered by clipag's diffvg stand-in (see "
                                  f"{__name__}'s docstring for what is)")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

