"""Scenes as diffvg describes them (``Path``, ``ShapeGroup``, the basic shapes), packed for the rasterizer.

The classes take diffvg's constructor arguments with diffvg's defaults (``ShapeGroup(use_even_odd_rule=True)``,
``stroke_width`` the half-width), so the ``pydiffvg`` stand-in re-exports them and SVG files read back into
them. :func:`pack` turns shapes and groups into the rasterizer's tensors *without copying the parameters
out of the autograd graph*: an optimizer that owns ``path.points`` sees gradients on exactly that tensor.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .geometry import FILL, STROKE, Structure, build_structure
from .raster import rasterize

__all__ = ["Path", "Polygon", "Rect", "Circle", "Ellipse", "ShapeGroup", "LinearGradient", "RadialGradient",
           "Packed", "pack", "render", "as_paths"]


def _tensor(x: Any) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.tensor(x, dtype=torch.float32)


class Path:
    """Segments of ``num_control_points`` (0 line, 1 quadratic, 2 cubic) through ``points`` ``(n, 2)`` pixels."""

    def __init__(self, num_control_points: Any, points: Any, is_closed: bool,
                 stroke_width: Any = None, id: str = "", use_distance_approx: bool = False) -> None:
        self.num_control_points = torch.as_tensor(num_control_points, dtype=torch.int32) \
            if not isinstance(num_control_points, torch.Tensor) else num_control_points
        self.points = _tensor(points)
        self.is_closed = bool(is_closed)
        self.stroke_width = torch.tensor(1.0) if stroke_width is None else _tensor(stroke_width)
        self.id = id
        self.use_distance_approx = use_distance_approx  # diffvg's speed/accuracy switch; distances here are exact


class Polygon:
    def __init__(self, points: Any, is_closed: bool, stroke_width: Any = None, id: str = "") -> None:
        self.points, self.is_closed, self.id = _tensor(points), bool(is_closed), id
        self.stroke_width = torch.tensor(1.0) if stroke_width is None else _tensor(stroke_width)


class Rect:
    def __init__(self, p_min: Any, p_max: Any, stroke_width: Any = None, id: str = "") -> None:
        self.p_min, self.p_max, self.id = _tensor(p_min), _tensor(p_max), id
        self.stroke_width = torch.tensor(1.0) if stroke_width is None else _tensor(stroke_width)


class Circle:
    def __init__(self, radius: Any, center: Any, stroke_width: Any = None, id: str = "") -> None:
        self.radius, self.center, self.id = _tensor(radius), _tensor(center), id
        self.stroke_width = torch.tensor(1.0) if stroke_width is None else _tensor(stroke_width)


class Ellipse:
    def __init__(self, radius: Any, center: Any, stroke_width: Any = None, id: str = "") -> None:
        self.radius, self.center, self.id = _tensor(radius), _tensor(center), id
        self.stroke_width = torch.tensor(1.0) if stroke_width is None else _tensor(stroke_width)


class ShapeGroup:
    """Shapes drawn as one layer pair: the union of their strokes, then the fill of their combined winding
    number on top of it (diffvg's order, the reverse of SVG's), each with one RGBA colour."""

    def __init__(self, shape_ids: Any, fill_color: Any, use_even_odd_rule: bool = True, stroke_color: Any = None,
                 shape_to_canvas: Any = None, id: str = "") -> None:
        self.shape_ids = torch.as_tensor(shape_ids) if not isinstance(shape_ids, torch.Tensor) else shape_ids
        self.fill_color = fill_color if fill_color is None or isinstance(fill_color, Gradient) else _tensor(fill_color)
        self.use_even_odd_rule = use_even_odd_rule
        self.stroke_color = stroke_color if stroke_color is None or isinstance(stroke_color, Gradient) \
            else _tensor(stroke_color)
        self.shape_to_canvas = torch.eye(3) if shape_to_canvas is None else shape_to_canvas
        self.id = id


@dataclass
class Gradient:
    """diffvg's gradient colours, accepted so scripts construct them; rendering them is not supported."""

    offsets: Any = None
    stop_colors: Any = None
    extra: dict = field(default_factory=dict)


class LinearGradient(Gradient):
    def __init__(self, begin: Any = None, end: Any = None, offsets: Any = None, stop_colors: Any = None) -> None:
        super().__init__(offsets, stop_colors, {"begin": begin, "end": end})


class RadialGradient(Gradient):
    def __init__(self, center: Any = None, radius: Any = None, offsets: Any = None, stop_colors: Any = None) -> None:
        super().__init__(offsets, stop_colors, {"center": center, "radius": radius})


