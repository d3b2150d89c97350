"""Vector scenes packed into a few tensors, and their Bézier segments flattened to line pieces.

A scene is paths (diffvg's layout: ``points`` ``(n, 2)`` in pixels, ``num_control_points`` per segment, 0 =
line, 1 = quadratic, 2 = cubic; a closed path's last segment ends at its first point) and *layers* drawn in
order, each the stroke or the fill of a set of paths with one RGBA colour. :class:`Structure` holds the
integer bookkeeping, built once per topology; the float parameters (points, half-widths, colours) stay
separate tensors so an optimizer can own them.

Every segment becomes a cubic (lines and quadratics are degree-elevated exactly) and is cut into ``K``
equal-parameter line pieces, with ``K`` chosen from the segment's flatness so the polyline stays within
``tolerance`` pixels of the curve: a cubic's chord error over a parameter step ``h`` is at most
``max|B''| h² / 8`` and ``max|B''| <= 6 max|P_i - 2P_{i+1} + P_{i+2}|``. Distances to the polyline are then
distances to the curve within that tolerance, and the pieces are differentiable in the control points.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["Structure", "build_structure", "flatten", "STROKE", "FILL"]

STROKE, FILL = 0, 1

# Rows: cubic control points C0..C3 as combinations of the segment's first four points.
_TO_CUBIC = torch.tensor([
    [[1, 0, 0, 0], [2 / 3, 1 / 3, 0, 0], [1 / 3, 2 / 3, 0, 0], [0, 1, 0, 0]],  # line P0 P1
    [[1, 0, 0, 0], [1 / 3, 2 / 3, 0, 0], [0, 2 / 3, 1 / 3, 0], [0, 0, 1, 0]],  # quadratic P0 P1 P2
    [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]],  # cubic
], dtype=torch.float64)


@dataclass
class Structure:
    """The integer side of a scene (no gradients); tensors live on ``device``.

    ``segment_points[s]``: indices into the packed points of segment ``s``'s (up to) four points;
    ``segment_type[s]``: 0/1/2 control points; ``segment_path[s]``: its path. Layers are in drawing order:
    ``layer_kind`` (STROKE/FILL), ``layer_even_odd`` (fill rule) and ``layer_scale`` (the uniform scale of
    the layer's shape-to-canvas transform, which scales stroke widths as diffvg does); ``member_layer`` /
    ``member_segment`` list which segments each layer draws.
    """

    num_points: int
    num_paths: int
    segment_points: torch.Tensor
    segment_type: torch.Tensor
    segment_path: torch.Tensor
    layer_kind: torch.Tensor
    layer_even_odd: torch.Tensor
    member_layer: torch.Tensor
    member_segment: torch.Tensor
    layer_transform: torch.Tensor | None  # (L, 2, 3) canvas = A @ p + t, or None when all are identity
    layer_scale: torch.Tensor | None  # (L,)

    @property
    def num_layers(self) -> int:
        return int(self.layer_kind.numel())

    def to(self, device: torch.device | str) -> Structure:
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in vars(self).items()}
        return Structure(**moved)


def build_structure(num_control_points: Sequence[Sequence[int] | torch.Tensor], closed: Sequence[bool],
                    layers: Sequence[tuple[int, Sequence[int], bool]],
                    transforms: Sequence[torch.Tensor | None] | None = None,
                    device: torch.device | str = "cpu") -> Structure:
    """Pack paths and layers. ``layers``: ``(kind, path_ids, even_odd)`` in drawing order;
    ``transforms``: one 3×3 shape-to-canvas matrix (or None) per layer. Raises ValueError on bad input."""
    counts, seg_types, seg_first, seg_path = [], [], [], []
    offset = 0
    for p, (ncp, is_closed) in enumerate(zip(num_control_points, closed, strict=True)):
        ncp = [int(v) for v in (ncp.tolist() if isinstance(ncp, torch.Tensor) else ncp)]
        if not ncp:
            raise ValueError(f"path {p} has no segments")
        if any(v not in (0, 1, 2) for v in ncp):
            raise ValueError(f"path {p}: num_control_points must be 0, 1 or 2 per segment, got {sorted(set(ncp))}")
        n = sum(v + 1 for v in ncp) + (0 if is_closed else 1)
        first = 0
        for v in ncp:
            seg_types.append(v)
            seg_first.append((offset, first, n))
            seg_path.append(p)
            first += v + 1
        counts.append(n)
        offset += n
    types = torch.tensor(seg_types, dtype=torch.long)
    base = torch.tensor([s[0] for s in seg_first], dtype=torch.long)
    local = torch.tensor([s[1] for s in seg_first], dtype=torch.long)
    length = torch.tensor([s[2] for s in seg_first], dtype=torch.long)
    # (local + k) wraps around, so a closed path's last segment ends at the path's first point; the unused
    # slots of lines and quadratics get weight 0 in _TO_CUBIC but still need a valid index.
    index = base[:, None] + (local[:, None] + torch.arange(4)) % length[:, None]
    seg_path_t = torch.tensor(seg_path, dtype=torch.long)
    first_segment = torch.tensor([0, *torch.bincount(seg_path_t, minlength=len(counts)).cumsum(0).tolist()])

    kinds, even_odd, member_layer, member_segment = [], [], [], []
    for layer, (kind, path_ids, rule) in enumerate(layers):
        kinds.append(kind)
        even_odd.append(bool(rule))
        for pid in path_ids:
            pid = int(pid)
            if not 0 <= pid < len(counts):
                raise ValueError(f"layer {layer} refers to shape {pid}, but there are {len(counts)} shapes")
            segs = range(int(first_segment[pid]), int(first_segment[pid + 1]))
            member_layer += [layer] * len(segs)
            member_segment += list(segs)
    transform, scale = _layer_transforms(transforms, len(kinds))
    return Structure(
        num_points=offset, num_paths=len(counts), segment_points=index, segment_type=types,
        segment_path=seg_path_t, layer_kind=torch.tensor(kinds, dtype=torch.long),
        layer_even_odd=torch.tensor(even_odd, dtype=torch.bool),
        member_layer=torch.tensor(member_layer, dtype=torch.long),
        member_segment=torch.tensor(member_segment, dtype=torch.long),
        layer_transform=transform, layer_scale=scale).to(device)


def _layer_transforms(transforms: Sequence[torch.Tensor | None] | None,
                      num_layers: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Similarity transforms only: a distance in shape space is then a scaled distance on the canvas."""
    if transforms is None or all(t is None or torch.equal(torch.as_tensor(t, dtype=torch.float64).cpu(),
                                                          torch.eye(3, dtype=torch.float64))
                                 for t in transforms):
        return None, None
    mats, scales = [], []
    for t in transforms:
        m = torch.eye(3, dtype=torch.float64) if t is None else torch.as_tensor(t).detach().double().cpu()
        if m.shape != (3, 3) or not torch.allclose(m[2], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)):
            raise NotImplementedError("shape_to_canvas must be an affine 3x3 matrix (last row 0 0 1)")
        a = m[:2, :2]
        s2 = (a.T @ a).diagonal().mean()
        if not torch.allclose(a.T @ a, s2 * torch.eye(2, dtype=torch.float64), atol=1e-6 * max(1.0, float(s2))):
            raise NotImplementedError("shape_to_canvas with shear or unequal scales is not supported by clipag's "
                                      "rasterizer (only rotation, uniform scale and translation)")
        mats.append(m[:2])
        scales.append(float(s2.sqrt()))
    return torch.stack(mats).float(), torch.tensor(scales)


