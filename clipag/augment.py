"""Differentiable, batched image augmentations for optimizing pixels through CLIP.

The operations are those of DiffAugment (Zhao et al. 2020) as the CLIPAG notebook uses them
(colour, translation, resize, cutout), plus the notebook's random patch crops and view noise.
Every function takes a batch ``(B, C, H, W)``, draws one set of parameters per image from an
optional ``torch.Generator`` on the batch's device, and works with tensor ops only (no Python loop
over images), so gradients flow back to the pixels and the whole pipeline stays on the GPU.
Generation (``clipag.generation``) and the framework adapters share this module.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

__all__ = ["AugmentParams", "DiffAugment", "POLICIES", "brightness", "saturation", "contrast", "translate", "rescale",
           "cutout", "random_crops", "random_windows", "perspective_corners", "random_perspective", "add_noise",
           "resize_to", "adjust_hue"]


def _uniform(x: torch.Tensor, low: float, high: float, generator: torch.Generator | None,
             shape: Sequence[int] | None = None) -> torch.Tensor:
    shape = (x.shape[0], 1, 1, 1) if shape is None else tuple(shape)
    u = torch.rand(shape, generator=generator, device=x.device, dtype=torch.float32)
    return (u * (high - low) + low).to(x.dtype)


def _randint(low: int, high: int, n: int, device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    """Integers in ``[low, high]`` inclusive, one per image."""
    return torch.randint(low, high + 1, (n,), generator=generator, device=device)


def brightness(x: torch.Tensor, amount: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """``x + U(-amount, amount)`` per image (DiffAugment: ±0.5)."""
    return x + _uniform(x, -amount, amount, generator)


def saturation(x: torch.Tensor, low: float = 0.0, high: float = 2.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Scale each pixel's deviation from its channel mean by ``U(low, high)`` per image (0 = grey)."""
    grey = x.mean(dim=1, keepdim=True)
    return (x - grey) * _uniform(x, low, high, generator) + grey