_KAPPA = 4 * (math.sqrt(2) - 1) / 3  # cubic control distance for a quarter circle (radial error 2.7e-4 r)


def as_paths(shape: Any) -> tuple[torch.Tensor, list[int], bool]:
    """``(points, num_control_points, closed)`` of any shape, differentiable in its parameters."""
    if isinstance(shape, Path):
        return shape.points, [int(v) for v in shape.num_control_points.tolist()], shape.is_closed
    if isinstance(shape, Polygon):
        n = shape.points.shape[0]
        return shape.points, [0] * (n if shape.is_closed else n - 1), shape.is_closed
    if isinstance(shape, Rect):
        (x0, y0), (x1, y1) = shape.p_min.unbind(), shape.p_max.unbind()
        return torch.stack([torch.stack(p) for p in ((x0, y0), (x1, y0), (x1, y1), (x0, y1))]), [0] * 4, True
    if isinstance(shape, Circle | Ellipse):
        rx, ry = (shape.radius, shape.radius) if isinstance(shape, Circle) else shape.radius.unbind()
        cx, cy = shape.center.unbind()
        unit = torch.tensor([[1, 0], [1, _KAPPA], [_KAPPA, 1], [0, 1], [-_KAPPA, 1], [-1, _KAPPA], [-1, 0],
                             [-1, -_KAPPA], [-_KAPPA, -1], [0, -1], [_KAPPA, -1], [1, -_KAPPA]],
                            dtype=shape.center.dtype, device=shape.center.device)
        return unit * torch.stack([rx, ry]) + torch.stack([cx, cy]), [2] * 4, True
    raise NotImplementedError(f"shape type {type(shape).__name__} is not covered by clipag's rasterizer "
                              "(Path, Polygon, Rect, Circle and Ellipse are)")


def _color(c: Any, what: str) -> torch.Tensor | None:
    if c is None:
        return None
    if isinstance(c, Gradient):
        raise NotImplementedError(f"{type(c).__name__} {what} colours are not covered by clipag's rasterizer; "
                                  "use a constant RGBA tensor")
    if c.shape != (4,):
        raise ValueError(f"a {what} colour must be RGBA, shape (4,), got {tuple(c.shape)}")
    return c


@dataclass
class Packed:
    """The rasterizer's inputs for a scene; ``points``/``widths``/``colors`` are still in the autograd graph."""

    points: torch.Tensor
    widths: torch.Tensor
    colors: torch.Tensor
    structure: Structure


@dataclass
class _Plan:
    """How a topology packs: the Structure, and where each packed path, width and colour comes from."""

    structure: Structure
    paths: list[int]  # shape index of each packed path (an open path filled as closed appears twice)
    colors: list[tuple[int, str]]  # (group index, "stroke_color" | "fill_color") of each layer
    keep_alive: list[Any]  # the tensors the key names by identity, so their ids cannot be reused


_plans: dict[tuple, _Plan] = {}


def _identity(t: Any) -> Any:
    """A cheap key for a tensor's value: its identity and version (in-place edits bump the version)."""
    return (id(t), t._version) if isinstance(t, torch.Tensor) else repr(t)


def _topology(shapes: Sequence[Any], groups: Sequence[Any], device: torch.device) -> tuple:
    """What decides the Structure, named without reading tensor values (an optimization loop packs the same
    topology every step; reading 256 small tensors back each time cost more than the render)."""
    parts: list[Any] = [str(device)]
    for s in shapes:
        ncp = getattr(s, "num_control_points", None)
        points = getattr(s, "points", None)
        parts.append((type(s).__name__, _identity(ncp), getattr(s, "is_closed", True),
                      None if points is None else tuple(points.shape), tuple(s.stroke_width.shape)))
    for g in groups:
        parts.append((_identity(g.shape_ids), g.fill_color is None, g.stroke_color is None,
                      bool(g.use_even_odd_rule), _identity(getattr(g, "shape_to_canvas", None)),
                      *(type(c).__name__ if not isinstance(c, torch.Tensor) else tuple(c.shape)
                        for c in (g.fill_color, g.stroke_color))))
    return tuple(parts)


