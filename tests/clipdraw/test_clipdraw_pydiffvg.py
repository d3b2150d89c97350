"""The pydiffvg stand-in: diffvg's API and conventions, what it refuses, and upstream's call sequence under
``clipag run --device cpu`` with no diffvg installed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import clipag.adapters.clipdraw.pydiffvg as pydiffvg
import numpy as np
import pytest
import torch
from generate_fixtures import save_hub_folder
from PIL import Image

from clipag import device_remap

SCRIPTS = Path(__file__).parents[1] / "scripts"


def _scene():
    path = pydiffvg.Path(num_control_points=torch.tensor([2], dtype=torch.int32),
                         points=torch.tensor([[10.0, 10.0], [30.0, 5.0], [40.0, 40.0], [50.0, 20.0]]),
                         stroke_width=torch.tensor(2.0), is_closed=False)
    group = pydiffvg.ShapeGroup(shape_ids=torch.tensor([0]), fill_color=None,
                                stroke_color=torch.tensor([0.2, 0.4, 0.6, 0.8]))
    return [path], [group]


def test_render_returns_straight_rgba_and_gradients_reach_the_scripts_leaves():
    shapes, groups = _scene()
    args = pydiffvg.RenderFunction.serialize_scene(64, 48, shapes, groups)
    image = pydiffvg.RenderFunction.apply(64, 48, 2, 2, 0, None, *args)
    assert image.shape == (48, 64, 4) and image.device == pydiffvg.get_device()
    inside = image[..., 3] > 0.8 - 1e-6  # fully covered pixels (at edges diffvg scales colour by coverage)
    assert inside.any()
    torch.testing.assert_close(image[inside][:, :3], torch.tensor([0.2, 0.4, 0.6]).expand(int(inside.sum()), 3))
    assert float(image[..., 3].max()) == pytest.approx(0.8)  # not premultiplied: alpha 0.8, colour as given
    # requires_grad set after serialization (as predict.py does) still reaches the same leaf tensors
    shapes[0].points.requires_grad = True
    groups[0].stroke_color.requires_grad = True
    shapes[0].stroke_width.requires_grad = True
    image = pydiffvg.RenderFunction.apply(64, 48, 2, 2, 1, None,
                                          *pydiffvg.RenderFunction.serialize_scene(64, 48, shapes, groups))
    image[..., 3].sum().backward()
    assert shapes[0].points.grad.abs().sum() > 0 and shapes[0].stroke_width.grad > 0
    assert groups[0].stroke_color.grad[3] > 0
    # a seed or sample count changes nothing: the box filter is computed analytically
    again = pydiffvg.RenderFunction.apply(64, 48, 4, 4, 7, None,
                                          *pydiffvg.RenderFunction.serialize_scene(64, 48, shapes, groups))
    assert torch.equal(again, image)


def test_rendering_the_canvas_at_another_size_scales_the_scene():
    shapes, groups = _scene()
    args = pydiffvg.RenderFunction.serialize_scene(64, 48, shapes, groups)
    big = pydiffvg.RenderFunction.apply(128, 96, 2, 2, 0, None, *args)
    small = pydiffvg.RenderFunction.apply(64, 48, 2, 2, 0, None, *args)
    assert float(big[..., 3].sum()) == pytest.approx(4 * float(small[..., 3].sum()), rel=0.02)
    with pytest.raises(NotImplementedError, match="unequal scales"):
        pydiffvg.RenderFunction.apply(128, 48, 2, 2, 0, None, *args)


def test_background_image_and_supersampling_switch():
    shapes, groups = _scene()
    args = pydiffvg.RenderFunction.serialize_scene(64, 48, shapes, groups)
    background = torch.ones(48, 64, 4)
    image = pydiffvg.RenderFunction.apply(64, 48, 2, 2, 0, background, *args)
    assert torch.equal(image[0, 0], torch.ones(4))
    with pytest.raises(NotImplementedError, match="4 channels"):
        pydiffvg.RenderFunction.apply(64, 48, 2, 2, 0, torch.ones(48, 64, 3), *args)
    try:
        pydiffvg.set_sampling("supersample")
        fine = pydiffvg.RenderFunction.apply(64, 48, 2, 2, 0, None, *args)
    finally:
        pydiffvg.set_sampling("analytic")
    plain = pydiffvg.RenderFunction.apply(64, 48, 2, 2, 0, None, *args)
    assert not torch.equal(fine, plain) and (fine - plain).abs().mean() < 0.01


def test_device_functions_follow_clipag_run_device():
    saved = pydiffvg.get_device(), pydiffvg.get_use_gpu()
    try:
        device_remap.install("cpu")
        pydiffvg.set_device(torch.device("cuda"))
        assert pydiffvg.get_device() == torch.device("cpu") and pydiffvg.get_use_gpu() is False
        pydiffvg.set_use_gpu(False)
        assert pydiffvg.get_device().type == "cpu"
    finally:
        device_remap.uninstall()
        pydiffvg.set_device(saved[0])
        pydiffvg.set_use_gpu(saved[1])


def test_imwrite_applies_gamma_to_a_tensor_that_requires_grad(tmp_path):
    image = torch.rand(8, 10, 3, requires_grad=True)
    before = image.detach().clone()
    pydiffvg.imwrite(image, str(tmp_path / "sub" / "a.png"), gamma=2.2)
    saved = np.asarray(Image.open(tmp_path / "sub" / "a.png"))
    expected = (np.power(np.clip(before.numpy().astype(np.float64), 0, 1), 1 / 2.2) * 255).astype(np.uint8)
    assert np.array_equal(saved, expected)
    assert torch.equal(image.detach(), before)  # the caller's tensor is untouched
    pydiffvg.imwrite(torch.rand(8, 10, 4), str(tmp_path / "b.png"), gamma=1.0)
    assert Image.open(tmp_path / "b.png").mode == "RGBA"
    pydiffvg.imwrite(torch.rand(8, 10), str(tmp_path / "c.png"))
    assert Image.open(tmp_path / "c.png").mode == "L"


def test_uncovered_calls_raise_not_implemented_naming_them(tmp_path):
    shapes, groups = _scene()
    with pytest.raises(NotImplementedError, match="sdf"):
        pydiffvg.RenderFunction.serialize_scene(64, 48, shapes, groups, output_type=pydiffvg.OutputType.sdf)
    with pytest.raises(NotImplementedError, match="tent"):
        pydiffvg.RenderFunction.serialize_scene(64, 48, shapes, groups,
                                                filter=pydiffvg.PixelFilter(pydiffvg.FilterType.tent))
    with pytest.raises(NotImplementedError, match="use_prefiltering"):
        pydiffvg.RenderFunction.serialize_scene(64, 48, shapes, groups, use_prefiltering=True)
    gradient = pydiffvg.ShapeGroup(torch.tensor([0]), pydiffvg.LinearGradient())
    with pytest.raises(NotImplementedError, match="LinearGradient"):
        pydiffvg.RenderFunction.apply(64, 48, 2, 2, 0, None,
                                      *pydiffvg.RenderFunction.serialize_scene(64, 48, shapes, [gradient]))
    shapes[0].stroke_width = torch.ones(4)
    with pytest.raises(NotImplementedError, match="per-point stroke widths"):
        pydiffvg.RenderFunction.apply(64, 48, 2, 2, 0, None,
                                      *pydiffvg.RenderFunction.serialize_scene(64, 48, shapes, groups))
    with pytest.raises(NotImplementedError, match="pydiffvg.from_svg_path"):
        pydiffvg.from_svg_path("M 0 0 L 1 1")
    with pytest.raises(AttributeError):
        pydiffvg.no_such_name  # noqa: B018
    with pytest.raises(NotImplementedError, match="use_gamma"):
        pydiffvg.save_svg(str(tmp_path / "x.svg"), 64, 48, *_scene(), use_gamma=True)


def test_bad_scenes_get_clear_errors():
    path = pydiffvg.Path(torch.tensor([2, 2], dtype=torch.int32), torch.rand(5, 2), is_closed=False)
    group = pydiffvg.ShapeGroup(torch.tensor([0]), None, stroke_color=torch.ones(4))
    with pytest.raises(ValueError, match="need 7 points"):
        args = pydiffvg.RenderFunction.serialize_scene(8, 8, [path], [group])
        pydiffvg.RenderFunction.apply(8, 8, 2, 2, 0, None, *args)
    path.points = torch.tensor([[0.0, float("nan")]] * 7)
    with pytest.raises(ValueError, match="non-finite"):
        pydiffvg.RenderFunction.serialize_scene(8, 8, [path], [group])


def test_upstream_call_sequence_runs_under_clipag_run_device_cpu(tmp_path):
    """predict.py's and the notebook's calls, hard-coded CUDA and all, with no diffvg installed."""
    model = save_hub_folder(tmp_path / "tiny", size=224)
    out = tmp_path / "out"
    out.mkdir()
    result = subprocess.run([sys.executable, "-m", "clipag.cli", "run", "--device", "cpu", "--model", str(model),
                             str(SCRIPTS / "clipdraw_upstream_calls.py"), str(out), "16", "3"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "pydiffvg -> clipag.adapters.clipdraw.pydiffvg (stand-in)" in result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["module"] == "clipag.adapters.clipdraw.pydiffvg"
    assert report["device"] == "cpu" and report["image_device"] == "cpu" and report["shape"] == [224, 224, 4]
    assert all(g > 0 for g in report["grad_norms"]) and report["moved"] > 0.1
    assert report["min_width"] >= 1.0 and report["colors_in_range"]
    assert len(list(out.glob("iter_*.png"))) == 3
    from clipag.adapters.clipdraw.svg import load_svg

    width, height, shapes, groups = load_svg(out / "final.svg")
    assert (width, height, len(shapes), len(groups)) == (224, 224, 16, 16)


def test_cached_topology_follows_edits_to_the_scene():
    """pack() caches each topology by tensor identity and version; in-place edits and new objects are seen."""
    a = pydiffvg.Path(torch.tensor([0], dtype=torch.int32), torch.tensor([[5.0, 5.0], [25.0, 5.0]]), False,
                      torch.tensor(2.0))
    b = pydiffvg.Path(torch.tensor([0], dtype=torch.int32), torch.tensor([[5.0, 20.0], [25.0, 20.0]]), False,
                      torch.tensor(2.0))
    group = pydiffvg.ShapeGroup(torch.tensor([0]), None, stroke_color=torch.tensor([1.0, 0, 0, 1]))
    render = lambda: pydiffvg.RenderFunction.apply(32, 32, 2, 2, 0, None,
                                                   *pydiffvg.RenderFunction.serialize_scene(32, 32, [a, b], [group]))
    assert render()[5, 15, 3] == 1 and render()[20, 15, 3] == 0
    group.shape_ids[0] = 1  # in place: the version changes
    assert render()[5, 15, 3] == 0 and render()[20, 15, 3] == 1
    b.num_control_points = torch.tensor([1], dtype=torch.int32)  # a new tensor and a new topology
    b.points = torch.tensor([[5.0, 20.0], [15.0, 30.0], [25.0, 20.0]])
    assert render()[20, 15, 3] == 0 and render()[24, 15, 3] == 1  # the quadratic bends down to y≈25