def contrast(x: torch.Tensor, low: float = 0.5, high: float = 1.5,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Scale each image's deviation from its global mean by ``U(low, high)``."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * _uniform(x, low, high, generator) + mean


def _shift(n: int, ratio: float) -> int:
    return int(n * ratio + 0.5)


def translate(x: torch.Tensor, ratio: float = 0.125, generator: torch.Generator | None = None) -> torch.Tensor:
    """Shift each image by whole pixels, up to ``ratio`` of its size each way, filling with zeros.

    Integer shifts are an exact gather (no interpolation blur), as in DiffAugment.
    """
    b, c, h, w = x.shape
    dy = _randint(-_shift(h, ratio), _shift(h, ratio), b, x.device, generator)
    dx = _randint(-_shift(w, ratio), _shift(w, ratio), b, x.device, generator)
    rows = torch.arange(h, device=x.device) + dy[:, None]  # (B, H): source row of each output row
    cols = torch.arange(w, device=x.device) + dx[:, None]
    out = x.gather(2, rows.clamp(0, h - 1)[:, None, :, None].expand(b, c, h, w))
    out = out.gather(3, cols.clamp(0, w - 1)[:, None, None, :].expand(b, c, h, w))
    inside = ((rows >= 0) & (rows < h))[:, None, :, None] & ((cols >= 0) & (cols < w))[:, None, None, :]
    return out * inside.to(out.dtype)


def _norm_coords(src: torch.Tensor, n: int) -> torch.Tensor:
    """Pixel coordinates (pixel centres at 0..n-1) to grid_sample's [-1, 1] (align_corners=False)."""
    return (2 * src + 1) / n - 1


def _sample(x: torch.Tensor, src_rows: torch.Tensor, src_cols: torch.Tensor) -> torch.Tensor:
    """Bilinear sample a separable grid: ``out[b, :, i, j] = x[b, :, src_rows[b, i], src_cols[b, j]]``."""
    b, h_out, w_out = src_rows.shape[0], src_rows.shape[1], src_cols.shape[1]
    gy = _norm_coords(src_rows, x.shape[2])[:, :, None].expand(b, h_out, w_out)
    gx = _norm_coords(src_cols, x.shape[3])[:, None, :].expand(b, h_out, w_out)
    grid = torch.stack((gx, gy), dim=-1).to(x.dtype)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _scaled_axis(n: int, ratio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Source coordinates and validity for resizing an axis of ``n`` pixels by ``ratio`` (B,) then padding or
    centre-cropping back to ``n`` — the same integer sizes and offsets as ``F.interpolate`` + pad/crop."""
    new = (ratio * n).to(torch.int64).clamp(min=1)  # (B,)
    offset = torch.where(new < n, (n - new) // 2, -((new - n) // 2))  # where resized pixel 0 lands
    j = torch.arange(n, device=ratio.device)
    k = j[None, :] - offset[:, None]  # index into the resized axis
    valid = (k >= 0) & (k < new[:, None])
    src = ((k + 0.5) * (n / new[:, None]) - 0.5).clamp(0, n - 1)
    return src.float(), valid


def rescale(x: torch.Tensor, low: float = 0.8, high: float = 1.2, per_image: bool = False,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """Zoom by ``U(low, high)`` about the centre, zero-padding (zoom out) or cropping (zoom in) back to size.

    ``per_image=False`` draws one ratio for the whole batch, as the notebook does; ``True`` draws one per image.
    """
    b, _, h, w = x.shape
    ratio = _uniform(x, low, high, generator, shape=(b if per_image else 1,)).float().expand(b)
    rows, row_ok = _scaled_axis(h, ratio)
    cols, col_ok = _scaled_axis(w, ratio)
    out = _sample(x, rows, cols)
    return out * (row_ok[:, None, :, None] & col_ok[:, None, None, :]).to(out.dtype)


def cutout(x: torch.Tensor, ratio: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero a square of ``ratio`` of the side per image, centred anywhere (it may hang over the edge)."""
    b, _, h, w = x.shape
    sh, sw = _shift(h, ratio), _shift(w, ratio)
    cy = _randint(0, h - sh % 2, b, x.device, generator)  # DiffAugment's range for the centre
    cx = _randint(0, w - sw % 2, b, x.device, generator)
    rows = torch.arange(h, device=x.device)[None, :] - (cy - sh // 2)[:, None]
    cols = torch.arange(w, device=x.device)[None, :] - (cx - sw // 2)[:, None]
    hole = ((rows >= 0) & (rows < sh))[:, :, None] & ((cols >= 0) & (cols < sw))[:, None, :]
    return x * (~hole)[:, None].to(x.dtype)


def random_crops(x: torch.Tensor, crop: int, out: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """One random ``crop``×``crop`` window per image, bilinearly resized to ``out``×``out``.

    Equals torchvision's ``RandomCrop(crop)`` then ``Resize(out)`` applied image by image (the notebook's
    patch views), as one ``grid_sample``.
    """
    b, _, h, w = x.shape
    if not 0 < crop <= min(h, w):
        raise ValueError(f"crop size {crop} must be in 1..{min(h, w)} for {h}x{w} images")
    top = _randint(0, h - crop, b, x.device, generator)
    left = _randint(0, w - crop, b, x.device, generator)
    k = torch.arange(out, device=x.device, dtype=torch.float32)
    inner = ((k + 0.5) * (crop / out) - 0.5).clamp(0, crop - 1)  # F.interpolate's source coords within the crop
    return _sample(x, top[:, None] + inner[None, :], left[:, None] + inner[None, :])


def random_windows(image: torch.Tensor, n: int, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` random ``size``×``size`` windows of ONE image ``(1, C, H, W)``, as ``(n, C, size, size)``.

    The same windows as torchvision's ``RandomCrop(size)`` called ``n`` times (CLIPStyler's patch loop), cut by
    one gather. Its backward scatters into the single image; cropping an ``expand``-ed batch instead would
    build ``n`` full-size gradients and sum them.
    """
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(f"random_windows takes one image (1, C, H, W), got {tuple(image.shape)}")
    _, _, h, w = image.shape
    if not 0 < size <= min(h, w):
        raise ValueError(f"window size {size} must be in 1..{min(h, w)} for {h}x{w} images")
    k = torch.arange(size, device=image.device)
    rows = _randint(0, h - size, n, image.device, generator)[:, None] + k  # (n, size)
    cols = _randint(0, w - size, n, image.device, generator)[:, None] + k
    return image[0][:, rows[:, :, None], cols[:, None, :]].transpose(0, 1)


def perspective_corners(n: int, height: int, width: int, distortion_scale: float = 0.5,
                        generator: torch.Generator | None = None,
                        device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Random ``(start, end)`` corner sets ``(n, 4, 2)`` for a perspective warp: each corner moves inwards by
    ``U(0, distortion_scale·side/2)`` along each axis, the distribution of torchvision's and kornia's
    ``RandomPerspective`` (kornia's ``sampling_method="basic"``; torchvision draws whole pixels)."""
    start = torch.tensor([[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]],
                         dtype=torch.float32, device=device).expand(n, 4, 2)
    inwards = torch.tensor([[1, 1], [-1, 1], [-1, -1], [1, -1]], dtype=torch.float32, device=device)
    extent = torch.tensor([width, height], dtype=torch.float32, device=device) * (distortion_scale / 2)
    offset = torch.rand(n, 4, 2, generator=generator, device=device) * extent * inwards
    return start, start + offset


def random_perspective(x: torch.Tensor, distortion_scale: float = 0.5,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """``RandomPerspective(distortion_scale, p=1, fill=0)`` with its own parameters per image, batched:
    kornia's homography and bilinear warp (zeros outside), corners from ``generator`` (:func:`perspective_corners`).
    Needs kornia (the ``[clipdraw]``, ``[clipstyler]`` and ``[vqgan-clip]`` extras bring it)."""
    from .extras import import_module

    kornia_transform = import_module("kornia.geometry.transform", "clipstyler", "batched perspective crops")

    b, _, h, w = x.shape
    start, end = perspective_corners(b, h, w, distortion_scale, generator, x.device)
    transform = kornia_transform.get_perspective_transform(start, end).to(x.dtype)
    return kornia_transform.warp_perspective(x, transform, (h, w), mode="bilinear", padding_mode="zeros",
                                             align_corners=False)


def add_noise(x: torch.Tensor, std: float, shared: bool = False,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Add ``N(0, std²)`` pixel noise: a fresh map per image, or one map for the batch (``shared=True``)."""
    if std <= 0:
        return x
    shape = (1, *x.shape[1:]) if shared else x.shape
    noise = torch.randn(shape, generator=generator, device=x.device, dtype=torch.float32)
    return x + (noise * std).to(x.dtype)


def adjust_hue(x: torch.Tensor, radians: torch.Tensor | float, eps: float = 1e-8) -> torch.Tensor:
    """kornia's ``enhance.adjust_hue`` (RGB → HSV, hue + ``radians``, → RGB) in closed form.

    The same function (values and input gradients agree to ~1e-6) in a few batched ops: with
    ``v = max``, ``v·s = (max − min)·max/(max + eps)`` and the hue in sextants ``h6``, each channel is
    ``v − v·s·clamp(min(k, 4 − k), 0, 1)`` with ``k = (n + h6) mod 6``, n = 5, 3, 1 for R, G, B. kornia's
    HSV round trip selects among six cases with chains of ``where``; on a CPU its backward costs about twice
    this. ``radians`` is one value or one per image.
    """
    maxc, minc = x.amax(1), x.amin(1)
    delta = maxc - minc
    v_s = delta * maxc / torch.where(maxc == 0, torch.ones_like(maxc), maxc + eps)
    safe = torch.where(delta == 0, torch.ones_like(delta), delta)
    r, g, b = x.unbind(1)
    sextant = torch.where((r >= g) & (r >= b), g - b, torch.where(g >= b, (b - r) + 2 * safe, (r - g) + 4 * safe))
    shift = radians.reshape(-1, 1, 1) if torch.is_tensor(radians) else radians
    h6 = torch.remainder(sextant / safe + shift * (3 / math.pi), 6.0)
    offsets = torch.tensor([5.0, 3.0, 1.0], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    k = torch.remainder(offsets + h6.unsqueeze(1), 6.0)
    return maxc.unsqueeze(1) - v_s.unsqueeze(1) * torch.minimum(k, 4 - k).clamp(0, 1)


def resize_to(x: torch.Tensor, size: int) -> torch.Tensor:
    """Antialiased, differentiable resize to ``size``×``size`` (identity when already that size)."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


POLICIES: dict[str, tuple[str, ...]] = {
    "color": ("brightness", "saturation", "contrast"),
    "translation": ("translation",),
    "resize": ("resize",),
    "cutout": ("cutout",),
}


@dataclass
class AugmentParams:
    """DiffAugment's ranges, with the notebook's values. ``clipag.generation.GenerateConfig`` inherits them,
    so they stay flat knobs there (``generate(p, brightness=0.3)``, ``--set cutout=0``)."""

    policy: str = "color,translation,resize,cutout"
    brightness: float = 0.5
    saturation: tuple[float, float] = (0.0, 2.0)
    contrast: tuple[float, float] = (0.5, 1.5)
    translation: float = 0.125
    resize: tuple[float, float] = (0.8, 1.2)
    resize_per_image: bool = False
    cutout: float = 0.5

    def augmenter(self) -> DiffAugment:
        """The augmentation chain these parameters describe."""
        return DiffAugment(**{f.name: getattr(self, f.name) for f in fields(AugmentParams)})


@dataclass
class DiffAugment(AugmentParams):
    """The DiffAugment chain with the notebook's ranges; call it on a batch: ``aug(x, generator)``.

    ``policy`` is a comma-separated subset of ``color,translation,resize,cutout``, applied in that order
    within the string. Each image gets its own parameters, except the resize ratio when
    ``resize_per_image`` is False (the notebook draws one ratio per batch).
    """

    def __post_init__(self) -> None:
        unknown = [p for p in self.names() if p not in POLICIES]
        if unknown:
            raise ValueError(f"unknown augmentation policy {unknown}; choose from {sorted(POLICIES)}")

    def names(self) -> list[str]:
        return [p.strip() for p in self.policy.split(",") if p.strip()]

    def _ops(self) -> list[Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]]:
        table: dict[str, Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]] = {
            "brightness": lambda x, g: brightness(x, self.brightness, g),
            "saturation": lambda x, g: saturation(x, *self.saturation, generator=g),
            "contrast": lambda x, g: contrast(x, *self.contrast, generator=g),
            "translation": lambda x, g: translate(x, self.translation, g),
            "resize": lambda x, g: rescale(x, *self.resize, per_image=self.resize_per_image, generator=g),
            "cutout": lambda x, g: cutout(x, self.cutout, g),
        }
        return [table[op] for name in self.names() for op in POLICIES[name]]

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        for op in self._ops():
            x = op(x, generator)
        return x
