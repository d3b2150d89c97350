"""The pure-PyTorch vector rasterizer: areas, compositing, diffvg's sampling rule, gradients, bounded memory."""

from __future__ import annotations

import math

import pytest
import torch
from clipag.adapters.clipdraw.geometry import FILL, STROKE, build_structure, flatten
from clipag.adapters.clipdraw.raster import rasterize
from clipag.adapters.clipdraw.scene import Circle, Path, Rect, ShapeGroup, render

RED, BLUE = torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.tensor([0.0, 0.0, 1.0, 1.0])


def _line(a, b, r, color=RED, size=(160, 100), **kw):
    st = build_structure([[0]], [False], [(STROKE, [0], True)])
    return rasterize(torch.tensor([a, b], dtype=torch.float64), torch.tensor([r], dtype=torch.float64),
                     color[None].double(), st, *size, **kw)


@pytest.mark.parametrize("r", [0.3, 1.0, 3.0, 10.0])
def test_straight_stroke_covers_length_times_drawn_width(r):
    """diffvg's stroke_width is the half-width: a stroke covers 2·r·L plus its two round caps (π r²)."""
    a, b = (20.3, 30.7), (120.1, 60.2)
    length = math.dist(a, b)
    area = float(_line(a, b, r)[..., 3].sum())
    assert area == pytest.approx(2 * r * length + math.pi * r * r, rel=3e-3)
    # across a horizontal stroke the coverage adds up to the drawn width 2·r, wherever the edges fall
    column = _line((10.0, 50.37), (150.0, 50.37), r)[:, 80, 3]
    assert float(column.sum()) == pytest.approx(2 * r, abs=1e-6)


def test_filled_square_area_and_fill_rules():
    for corner in ((10.5, 10.5), (10.25, 11.7)):  # on pixel centres' half-grid and off it
        x, y = corner
        square = Path([0, 0, 0, 0], [[x, y], [x + 50, y], [x + 50, y + 60], [x, y + 60]], True)
        alpha = render(100, 100, [square], [ShapeGroup([0], torch.tensor([0.0, 1, 0, 1]))])[..., 3]
        # exact along the edges; the distance-based ramp overestimates a corner pixel's share by < 0.3
        assert float(alpha.sum()) == pytest.approx(3000, abs=4 * 0.3)
        assert float(alpha.max()) == 1.0 and float(alpha.min()) == 0.0
    # two overlapping squares in one group: non-zero fills the union, even-odd leaves the overlap empty
    a = Path([0] * 4, [[10.2, 10.2], [50.2, 10.2], [50.2, 50.2], [10.2, 50.2]], True)
    b = Path([0] * 4, [[30.2, 30.2], [70.2, 30.2], [70.2, 70.2], [30.2, 70.2]], True)
    for even_odd, expected in ((False, 1600 * 2 - 400), (True, 1600 * 2 - 800)):
        group = ShapeGroup([0, 1], torch.tensor([0.0, 0, 0, 1]), use_even_odd_rule=even_odd)
        alpha = render(80, 80, [a, b], [group])[..., 3]
        assert float(alpha.sum()) == pytest.approx(expected, abs=1)
        assert float(alpha[40, 40]) == (0.0 if even_odd else 1.0)


def test_opaque_strokes_composite_exactly_and_later_paths_cover_earlier_ones():
    shapes = [Path([0], [[10.0, 32.0], [54.0, 32.0]], False, torch.tensor(6.0)),
              Path([0], [[32.0, 10.0], [32.0, 54.0]], False, torch.tensor(6.0))]
    red, blue = ShapeGroup([0], None, stroke_color=RED), ShapeGroup([1], None, stroke_color=BLUE)
    first_red, first_blue = render(64, 64, shapes, [red, blue]), render(64, 64, shapes, [blue, red])
    assert torch.equal(first_red[32, 32], BLUE) and torch.equal(first_blue[32, 32], RED)  # exact, not approximate
    assert torch.equal(first_red[32, 15], RED) and torch.equal(first_red[15, 32], BLUE)
    assert torch.equal(first_red[5, 5], torch.zeros(4))
    # a group's fill is drawn over its own stroke (diffvg's order, the reverse of SVG's)
    square = Rect(torch.tensor([20.0, 20.0]), torch.tensor([44.0, 44.0]), torch.tensor(4.0))
    both = render(64, 64, [square], [ShapeGroup([0], torch.tensor([0.0, 1, 0, 1]), stroke_color=RED)])
    assert torch.equal(both[22, 32], torch.tensor([0.0, 1, 0, 1]))  # inside, within the stroke: fill on top
    assert torch.equal(both[18, 32], RED)  # outside, within the stroke