def _bernstein(t: torch.Tensor) -> torch.Tensor:
    s = 1 - t
    return torch.stack([s * s * s, 3 * t * s * s, 3 * t * t * s, t * t * t], dim=-1)


def flatten(points: torch.Tensor, widths: torch.Tensor, structure: Structure, tolerance: float = 0.1,
            max_pieces: int = 256) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Line pieces of every layer: ``(a, b, r, layer)`` with ``a, b`` (M, 2) canvas-space end points, ``r`` (M,)
    the stroke half-width (scaled by the layer's transform) and ``layer`` (M,). Differentiable in ``points``
    and ``widths``."""
    st = structure
    mix = _TO_CUBIC.to(device=points.device, dtype=points.dtype)[st.segment_type]  # (S, 4, 4)
    cubic = mix @ points[st.segment_points]  # (S, 4, 2)
    with torch.no_grad():
        c = cubic.detach()
        second = torch.maximum((c[:, 0] - 2 * c[:, 1] + c[:, 2]).norm(dim=-1),
                               (c[:, 1] - 2 * c[:, 2] + c[:, 3]).norm(dim=-1))
        pieces = torch.sqrt(6 * second / (8 * tolerance)).ceil().clamp(1, max_pieces).long()
        pieces = torch.where(st.segment_type == 0, torch.ones_like(pieces), pieces)
        per_member = pieces[st.member_segment]
        owner = torch.repeat_interleave(torch.arange(per_member.numel(), device=points.device), per_member)
        start = torch.cumsum(per_member, 0) - per_member
        j = torch.arange(owner.numel(), device=points.device) - start[owner]
        seg = st.member_segment[owner]
        k = pieces[seg].to(points.dtype)
        w0, w1 = _bernstein(j / k), _bernstein((j + 1) / k)  # (M, 4)
    ctrl = cubic[seg]  # (M, 4, 2)
    a = (w0[:, :, None] * ctrl).sum(1)
    b = (w1[:, :, None] * ctrl).sum(1)
    layer = st.member_layer[owner]
    r = widths[st.segment_path[seg]]
    if st.layer_transform is not None:
        m = st.layer_transform.to(device=points.device, dtype=points.dtype)[layer]  # (M, 2, 3)
        a = (m[:, :, :2] @ a[:, :, None]).squeeze(-1) + m[:, :, 2]
        b = (m[:, :, :2] @ b[:, :, None]).squeeze(-1) + m[:, :, 2]
        r = r * st.layer_scale.to(device=points.device, dtype=points.dtype)[layer]
    return a, b, r, layer
