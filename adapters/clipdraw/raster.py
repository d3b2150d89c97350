"""A differentiable vector rasterizer in plain PyTorch, with diffvg's conventions.

Why hand-written: diffvg (the rasterizer CLIPDraw and its successors use) is a C++/CUDA source build, not on
PyPI, that fails on recent systems, and no maintained pip package rasterizes Bézier strokes with gradients.

What it computes (diffvg's semantics, read from its ``diffvg.cpp``; details in docs/clipdraw.md):

* coordinates in pixels, pixel ``(x, y)`` covering ``[x, x+1] × [y, y+1]``;
* a stroke covers every point within ``stroke_width`` (the *half*-width) of its path, so caps and joins are
  round; a fill covers the points inside its paths by the even-odd or non-zero rule;
* layers composited "over" in drawing order (a group's fill is drawn over its own stroke, as diffvg does);
* output ``(H, W, 4)``: RGB *not* premultiplied, alpha in the last channel.

Anti-aliasing is analytic: each layer's coverage of a pixel is its box-filtered area, estimated from the
distance to the boundary (exact for straight edges along the pixel grid). diffvg instead averages jittered
point samples of the *un-premultiplied* colour, so its output is a random estimate of the box-filtered
straight colour; :func:`rasterize` returns that estimate's expectation under a standard independence
assumption (``U·P/A``: premultiplied colour ``P``, alpha ``A`` and union coverage ``U``), which equals
diffvg's at every interior pixel and at every edge against empty canvas or an opaque background. Gradients
come from the distances (the analytic edge ramp plays the role of diffvg's edge sampling).

How it stays fast and bounded: the canvas is cut into 4×4 tiles; each line piece is binned to the tiles its
capsule (or a fill's winding-number ray) can reach; distances are computed only for those (tile, piece)
pairs, without autograd and in chunks, and reduced to the nearest piece per (layer, pixel). Only the pixels
a layer covers are then shaded, by a ``torch.autograd.Function`` with a hand-derived backward, compositing
one depth level at a time. Memory follows the covered area, never layers × pixels × samples.
"""

from __future__ import annotations

import math

import torch

from .geometry import FILL, STROKE, Structure, flatten

__all__ = ["rasterize", "TILE"]

TILE = 4
_PIX = TILE * TILE
_HALF_DIAG = (TILE - 1) / 2 * math.sqrt(2)  # tile centre to its farthest pixel centre


# Where a pixel is sampled: its centre, nudged by a fraction of a thousandth of a pixel (exactly representable).
# Shapes at "nice" coordinates (edges at x.5) would otherwise pass exactly through sample points, where the
# fill's inside test is decided by rounding and the distance has no direction; nothing visible moves.
_SAMPLE_X, _SAMPLE_Y = 0.5 + 5 / 8192, 0.5 + 3 / 8192