def test_lines_quadratics_and_cubics_agree_with_their_cubic_forms():
    p0, q, p2 = torch.tensor([5.0, 50.0]), torch.tensor([40.0, 2.0]), torch.tensor([75.0, 50.0])
    quad = Path([1], torch.stack([p0, q, p2]), False, torch.tensor(2.0))
    cubic = Path([2], torch.stack([p0, p0 + 2 / 3 * (q - p0), p2 + 2 / 3 * (q - p2), p2]), False, torch.tensor(2.0))
    line = Path([0], torch.stack([p0, p2]), False, torch.tensor(2.0))
    line_as_cubic = Path([2], torch.stack([p0, p0 + (p2 - p0) / 3, p0 + 2 * (p2 - p0) / 3, p2]), False,
                         torch.tensor(2.0))
    group = [ShapeGroup([0], None, stroke_color=RED)]
    for a, b in ((quad, cubic), (line, line_as_cubic)):
        assert (render(80, 60, [a], group) - render(80, 60, [b], group)).abs().max() < 2e-3


def _segment_distance(p, a, b):
    ab, ap = b - a, p - a
    t = ((ap * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-12)).clamp(0, 1)
    return (ap - t[..., None] * ab).norm(dim=-1)


def _reference(points, widths, colors, st, width, height, n=16):
    """diffvg's rule, densely: binary coverage at n×n stratum centres, each sample's colour divided by its
    alpha (diffvg un-premultiplies per sample), then the plain mean over the pixel's samples."""
    a, b, r, layer = flatten(points, widths, st, tolerance=0.01)
    ys, xs = torch.meshgrid(torch.arange(height * n), torch.arange(width * n), indexing="ij")
    p = torch.stack([(xs + 0.5) / n, (ys + 0.5) / n], -1).reshape(-1, 2).double()
    premul, alpha = torch.zeros(p.shape[0], 3, dtype=torch.float64), torch.zeros(p.shape[0], dtype=torch.float64)
    for layer_id in range(st.num_layers):
        sel = torch.nonzero(layer == layer_id).squeeze(1).tolist()
        if st.layer_kind[layer_id] == STROKE:
            covered = torch.stack([_segment_distance(p, a[i], b[i]) < r[i] for i in sel], 1).any(1)
        else:
            wind = torch.zeros(p.shape[0], dtype=torch.long)
            for i in sel:
                up = (a[i, 1] <= p[:, 1]) & (p[:, 1] < b[i, 1])
                down = (b[i, 1] <= p[:, 1]) & (p[:, 1] < a[i, 1])
                dy = torch.where(up | down, b[i, 1] - a[i, 1], torch.ones((), dtype=torch.float64))
                right = p[:, 0] < a[i, 0] + (p[:, 1] - a[i, 1]) * (b[i, 0] - a[i, 0]) / dy
                wind += (up & right).long() - (down & right).long()
            covered = (wind % 2 == 1) if st.layer_even_odd[layer_id] else (wind != 0)
        al = colors[layer_id, 3] * covered
        premul = premul * (1 - al[:, None]) + al[:, None] * colors[layer_id, :3]
        alpha = alpha * (1 - al) + al
    straight = torch.where(alpha[:, None] > 1e-6, premul / alpha.clamp_min(1e-6)[:, None], premul)
    return torch.cat([straight, alpha[:, None]], 1).view(height, n, width, n, 4).mean((1, 3))


