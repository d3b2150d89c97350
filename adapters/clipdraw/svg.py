"""SVG files of scenes, written so that any SVG renderer draws what :func:`~.scene.render` draws.

Differences from diffvg's ``save_svg``, each so the file matches the render: a group's fill is written *after*
its stroke (diffvg composites fill over stroke; SVG paints stroke over fill, so a group with both becomes two
elements); every shape of a group goes into one ``<path>`` (diffvg writes only the first); the fill rule is
explicit (diffvg's default is even-odd, SVG's non-zero); fill opacity is ``fill-opacity`` (diffvg writes
``opacity``, which also fades the stroke); colours are rounded, not truncated, to 8 bits. Strokes keep diffvg's
``stroke-width = 2 · stroke_width`` with round caps and joins.

:func:`load_svg` reads such files back (``<path>`` with M/L/H/V/Q/C/Z commands, absolute or relative, plus
``<rect>``, ``<circle>``, ``<ellipse>``, ``<polygon>``, ``<polyline>``, and a ``<g>`` without its own
styling); anything else raises :class:`NotImplementedError` naming it.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path as FilePath
from typing import Any

import torch

from .scene import Circle, Ellipse, Path, Polygon, Rect, ShapeGroup, as_paths

__all__ = ["save_svg", "svg_string", "load_svg"]

_SVG_NS = "http://www.w3.org/2000/svg"


def _num(x: float) -> str:
    text = f"{x:.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def _rgb(c: torch.Tensor) -> str:
    r, g, b = (int(round(255 * float(v))) for v in c[:3].clamp(0, 1))
    return f"#{r:02x}{g:02x}{b:02x}"


def _path_data(shape: Any) -> str:
    points, ncp, closed = as_paths(shape)
    pts = points.detach().cpu().tolist()
    n = len(pts)
    out = [f"M {_num(pts[0][0])} {_num(pts[0][1])}"]
    i = 0
    for k in ncp:
        nxt = [pts[(i + j) % n] for j in range(1, k + 2)]
        out.append({0: "L", 1: "Q", 2: "C"}[k] + " " + " ".join(f"{_num(x)} {_num(y)}" for x, y in nxt))
        i += k + 1
    if closed:
        out.append("Z")
    return " ".join(out)


def _transform(group: Any) -> str | None:
    m = getattr(group, "shape_to_canvas", None)
    if m is None:
        return None
    m = torch.as_tensor(m).detach().double().cpu()
    if torch.equal(m, torch.eye(3, dtype=torch.float64)):
        return None
    return "matrix(" + " ".join(_num(float(v)) for v in (m[0, 0], m[1, 0], m[0, 1], m[1, 1], m[0, 2], m[1, 2])) + ")"


def svg_string(width: int, height: int, shapes: Sequence[Any], groups: Sequence[Any],
               background: str | None = None) -> str:
    """The SVG document for a scene; ``background`` (e.g. ``"white"``) adds a full-canvas rectangle under it."""
    root = ET.Element("svg", {"version": "1.1", "xmlns": _SVG_NS, "width": str(width), "height": str(height),
                              "viewBox": f"0 0 {width} {height}"})
    if background:
        ET.SubElement(root, "rect", {"width": "100%", "height": "100%", "fill": background})
    for group in groups:
        ids = [int(i) for i in torch.as_tensor(group.shape_ids).reshape(-1).tolist()]
        parts = [_path_data(shapes[i]) for i in ids]
        data = " ".join(parts)
        transform = _transform(group)
        extra = {"transform": transform} if transform else {}
        gid = {"id": group.id} if getattr(group, "id", "") else {}
        if group.stroke_color is not None:
            widths = {round(float(shapes[i].stroke_width.detach().reshape(-1)[0]), 6) for i in ids}
            c = group.stroke_color.detach()
            attrs = {"fill": "none", "stroke": _rgb(c), "stroke-opacity": _num(float(c[3])),
                     "stroke-linecap": "round", "stroke-linejoin": "round", **extra, **gid}
            if len(widths) == 1:
                ET.SubElement(root, "path", {"d": data, "stroke-width": _num(2 * widths.pop()), **attrs})
            else:  # one opacity for the union of strokes of different widths, as the group is one layer
                opacity = attrs.pop("stroke-opacity")
                holder = ET.SubElement(root, "g", {"opacity": opacity})
                for i, part in zip(ids, parts, strict=True):
                    ET.SubElement(holder, "path", {"d": part, **attrs,
                                                   "stroke-width": _num(2 * float(shapes[i].stroke_width))})
        if group.fill_color is not None:
            c = group.fill_color.detach()
            ET.SubElement(root, "path", {"d": data, "fill": _rgb(c), "fill-opacity": _num(float(c[3])),
                                         "fill-rule": "evenodd" if group.use_even_odd_rule else "nonzero",
                                         "stroke": "none", **extra, **({} if group.stroke_color is not None
                                                                       else gid)})
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def save_svg(filename: str | os.PathLike, width: int, height: int, shapes: Sequence[Any], groups: Sequence[Any],
             use_gamma: bool = False, background: str | None = None) -> FilePath:
    """Write the scene as SVG (atomically, and saved elsewhere if ``filename`` cannot be written: see
    :func:`clipag.images.atomic_write`)."""
    from clipag.images import atomic_write

    if use_gamma:
        raise NotImplementedError("save_svg(use_gamma=True) (diffvg's gamma filter) is not covered by clipag")
    text = svg_string(width, height, shapes, groups, background)
    return atomic_write(FilePath(filename), lambda tmp: tmp.write_text(text), what="the drawing")


# -- reading ----------------------------------------------------------------------------------------------------

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_TOKEN = re.compile(r"[MmLlHhVvCcQqZzSsTtAa]|" + _NUMBER)
_ARITY = {"M": 2, "L": 2, "H": 1, "V": 1, "C": 6, "Q": 4, "Z": 0}


def _parse_d(d: str) -> list[Path]:
    """Subpaths of an SVG path ``d`` as diffvg paths (a closing line is added where Z needs one)."""
    tokens = _TOKEN.findall(d)
    paths: list[Path] = []
    pts: list[tuple[float, float]] = []
    ncp: list[int] = []
    cur = start = (0.0, 0.0)
    cmd, i = None, 0

    def finish(closed: bool) -> None:
        nonlocal pts, ncp
        if ncp:
            if closed:
                if pts[-1] != pts[0]:
                    ncp.append(0)  # the line Z draws back to the start
                else:
                    pts.pop()
            paths.append(Path(torch.tensor(ncp, dtype=torch.int32), torch.tensor(pts), closed))
        pts, ncp = [], []

    while i < len(tokens):
        if tokens[i].isalpha():
            cmd = tokens[i]
            i += 1
            if cmd.upper() not in _ARITY:
                raise NotImplementedError(f"SVG path command {cmd!r} is not covered by clipag's SVG reader "
                                          "(M L H V C Q Z are)")
        elif cmd is None:
            raise ValueError(f"SVG path data must start with a command: {d[:40]!r}")
        op, rel = cmd.upper(), cmd.islower()
        if op == "Z":
            finish(True)
            cur = start
            continue
        args = [float(t) for t in tokens[i:i + _ARITY[op]]]
        if len(args) < _ARITY[op] or any(t.isalpha() for t in tokens[i:i + _ARITY[op]]):
            raise ValueError(f"SVG path command {cmd} needs {_ARITY[op]} numbers: {d[:60]!r}")
        i += _ARITY[op]
        if op == "H":
            args = [args[0] + (cur[0] if rel else 0), cur[1]]
            rel = False
        elif op == "V":
            args = [cur[0], args[0] + (cur[1] if rel else 0)]
            rel = False
        xy = [(args[k] + (cur[0] if rel else 0), args[k + 1] + (cur[1] if rel else 0)) for k in range(0, len(args), 2)]
        if op == "M":
            finish(False)
            cur = start = xy[0]
            pts = [cur]
            cmd = "l" if rel else "L"  # further pairs after M are lines
            continue
        if not pts:
            pts = [cur]
        pts.extend(xy)
        ncp.append({"L": 0, "H": 0, "V": 0, "Q": 1, "C": 2}[op])
        cur = xy[-1]
    finish(False)
    return paths


def _style(element: ET.Element) -> dict[str, str]:
    attrs = dict(element.attrib)
    for item in attrs.pop("style", "").split(";"):
        if ":" in item:
            k, v = item.split(":", 1)
            attrs[k.strip()] = v.strip()
    return attrs


def _color(value: str | None, opacity: str | None) -> torch.Tensor | None:
    if value is None or value == "none":
        return None
    value = value.strip()
    named = {"black": "#000000", "white": "#ffffff", "red": "#ff0000", "green": "#008000", "blue": "#0000ff"}
    value = named.get(value, value)
    if m := re.fullmatch(r"#([0-9a-fA-F]{6})", value):
        rgb = [int(m.group(1)[k:k + 2], 16) / 255 for k in (0, 2, 4)]
    elif m := re.fullmatch(r"#([0-9a-fA-F]{3})", value):
        rgb = [int(ch * 2, 16) / 255 for ch in m.group(1)]
    elif m := re.fullmatch(r"rgb\(\s*([\d.]+)\s*,\s*([\d.]+)\s*,\s*([\d.]+)\s*\)", value):
        rgb = [float(v) / 255 for v in m.groups()]
    else:
        raise NotImplementedError(f"SVG colour {value!r} is not covered by clipag's SVG reader (#rrggbb, rgb())")
    return torch.tensor([*rgb, float(opacity) if opacity is not None else 1.0])


def load_svg(filename: str | os.PathLike) -> tuple[int, int, list[Any], list[ShapeGroup]]:
    """``(width, height, shapes, shape_groups)`` of an SVG file (see the module docstring for what is read)."""
    root = ET.parse(filename).getroot()
    width, height = (int(float(root.get(k, "0").removesuffix("px"))) for k in ("width", "height"))
    shapes: list[Any] = []
    groups: list[ShapeGroup] = []

    def visit(element: ET.Element) -> None:
        for child in element:
            tag = child.tag.split("}")[-1]
            attrs = _style(child)
            if tag in ("defs", "title", "desc", "metadata"):
                continue
            if tag == "g":
                if set(attrs) - {"id"}:
                    raise NotImplementedError(f"SVG <g> attributes {sorted(set(attrs) - {'id'})} are not covered "
                                              "by clipag's SVG reader")
                visit(child)
                continue
            if "transform" in attrs:
                raise NotImplementedError("SVG transform attributes are not covered by clipag's SVG reader")
            if tag == "rect" and attrs.get("width") == "100%" and attrs.get("height") == "100%":
                continue  # a background
            if tag == "path":
                found = _parse_d(attrs.get("d", ""))
            elif tag == "rect":
                x, y, w, h = (float(attrs.get(k, 0)) for k in ("x", "y", "width", "height"))
                found = [Rect(torch.tensor([x, y]), torch.tensor([x + w, y + h]))]
            elif tag == "circle":
                found = [Circle(torch.tensor(float(attrs["r"])),
                                torch.tensor([float(attrs.get("cx", 0)), float(attrs.get("cy", 0))]))]
            elif tag == "ellipse":
                found = [Ellipse(torch.tensor([float(attrs["rx"]), float(attrs["ry"])]),
                                 torch.tensor([float(attrs.get("cx", 0)), float(attrs.get("cy", 0))]))]
            elif tag in ("polygon", "polyline"):
                nums = [float(v) for v in re.findall(_NUMBER, attrs["points"])]
                found = [Polygon(torch.tensor(nums).view(-1, 2), tag == "polygon")]
            else:
                raise NotImplementedError(f"SVG element <{tag}> is not covered by clipag's SVG reader")
            half = float(attrs.get("stroke-width", 1)) / 2
            for shape in found:
                shape.stroke_width = torch.tensor(half)
            opacity = float(attrs.get("opacity", 1))
            fill = _color(attrs.get("fill", "#000000"), attrs.get("fill-opacity"))
            stroke = _color(attrs.get("stroke"), attrs.get("stroke-opacity"))
            for c in (fill, stroke):
                if c is not None:
                    c[3] *= opacity
            ids = list(range(len(shapes), len(shapes) + len(found)))
            shapes.extend(found)
            if fill is not None and stroke is not None:  # SVG paints the stroke over the fill: two layers
                groups.append(ShapeGroup(ids, fill, use_even_odd_rule=attrs.get("fill-rule") == "evenodd"))
                groups.append(ShapeGroup(ids, None, stroke_color=stroke))
            elif fill is not None or stroke is not None:
                groups.append(ShapeGroup(ids, fill, use_even_odd_rule=attrs.get("fill-rule") == "evenodd",
                                         stroke_color=stroke))

    visit(root)
    return width, height, shapes, groups