def _plan(shapes: Sequence[Any], groups: Sequence[Any], device: torch.device) -> _Plan:
    geometry = [as_paths(s) for s in shapes]
    for i, (points, ncp, closed) in enumerate(geometry):
        if points.dim() != 2 or points.shape[1] != 2:
            raise ValueError(f"shape {i}: points must be (n, 2), got {tuple(points.shape)}")
        expected = sum(v + 1 for v in ncp) + (0 if closed else 1)
        if points.shape[0] != expected:
            raise ValueError(f"shape {i}: {len(ncp)} segments with num_control_points {ncp} need {expected} "
                             f"points ({'closed' if closed else 'open'} path), got {points.shape[0]}")
        if shapes[i].stroke_width.numel() != 1:
            raise NotImplementedError("per-point stroke widths (one Path.stroke_width per point) are not covered "
                                      "by clipag's rasterizer; use one width per path")
    ncps, closed_flags = [g[1] for g in geometry], [g[2] for g in geometry]
    paths = list(range(len(shapes)))
    closed_copy: dict[int, int] = {}  # open path -> its implicitly closed copy, for fills
    layers, colors, transforms = [], [], []
    for g, group in enumerate(groups):
        ids = [int(i) for i in torch.as_tensor(group.shape_ids).reshape(-1).tolist()]
        if any(not 0 <= i < len(shapes) for i in ids):
            raise ValueError(f"shape group {g} refers to shapes {ids}, but there are {len(shapes)} shapes")
        stroke, fill = _color(group.stroke_color, "stroke"), _color(group.fill_color, "fill")
        fill_ids = ids
        if fill is not None and any(not closed_flags[i] for i in ids):
            warnings.warn(f"shape group {g} fills an open path; it is closed by a straight line for the fill, "
                          "as SVG does (diffvg's result is undefined)", stacklevel=3)
            for i in ids:
                if not closed_flags[i] and i not in closed_copy:
                    closed_copy[i] = len(paths)
                    paths.append(i)
                    ncps.append([*ncps[i], 0])
                    closed_flags.append(True)
            fill_ids = [closed_copy.get(i, i) for i in ids]
        for kind, color, members, attr in ((STROKE, stroke, ids, "stroke_color"),
                                           (FILL, fill, fill_ids, "fill_color")):  # diffvg: fill over stroke
            if color is not None:
                layers.append((kind, tuple(members), bool(group.use_even_odd_rule)))
                colors.append((g, attr))
                transforms.append(getattr(group, "shape_to_canvas", None))
    structure = build_structure(ncps, closed_flags, layers, transforms, device)
    keep = [getattr(s, "num_control_points", None) for s in shapes]
    keep += [t for g in groups for t in (g.shape_ids, getattr(g, "shape_to_canvas", None))]
    return _Plan(structure, paths, colors, keep)


def pack(shapes: Sequence[Any], groups: Sequence[Any], device: torch.device | str | None = None) -> Packed:
    """Shapes and shape groups → :class:`Packed`.

    A fill of an open path is filled as SVG fills it (closed by a line back to its start; diffvg warns that its
    own result is undefined, and so do we) while its stroke stays open.
    """
    if device is None:
        first = next((getattr(s, "points", getattr(s, "center", None)) for s in shapes), None)
        device = first.device if first is not None else torch.device("cpu")
    device = torch.device(device)
    key = _topology(shapes, groups, device)
    plan = _plans.get(key)
    if plan is None:
        plan = _plan(shapes, groups, device)
        if len(_plans) >= 64:
            _plans.clear()
        _plans[key] = plan
    points = [s.points if isinstance(s, Path) else as_paths(s)[0] for s in shapes]
    dtype = points[0].dtype if points else torch.float32
    packed_points = torch.cat([points[i] for i in plan.paths]).to(device, dtype) if points \
        else torch.zeros(0, 2, device=device, dtype=dtype)
    widths = torch.stack([shapes[i].stroke_width.reshape(()) for i in plan.paths]).to(device, dtype) if points \
        else torch.zeros(0, device=device, dtype=dtype)
    colors = torch.stack([getattr(groups[g], attr) for g, attr in plan.colors]).to(device, dtype) if plan.colors \
        else torch.zeros(0, 4, device=device, dtype=dtype)
    return Packed(packed_points, widths, colors, plan.structure)


def render(width: int, height: int, shapes: Sequence[Any], groups: Sequence[Any], *, samples: int = 1,
           background: torch.Tensor | None = None, device: torch.device | str | None = None) -> torch.Tensor:
    """Rasterize shapes and groups to ``(height, width, 4)`` (straight RGB + alpha), differentiably."""
    packed = pack(shapes, groups, device)
    return rasterize(packed.points, packed.widths, packed.colors, packed.structure, width, height,
                     background=background, samples=samples)
