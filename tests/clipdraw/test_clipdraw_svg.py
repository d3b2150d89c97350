"""SVG files of scenes: valid, round-tripping, and drawn the same by an independent renderer (resvg)."""

from __future__ import annotations

import io
import random
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from clipag.adapters.clipdraw.scene import Circle, Path, Rect, ShapeGroup, render
from clipag.adapters.clipdraw.svg import load_svg, save_svg, svg_string
from PIL import Image


def _strokes(n=40, size=96, seed=0):
    rng = random.Random(seed)
    shapes, groups = [], []
    for i in range(n):
        k = rng.randint(1, 3)
        xy = [(rng.random() * size, rng.random() * size)]
        for _ in range(3 * k):
            xy.append((xy[-1][0] + rng.uniform(-15, 15), xy[-1][1] + rng.uniform(-15, 15)))
        shapes.append(Path([2] * k, torch.tensor(xy), False, torch.tensor(rng.uniform(0.5, 4))))
        groups.append(ShapeGroup([i], None, stroke_color=torch.tensor([rng.random() for _ in range(4)])))
    shapes.append(Circle(torch.tensor(20.0), torch.tensor([48.0, 48.0])))
    shapes.append(Rect(torch.tensor([5.0, 60.0]), torch.tensor([30.0, 90.0]), torch.tensor(2.0)))
    groups.insert(0, ShapeGroup([n], torch.tensor([0.2, 0.6, 0.3, 0.8])))
    groups.insert(5, ShapeGroup([n + 1], torch.tensor([0.9, 0.8, 0.1, 0.7]), stroke_color=torch.tensor([0, 0, 0, 1.0])))
    return shapes, groups


def _over_white(image: torch.Tensor) -> np.ndarray:
    return (image[..., :3] * image[..., 3:] + 1 - image[..., 3:]).clamp(0, 1).numpy().astype(np.float64)


def test_svg_is_valid_and_writes_diffvgs_stroke_width(tmp_path):
    shapes, groups = _strokes(3)
    path = save_svg(tmp_path / "a" / "scene.svg", 96, 96, shapes, groups)
    root = ET.parse(path).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg" and root.get("viewBox") == "0 0 96 96"
    elements = root.findall("{http://www.w3.org/2000/svg}path")
    stroke = [e for e in elements if e.get("stroke") != "none"][0]  # the first stroke (the circle is filled)
    assert float(stroke.get("stroke-width")) == pytest.approx(2 * float(shapes[0].stroke_width), abs=1e-4)
    assert stroke.get("stroke-linecap") == "round" and stroke.get("stroke-linejoin") == "round"
    assert [e.get("fill-rule") for e in elements if e.get("fill") != "none"] == ["evenodd", "evenodd"]
    assert not list(tmp_path.glob("a/.*.tmp"))


def test_round_trip_renders_the_same(tmp_path):
    shapes, groups = _strokes()
    save_svg(tmp_path / "scene.svg", 96, 96, shapes, groups)
    width, height, shapes2, groups2 = load_svg(tmp_path / "scene.svg")
    assert (width, height) == (96, 96)
    before, after = _over_white(render(96, 96, shapes, groups)), _over_white(render(96, 96, shapes2, groups2))
    assert np.abs(before - after).max() < 3 / 255  # colours are stored in 8 bits, coordinates to 1e-4 px


def test_an_independent_renderer_draws_the_svg_as_we_render_it():
    resvg = pytest.importorskip("resvg_py", reason="resvg-py is the [dev] reference renderer")
    shapes, groups = _strokes()
    svg = svg_string(96, 96, shapes, groups, background="white")
    theirs = np.asarray(Image.open(io.BytesIO(resvg.svg_to_bytes(svg_string=svg))).convert("RGB")) / 255.0
    ours = _over_white(render(96, 96, shapes, groups, background=torch.ones(96, 96, 4)))
    difference = np.abs(ours - theirs)
    # renderers differ only in how they anti-alias edges: tiny on average, small at the 95th percentile
    assert difference.mean() < 0.006 and np.quantile(difference, 0.95) < 0.03
    assert np.quantile(difference, 0.5) < 1 / 255


def test_reader_handles_svg_syntax_and_refuses_what_it_cannot_read(tmp_path):
    (tmp_path / "a.svg").write_text(
        '<svg xmlns="http://www.w3.org/2000/svg" width="40" height="30">'
        '<g id="layer"><path d="m 5 5 h 10 v 10 H 5 z M 20,5 Q 30 5 30 15 T 35 20" fill="none" stroke="#f00" '
        'style="stroke-width:2"/></g><polygon points="1,1 4,1 4,4" fill="rgb(0, 255, 0)" fill-opacity="0.5"/>'
        '</svg>')
    with pytest.raises(NotImplementedError, match="'T'"):
        load_svg(tmp_path / "a.svg")
    (tmp_path / "b.svg").write_text(
        '<svg xmlns="http://www.w3.org/2000/svg" width="40" height="30">'
        '<path d="m 5 5 h 10 v 10 H 5 z M 20,5 Q 30 5 30 15" fill="none" stroke="#f00" style="stroke-width:2"/>'
        '<polygon points="1,1 4,1 4,4" fill="rgb(0, 255, 0)" fill-opacity="0.5"/></svg>')
    width, height, shapes, groups = load_svg(tmp_path / "b.svg")
    assert (width, height, len(shapes), len(groups)) == (40, 30, 3, 2)
    square, curve = shapes[0], shapes[1]
    assert square.is_closed and square.num_control_points.tolist() == [0, 0, 0, 0]
    assert torch.equal(square.points, torch.tensor([[5.0, 5.0], [15.0, 5.0], [15.0, 15.0], [5.0, 15.0]]))
    assert curve.num_control_points.tolist() == [1] and float(curve.stroke_width) == 1.0
    torch.testing.assert_close(groups[1].fill_color, torch.tensor([0.0, 1.0, 0.0, 0.5]))
    (tmp_path / "c.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"><text>a</text></svg>')
    with pytest.raises(NotImplementedError, match="<text>"):
        load_svg(tmp_path / "c.svg")