def _tile_offsets(device: torch.device) -> torch.Tensor:
    """Sample-point offsets inside a tile, row-major: ``(TILE², 2)`` of ``(x, y)``."""
    k = torch.arange(_PIX, device=device)
    return torch.stack([(k % TILE).float() + _SAMPLE_X, (k // TILE).float() + _SAMPLE_Y], dim=-1)


def _distance_xy(px: torch.Tensor, py: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distance from points ``(px, py)`` to segments ``a→b`` ((n, 2) each), coordinates kept apart (fast)."""
    ax, ay = a.unbind(1)
    abx, aby = (b - a).unbind(1)
    apx, apy = px - ax, py - ay
    t = ((apx * abx).addcmul_(apy, aby) / (abx * abx).addcmul_(aby, aby).clamp_min_(1e-12)).clamp_(0, 1)
    return torch.hypot(apx.sub_(t * abx), apy.sub_(t * aby))


def _expand(counts: torch.Tensor, limit: int):
    """Ragged ranges of ``counts``, enumerated in chunks of at most ``limit`` items:
    yields (owner of each item, index within its owner's range)."""
    ends = torch.cumsum(counts, 0)
    total = int(ends[-1]) if counts.numel() else 0
    for lo in range(0, total, limit):
        item = torch.arange(lo, min(lo + limit, total), device=counts.device)
        owner = torch.searchsorted(ends, item, right=True)
        yield owner, item - (ends[owner] - counts[owner])


def _tile_range(lo: torch.Tensor, hi: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tiles whose pixel centres fall in ``[lo, hi]`` along one axis (empty when first > last)."""
    first = torch.ceil(lo - 0.5).clamp(0, size - 1).long() // TILE
    last = torch.floor(hi - 0.5).clamp(-1, size - 1).long()
    last = torch.where(hi - 0.5 < 0, -1, last // TILE)
    first = torch.where(lo - 0.5 > size - 1, last + 1, first)
    return first, last


def _pairs(a, b, r, layer, st: Structure, width: int, height: int, limit: int):
    """(tile, piece) pairs worth evaluating: near a stroke piece, or able to change a fill's winding number."""
    nx = (width + TILE - 1) // TILE
    kind = st.layer_kind[layer]
    dev = a.device
    lo, hi = torch.minimum(a, b), torch.maximum(a, b)
    tiles, pieces, near = [], [], []

    stroke = torch.nonzero(kind == STROKE).squeeze(1)
    if stroke.numel():
        margin = r[stroke] + 0.501  # a stroke reaches pixels whose centre is closer than r + 1/2
        x0, x1 = _tile_range(lo[stroke, 0] - margin, hi[stroke, 0] + margin, width)
        y0, y1 = _tile_range(lo[stroke, 1] - margin, hi[stroke, 1] + margin, height)
        w, h = (x1 - x0 + 1).clamp(min=0), (y1 - y0 + 1).clamp(min=0)
        for owner, k in _expand(w * h, limit):
            tx, ty = x0[owner] + k % w[owner], y0[owner] + k // w[owner]
            piece = stroke.index_select(0, owner)
            cx, cy = tx.to(a.dtype) * TILE + TILE / 2, ty.to(a.dtype) * TILE + TILE / 2
            near_tile = _distance_xy(cx, cy, a.index_select(0, piece), b.index_select(0, piece))
            keep = near_tile <= margin.index_select(0, owner) + _HALF_DIAG + 1e-3
            tiles.append((ty * nx + tx)[keep])
            pieces.append(piece[keep])
            near.append(torch.ones_like(piece[keep], dtype=torch.bool))

    fills = torch.nonzero(st.layer_kind == FILL).squeeze(1)
    if fills.numel():
        fill_piece = torch.nonzero(kind == FILL).squeeze(1)  # grouped by layer (flatten keeps member order)
        per_layer = torch.bincount(layer[fill_piece], minlength=st.num_layers)[fills]
        first_piece = torch.cumsum(per_layer, 0) - per_layer
        big = torch.finfo(a.dtype).max
        llo = torch.full((st.num_layers, 2), big, dtype=a.dtype, device=dev)
        lhi = torch.full((st.num_layers, 2), -big, dtype=a.dtype, device=dev)
        llo.scatter_reduce_(0, layer[fill_piece, None].expand(-1, 2), lo[fill_piece], "amin")
        lhi.scatter_reduce_(0, layer[fill_piece, None].expand(-1, 2), hi[fill_piece], "amax")
        llo, lhi = llo[fills] - 0.501, lhi[fills] + 0.501
        x0, x1 = _tile_range(llo[:, 0], lhi[:, 0], width)
        y0, y1 = _tile_range(llo[:, 1], lhi[:, 1], height)
        w, h = (x1 - x0 + 1).clamp(min=0), (y1 - y0 + 1).clamp(min=0)
        n = torch.where(per_layer > 0, w * h, 0)
        for owner, k in _expand(n * per_layer, limit):  # every tile of the layer's box × every piece of it
            tile_k, piece_k = k // per_layer[owner], k % per_layer[owner]
            tx, ty = x0[owner] + tile_k % w[owner], y0[owner] + tile_k // w[owner]
            piece = fill_piece[first_piece[owner] + piece_k]
            cx, cy = tx.to(a.dtype) * TILE + TILE / 2, ty.to(a.dtype) * TILE + TILE / 2
            close = _distance_xy(cx, cy, a[piece], b[piece]) <= 0.5 + _HALF_DIAG + 1e-3
            top, bottom = ty * TILE + _SAMPLE_Y - 1e-3, ty * TILE + TILE - 1 + _SAMPLE_Y + 1e-3
            rows = (hi[piece, 1] >= top) & (lo[piece, 1] <= bottom)
            crosses = rows & (hi[piece, 0] >= tx * TILE + _SAMPLE_X - 1e-3)  # a ray to +x from the tile hits it
            keep = close | crosses
            tiles.append((ty * nx + tx)[keep])
            pieces.append(piece[keep])
            near.append(close[keep])
    if not tiles:
        empty = torch.zeros(0, dtype=torch.long, device=dev)
        return empty, empty, empty.bool()
    return torch.cat(tiles), torch.cat(pieces), torch.cat(near)


_SHIFT = 24  # low bits of a binning key hold the piece index; the high bits the quantized score
_SCALE = float(1 << 20)


def _bin(a, b, r, layer, st: Structure, width: int, height: int, chunk: int):
    """No autograd: for every layer and pixel it reaches, the nearest piece and whether it is inside.

    Returns the *active* fragment pixels (coverage may be > 0) as ``(pixel, layer, piece, inside, levels)``:
    ``piece = -1`` where a fill has no boundary nearby; entries are grouped by their layer's rank among the
    pixel's layers (``levels[k]`` entries of rank ``k``, in that order).
    """
    nx = (width + TILE - 1) // TILE
    dev, dtype = a.device, a.dtype
    if a.shape[0] >= 1 << _SHIFT:
        raise ValueError(f"too many line pieces ({a.shape[0]}) for one render")
    pair_tile, pair_piece, pair_near = _pairs(a, b, r, layer, st, width, height, 16 * chunk)
    pair_layer = layer[pair_piece]
    keys, pair_frag = torch.unique(pair_tile * st.num_layers + pair_layer, return_inverse=True)
    frag_tile, frag_layer = keys // st.num_layers, keys % st.num_layers
    nf = keys.numel()
    offsets = _tile_offsets(dev).to(dtype)
    ox, oy = offsets[:, 0], offsets[:, 1]
    origin = torch.stack([frag_tile % nx, frag_tile // nx], -1).to(dtype) * TILE  # (F, 2)
    ab = b - a
    length2 = (ab * ab).sum(-1)
    # everything the distance needs about a piece, in one table so a chunk gathers it with one index_select
    table = torch.stack([a[:, 0], a[:, 1], ab[:, 0], ab[:, 1], 1 / length2.clamp_min(1e-12), length2], 1)
    is_fill = st.layer_kind[pair_layer] == FILL
    radius = torch.where(is_fill, 0.0, r[pair_piece])
    lowest = torch.iinfo(torch.long).min
    best = torch.full((nf * _PIX,), lowest, dtype=torch.long, device=dev)
    wind = torch.zeros(nf * _PIX, dtype=torch.int32, device=dev)
    pix = torch.arange(_PIX, device=dev)
    per = max(1, chunk // _PIX)
    fill_pairs = torch.nonzero(is_fill).squeeze(1)
    nonzero_rule = is_fill & ~st.layer_even_odd[pair_layer]
    for start in range(0, fill_pairs.numel(), per):  # winding numbers first: a fill's edges need them below
        pairs = fill_pairs[start:start + per]
        piece, pf = pair_piece[pairs], pair_frag[pairs]
        ax, ay, bx, by = a[piece, 0, None], a[piece, 1, None], b[piece, 0, None], b[piece, 1, None]
        px, py = origin[pf, 0, None] + ox, origin[pf, 1, None] + oy
        up, down = (ay <= py) & (py < by), (by <= py) & (py < ay)
        x_hit = ax + (py - ay) * (bx - ax) / torch.where(up | down, by - ay, 1.0)
        right = px < x_hit
        crossing = (up & right).int() - (down & right).int()
        wind.index_add_(0, (pf[:, None] * _PIX + pix).flatten(), crossing.flatten())
    check_edges = bool(nonzero_rule.any())
    all_near = bool(pair_near.all())
    for start in range(0, pair_piece.numel(), per):
        s = slice(start, start + per)
        pp, pf = pair_piece[s], pair_frag[s]
        # distance from each pixel centre to the piece, with the pixel offsets factored out of the products
        # (in place where possible: fresh memory for every temporary costs more than the arithmetic)
        ax, ay, abx, aby, inverse, length2 = table.index_select(0, pp).unbind(1)
        corner = origin.index_select(0, pf)
        x = (corner[:, 0] - ax)[:, None] + ox  # (c, TILE²): pixel minus piece start
        y = (corner[:, 1] - ay)[:, None] + oy
        abx, aby = abx[:, None], aby[:, None]
        edges = check_edges and bool(nonzero_rule[s].any())
        if edges:  # which side of the piece each pixel is on (needed below, before x is overwritten)
            left = (abx * y - aby * x) > 0
        dot = x * abx
        dot.addcmul_(y, aby)
        t = (dot * inverse[:, None]).clamp_(0, 1)
        d2 = x.mul_(x).addcmul_(y, y)  # |p - a|²
        d2.add_((t * length2[:, None]).sub_(dot, alpha=2).mul_(t))  # - t (2 p·ab - t |ab|²)
        score = d2.clamp_min_(0).sqrt_().neg_().add_(radius[s, None])
        key = score.mul_(_SCALE).round_().long().mul_(1 << _SHIFT).add_(pp[:, None])
        index = (pf[:, None] * _PIX + pix).flatten()
        if not all_near:
            key.masked_fill_(~pair_near[s, None], lowest)
        if edges:
            # Under the non-zero rule an edge inside the filled region (overlapping subpaths, self-crossings)
            # is no boundary: it may only anchor the anti-aliasing ramp where the winding number on its two
            # sides (they differ by one; the side left of the edge's direction is higher) changes the verdict.
            w = wind[index].view(key.shape)
            other = torch.where(left, w - 1, w + 1)
            boundary = (w != 0) != (other != 0)
            key.masked_fill_(nonzero_rule[s, None] & ~boundary, lowest)
        best.scatter_reduce_(0, index, key.flatten(), "amax")
    best, wind = best.view(nf, _PIX), wind.view(nf, _PIX)
    inside = torch.where(st.layer_even_odd[frag_layer][:, None], wind % 2 == 1, wind != 0)
    reach = best > int(-0.5 * _SCALE) * (1 << _SHIFT)  # coverage can be > 0: the distance is under r + 1/2
    fill_frag = (st.layer_kind[frag_layer] == FILL)[:, None]
    tx, ty = frag_tile % nx * TILE, frag_tile // nx * TILE
    on_canvas = (tx[:, None] + pix % TILE < width) & (ty[:, None] + pix // TILE < height)
    active = on_canvas & torch.where(fill_frag, inside | reach, reach)
    # Each pixel's layers, bottom first, numbered 0, 1, ...: rows of a tile are consecutive and in layer order,
    # so a pixel's level is the count of active rows above it within its tile. Entries are returned level by
    # level, so compositing is one vectorised step per level (every pixel appears at most once in each).
    counts = active.int().cumsum(0)
    first = torch.nonzero(torch.diff(frag_tile, prepend=frag_tile[:1] - 1)).squeeze(1)
    tile_first = torch.repeat_interleave(first, torch.diff(first, append=first.new_tensor([nf])))
    level = counts - torch.cat([counts.new_zeros(1, _PIX), counts]).index_select(0, tile_first) - 1
    flat = torch.nonzero(active.view(-1)).squeeze(1)  # entry = row * TILE² + pixel within the tile
    level, order = torch.sort(level.view(-1).index_select(0, flat))
    flat = flat.index_select(0, order)
    row, k = flat // _PIX, flat % _PIX
    levels = torch.bincount(level).tolist() if level.numel() else []
    pixel = (ty.index_select(0, row) + k // TILE) * width + tx.index_select(0, row) + k % TILE
    piece = (best.view(-1).index_select(0, flat) & ((1 << _SHIFT) - 1))
    piece = torch.where(best.view(-1).index_select(0, flat) == lowest, -1, piece)
    return pixel, frag_layer.index_select(0, row), piece, inside.view(-1).index_select(0, flat), levels


def _scatter_sum(index: torch.Tensor, values: torch.Tensor, size: int) -> torch.Tensor:
    """``out[j] = sum(values[..., i] for index[i] == j)`` per row of ``values`` ``(C, E)`` → ``(C, size)``.

    ``bincount`` with weights is one pass over the entries; ``index_add_`` into a small table of rows was
    several times slower on the CPU."""
    return torch.stack([torch.bincount(index, weights=v, minlength=size) for v in values]).to(values.dtype)


class _Shade(torch.autograd.Function):
    """Coverage of every active fragment pixel and "over" compositing per pixel, with a hand-derived backward.

    Autograd through the same maths runs ~800 small ops per render; this forward and backward are a few dozen
    vectorised ops plus a handful per depth level, which is what makes CPU rendering fast. Per-entry values
    are kept as rows of ``(C, E)`` tensors (structure of arrays): reductions over a few coordinates of
    ``(E, C)`` tensors were the slowest ops. Output ``(H*W, 5)``: premultiplied RGB, alpha, union coverage.
    """

    @staticmethod
    def forward(ctx, a, b, r, colors, kinds, pixel, layer, piece, inside, levels, width, height):
        dtype = a.dtype
        w = piece.clamp(min=0)
        ax, ay, abx, aby, rr = torch.stack([a[:, 0], a[:, 1], b[:, 0] - a[:, 0], b[:, 1] - a[:, 1], r]
                                           ).index_select(1, w).unbind(0)
        ex = (pixel % width).to(dtype).add_(_SAMPLE_X).sub_(ax)  # pixel minus piece start
        ey = (pixel // width).to(dtype).add_(_SAMPLE_Y).sub_(ay)
        t = ((ex * abx).addcmul_(ey, aby) / (abx * abx).addcmul_(aby, aby).clamp_min_(1e-12)).clamp_(0, 1)
        ex.sub_(t * abx)  # now from the closest point to the pixel centre
        ey.sub_(t * aby)
        d = torch.hypot(ex, ey)
        ux, uy = ex.div_(d.clamp_min(1e-7)), ey.div_(d.clamp_min(1e-7))  # the direction the distance grows in
        on_edge = torch.nonzero(d <= 1e-7).squeeze(1)
        if on_edge.numel():
            # A pixel centre exactly on an edge has no such direction; the crossing rule counts it as lying on
            # the edge's +x side (+y for a horizontal edge), so use the edge normal pointing there.
            nx, ny = -aby[on_edge], abx[on_edge]
            flip = torch.where(nx != 0, nx < 0, ny < 0)
            norm = torch.hypot(nx, ny).clamp_min(1e-12)
            ux[on_edge] = torch.where(flip, -nx, nx) / norm
            uy[on_edge] = torch.where(flip, -ny, ny) / norm
        band = torch.minimum(d + 0.5, rr) - torch.maximum(d - 0.5, -rr)  # a width-2r band, box-filtered
        sign = inside.to(dtype) * 2 - 1
        is_stroke = kinds.index_select(0, layer) == STROKE
        has_edge = piece >= 0
        raw = torch.where(is_stroke, band, torch.where(has_edge, 0.5 + sign * d, inside.to(dtype)))
        f = raw.clamp(0, 1)
        color = colors.t().index_select(1, layer)  # (4, E)
        alpha = color[3] * f
        n = pixel.numel()
        adds = torch.zeros(n, 5, dtype=dtype, device=a.device)  # per entry: premultiplied rgb it adds ...
        adds[:, :3] = (color[:3] * alpha).t()
        factors = torch.empty(n, 5, dtype=dtype, device=a.device)  # ... and what it lets through
        factors[:, :4] = (1 - alpha)[:, None]
        factors[:, 4] = 1 - f
        state = torch.zeros(width * height, 5, dtype=dtype, device=a.device)  # premultiplied rgb, τ_alpha, τ_f
        state[:, 3:] = 1
        below = torch.empty_like(adds)  # the composite under each layer, for the backward pass
        start = 0
        for count in levels:
            s = slice(start, start + count)
            px = pixel[s]
            current = state.index_select(0, px)
            below[s] = current
            state.index_copy_(0, px, torch.addcmul(adds[s], current, factors[s]))
            start += count
        ctx.save_for_backward(colors, pixel, layer, w, t, ux, uy, d, rr, f, raw, sign, is_stroke, has_edge,
                              below, alpha)
        ctx.levels, ctx.sizes = levels, (a.shape[0], r.shape[0])
        state[:, 3:] = 1 - state[:, 3:]
        return state

    @staticmethod
    def backward(ctx, grad):
        colors, pixel, layer, w, t, ux, uy, d, rr, f, raw, sign, is_stroke, has_edge, below, alpha = \
            ctx.saved_tensors
        # what lies above each layer: the product of the others' keep factors, accumulated from the top down
        keep = torch.stack([1 - alpha, 1 - f], 1)
        above = torch.ones(grad.shape[0], 2, dtype=grad.dtype, device=grad.device)
        transmit = torch.empty_like(keep)
        stop = pixel.numel()
        for count in reversed(ctx.levels):
            s = slice(stop - count, stop)
            px = pixel[s]
            current = above.index_select(0, px)
            transmit[s] = current
            above.index_copy_(0, px, current * keep[s])
            stop -= count
        t_alpha, t_f = transmit.t().contiguous()
        g = grad.index_select(0, pixel).t().contiguous()  # (5, E)
        under = below.t().contiguous()
        color = colors.t().index_select(1, layer)
        # d P/d alpha_i = (c_i - below_i) T_i, d A/d alpha_i = tau_below_i T_i, d U/d f_i = tau_f,below_i T_f,i
        g_alpha = t_alpha * ((g[:3] * (color[:3] - under[:3])).sum(0) + g[3] * under[3])
        grad_colors = _scatter_sum(layer, torch.cat([g[:3] * (alpha * t_alpha), (g_alpha * f)[None]]),
                                   colors.shape[0]).t()
        g_f = (g_alpha * color[3] + g[4] * under[4] * t_f) * ((raw > 0) & (raw < 1))
        # stroke band = min(d + 1/2, r) - max(d - 1/2, -r); fill ramp = 1/2 ± d
        d_band_d = (d + 0.5 < rr).to(d.dtype) - (d - 0.5 > -rr).to(d.dtype)
        d_band_r = (rr <= d + 0.5).to(d.dtype) + (-rr >= d - 0.5).to(d.dtype)
        g_d = g_f * torch.where(is_stroke, d_band_d, sign * has_edge)
        pull_x, pull_y = g_d * ux, g_d * uy  # d distance / d closest point = -u
        m, nr = ctx.sizes
        ends = _scatter_sum(w, torch.stack([(t - 1) * pull_x, (t - 1) * pull_y, -t * pull_x, -t * pull_y,
                                            g_f * d_band_r * is_stroke]), m)
        return ends[:2].t(), ends[2:4].t(), ends[4][:nr], grad_colors, None, None, None, None, None, None, None, None


def rasterize(points: torch.Tensor, widths: torch.Tensor, colors: torch.Tensor, structure: Structure,
              width: int, height: int, *, background: torch.Tensor | None = None, samples: int = 1,
              tolerance: float = 0.1, chunk: int = 1 << 16) -> torch.Tensor:
    """Render a packed scene to ``(height, width, 4)``: straight RGB and alpha, differentiable in ``points``
    (P, 2), ``widths`` (paths,) half-widths, ``colors`` (layers, 4) RGBA and ``background`` (H, W, 4).

    ``samples=s`` > 1 evaluates an s×s grid of sub-pixels, each anti-aliased over its own area, and averages
    their straight colours, as diffvg averages its samples (slower; the default 1 is the analytic estimate).
    ``chunk`` bounds the elements of every temporary in the binning pass (small chunks stay in cache; memory
    is then proportional to the area the layers cover, never to layers × canvas).
    """
    if samples > 1:
        bg = background
        if bg is not None:
            bg = bg.repeat_interleave(samples, 0).repeat_interleave(samples, 1)
        fine = rasterize(points * samples, widths * samples, colors, structure, width * samples, height * samples,
                         background=bg, tolerance=tolerance * samples, chunk=chunk)
        return fine.view(height, samples, width, samples, 4).mean((1, 3))
    if not torch.isfinite(points).all():
        raise ValueError("points must be finite")
    dev, dtype = points.device, points.dtype
    colors, widths = colors.to(device=dev, dtype=dtype), widths.to(device=dev, dtype=dtype)
    st = structure if structure.layer_kind.device == dev else structure.to(dev)
    a, b, r, layer = flatten(points, widths, st, tolerance)
    with torch.no_grad():
        pixel, frag_layer, piece, inside, levels = _bin(a.detach(), b.detach(), r.detach(), layer, st, width,
                                                        height, chunk)
    flat = _Shade.apply(a, b, r, colors, st.layer_kind, pixel, frag_layer, piece, inside, levels, width, height)
    image = flat.view(height, width, 5)
    premul, alpha, union = image[..., :3], image[..., 3:4], image[..., 4:5]
    if background is not None:
        bg = background.to(device=dev, dtype=dtype)
        if bg.shape != (height, width, 4):
            raise ValueError(f"background must be ({height}, {width}, 4), got {tuple(bg.shape)}")
        premul = premul + bg[..., :3] * (1 - alpha)
        union = torch.where(bg[..., 3:4] > 0, 1.0, union)
        alpha = alpha + bg[..., 3:4] * (1 - alpha)
    straight = torch.where(alpha > 1e-6, union * premul / alpha.clamp_min(1e-6), premul)
    return torch.cat([straight, alpha], -1)