def _mixed_scene():
    points = torch.tensor([[3.2, 4.1], [20.3, 2.2], [24.7, 25.1], [6.1, 22.9], [2.5, 19.0], [28.1, 7.7],
                           [6.3, 5.3], [23.6, 9.1], [15.2, 26.4], [4.0, 14.0]], dtype=torch.float64)
    st = build_structure([[2], [0], [0, 1]], [False, False, True],
                         [(STROKE, [0], True), (STROKE, [1], True), (FILL, [2], True), (STROKE, [2], True)])
    widths = torch.tensor([2.3, 0.7, 1.1], dtype=torch.float64)
    colors = torch.tensor([[0.9, 0.2, 0.1, 0.7], [0.1, 0.8, 0.3, 0.9], [0.2, 0.3, 0.9, 0.6], [0.5, 0.5, 0.1, 1.0]],
                          dtype=torch.float64)
    return points, widths, colors, st


def test_matches_diffvgs_per_sample_rule_in_expectation():
    """Analytic coverage vs a 256-samples-per-pixel rendering with diffvg's rule (overlapping translucent
    strokes, a thin line, a fill with a quadratic edge): equal in the interior, close at edges, and the
    sub-pixel grid converges to it."""
    points, widths, colors, st = _mixed_scene()
    reference = _reference(points, widths, colors, st, 32, 30)
    errors = {}
    for samples in (1, 2, 4):
        ours = rasterize(points, widths, colors, st, 32, 30, tolerance=0.01, samples=samples)
        over = lambda img: img[..., :3] * img[..., 3:] + 1 - img[..., 3:]
        errors[samples] = (over(ours) - over(reference)).abs()
    assert errors[1].mean() < 0.005 and errors[1].flatten().quantile(0.99) < 0.06
    assert errors[4].max() < errors[2].max() < errors[1].max()
    assert errors[4].mean() < 0.5 * errors[1].mean()


def _finite_difference(f, x, eps=1e-6):
    grad = torch.zeros_like(x)
    for i in range(x.numel()):
        plus, minus = x.clone().view(-1), x.clone().view(-1)
        plus[i] += eps
        minus[i] -= eps
        grad.view(-1)[i] = (f(plus.view(x.shape)) - f(minus.view(x.shape))) / (2 * eps)
    return grad


def test_gradients_match_finite_differences():
    points, widths, colors, st = _mixed_scene()
    torch.manual_seed(0)
    weights = torch.rand(30, 32, 4, dtype=torch.float64)
    background = torch.rand(30, 32, 4, dtype=torch.float64)
    for bg in (None, background):
        def loss(p, w, c, b=bg):
            return (rasterize(p, w, c, st, 32, 30, background=b) * weights).sum()
        leaves = [t.clone().requires_grad_() for t in (points, widths, colors)]
        loss(*leaves).backward()
        for k, (value, leaf) in enumerate(zip((points, widths, colors), leaves, strict=True)):
            args = lambda v, k=k: [v if j == k else t for j, t in enumerate((points, widths, colors))]
            numeric = _finite_difference(lambda v, a=args: loss(*a(v)), value)
            assert leaf.grad.abs().max() > 0.1
            torch.testing.assert_close(leaf.grad, numeric, atol=1e-6, rtol=1e-5)
    bg = background.clone().requires_grad_()
    (rasterize(points, widths, colors, st, 32, 30, background=bg) * weights).sum().backward()
    for index in torch.randint(0, background.numel(), (24,)).tolist():  # spot checks: 3840 entries in all
        def at(v, i=index):
            b = background.clone().view(-1)
            b[i] = v
            return (rasterize(points, widths, colors, st, 32, 30, background=b.view(background.shape)) * weights).sum()
        value = float(background.view(-1)[index])
        numeric = (at(value + 1e-6) - at(value - 1e-6)) / 2e-6
        assert float(bg.grad.view(-1)[index]) == pytest.approx(float(numeric), abs=1e-6)


def test_fill_edges_on_pixel_centres_keep_their_gradient():
    """A square whose edges lie on the pixel centres' grid: moving an edge by δ changes the area by about
    side·δ (the corners add a little), and the gradient says so instead of vanishing on the exact hits."""
    corners = torch.tensor([[10.5, 10.5], [40.5, 10.5], [40.5, 30.5], [10.5, 30.5]], dtype=torch.float64)
    st = build_structure([[0, 0, 0, 0]], [True], [(FILL, [0], True)])
    black = torch.tensor([[0, 0, 0, 1.0]], dtype=torch.float64)
    area = lambda c: rasterize(c, torch.ones(1, dtype=torch.float64), black, st, 50, 40)[..., 3].sum()
    leaf = corners.clone().requires_grad_()
    area(leaf).backward()
    torch.testing.assert_close(leaf.grad, _finite_difference(area, corners), atol=1e-6, rtol=1e-6)
    assert float(leaf.grad[1, 0] + leaf.grad[2, 0]) == pytest.approx(20, abs=1)  # the right edge is 20 long
    assert float(leaf.grad[0, 1] + leaf.grad[1, 1]) == pytest.approx(-30, abs=1)  # the top edge is 30 long


def test_chunking_bounds_temporaries_without_changing_the_result():
    shapes = [Path([2, 2], torch.rand(7, 2) * 60, False, torch.tensor(float(w))) for w in (1, 3, 8, 20)]
    shapes.append(Circle(torch.tensor(15.0), torch.tensor([30.0, 30.0])))
    groups = [ShapeGroup([i], None, stroke_color=torch.rand(4)) for i in range(4)]
    groups.append(ShapeGroup([4], torch.tensor([0.3, 0.6, 0.9, 0.5])))
    from clipag.adapters.clipdraw.scene import pack

    packed = pack(shapes, groups)
    args = (packed.points, packed.widths, packed.colors, packed.structure, 64, 64)
    assert torch.equal(rasterize(*args), rasterize(*args, chunk=64))


def test_empty_and_off_canvas_scenes():
    assert torch.equal(_line((-50.0, -50.0), (-20.0, -30.0), 3.0, size=(20, 10)), torch.zeros(10, 20, 4))
    st = build_structure([], [], [])
    out = rasterize(torch.zeros(0, 2), torch.zeros(0), torch.zeros(0, 4), st, 8, 6, background=torch.ones(6, 8, 4))
    assert torch.equal(out, torch.ones(6, 8, 4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    points, widths, colors, st = _mixed_scene()
    cpu = rasterize(points.float(), widths.float(), colors.float(), st, 32, 30)
    gpu = rasterize(points.float().cuda(), widths.float().cuda(), colors.float().cuda(), st, 32, 30)
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=0)


def test_shape_to_canvas_scales_strokes_like_diffvg_and_shear_is_refused():
    """diffvg measures stroke widths in shape space: a similarity transform scales them with the shape."""
    import math as m

    angle, scale = 0.3, 2.0
    c, s = m.cos(angle) * scale, m.sin(angle) * scale
    matrix = torch.tensor([[c, -s, 20.0], [s, c, 10.0], [0.0, 0.0, 1.0]])
    local = torch.tensor([[5.0, 5.0], [25.0, 8.0]])
    moved = local @ matrix[:2, :2].T + matrix[:2, 2]
    red = torch.tensor([1.0, 0, 0, 1])
    transformed = render(96, 96, [Path([0], local, False, torch.tensor(1.5))],
                         [ShapeGroup([0], None, stroke_color=red, shape_to_canvas=matrix)])
    direct = render(96, 96, [Path([0], moved, False, torch.tensor(3.0))], [ShapeGroup([0], None, stroke_color=red)])
    assert (transformed - direct).abs().max() < 1e-4
    sheared = torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    with pytest.raises(NotImplementedError, match="shear"):
        render(8, 8, [Path([0], local, False)], [ShapeGroup([0], None, stroke_color=red, shape_to_canvas=sheared)])


def test_a_groups_shapes_form_one_layer():
    """Two crossing strokes in one group: the crossing has the group's alpha once, not composited twice."""
    shapes = [Path([0], [[5.0, 20.0], [35.0, 20.0]], False, torch.tensor(3.0)),
              Path([0], [[20.0, 5.0], [20.0, 35.0]], False, torch.tensor(3.0))]
    half = torch.tensor([0.0, 0.0, 1.0, 0.5])
    one = render(40, 40, shapes, [ShapeGroup([0, 1], None, stroke_color=half)])
    two = render(40, 40, shapes, [ShapeGroup([0], None, stroke_color=half), ShapeGroup([1], None, stroke_color=half)])
    assert float(one[20, 20, 3]) == pytest.approx(0.5) and float(two[20, 20, 3]) == pytest.approx(0.75)
