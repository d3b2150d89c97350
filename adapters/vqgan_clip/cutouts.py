"""VQGAN-CLIP's "latest" cutouts: the whole image pooled to CLIP's input size, augmented ``cutn`` ways.

Each cutout is the mean of an adaptive average pool and an adaptive max pool of the image, followed by
kornia augmentations (per-cutout random parameters, one batched call each, on the image's device) and
per-cutout-scaled Gaussian noise. VQGAN-CLIP pools the same image once per cutout in a Python loop; the pooled
image is identical every time, so here it is pooled once and expanded. The augmentation codes and their
settings are VQGAN-CLIP's (``-aug``), so the random draws happen in the same order as there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AUGMENTS", "DEFAULT_AUGMENTS", "Cutouts", "make_augment"]

DEFAULT_AUGMENTS = ("Af", "Pe", "Ji", "Er")


def _kornia() -> object:
    from clipag.extras import import_module

    return import_module("kornia.augmentation", "vqgan-clip", "VQGAN+CLIP")


# VQGAN-CLIP's -aug codes → the kornia augmentation it builds (cut = CLIP's input size).
AUGMENTS: dict[str, tuple[str, Callable[[object, int], nn.Module]]] = {
    "Ji": ("colour jitter", lambda K, cut: K.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.1, p=0.7)),
    "Sh": ("sharpness", lambda K, cut: K.RandomSharpness(sharpness=0.3, p=0.5)),
    "Gn": ("Gaussian noise", lambda K, cut: K.RandomGaussianNoise(mean=0.0, std=1.0, p=0.5)),
    "Pe": ("perspective", lambda K, cut: K.RandomPerspective(distortion_scale=0.7, p=0.7)),
    "Ro": ("rotation", lambda K, cut: K.RandomRotation(degrees=15, p=0.7)),
    "Af": ("affine", lambda K, cut: K.RandomAffine(degrees=15, translate=0.1, shear=5, p=0.7, padding_mode="zeros",
                                                   keepdim=True)),
    "Et": ("elastic", lambda K, cut: K.RandomElasticTransform(p=0.7)),
    "Ts": ("thin-plate spline", lambda K, cut: K.RandomThinPlateSpline(scale=0.8, same_on_batch=True, p=0.7)),
    "Cr": ("crop", lambda K, cut: K.RandomCrop(size=(cut, cut), pad_if_needed=True, padding_mode="reflect", p=0.5)),
    "Er": ("erasing", lambda K, cut: K.RandomErasing(scale=(0.1, 0.4), ratio=(0.3, 1 / 0.3), same_on_batch=True,
                                                     p=0.7)),
    "Re": ("resized crop", lambda K, cut: K.RandomResizedCrop(size=(cut, cut), scale=(0.1, 1), ratio=(0.75, 1.333),
                                                              cropping_mode="resample", p=0.5)),
}


def make_augment(code: str, cut_size: int) -> nn.Module:
    if code not in AUGMENTS:
        known = ", ".join(f"{k} ({v[0]})" for k, v in AUGMENTS.items())
        raise ValueError(f"unknown augmentation {code!r}; choose from {known}")
    return AUGMENTS[code][1](_kornia(), cut_size)


def _use_closed_form_hue(augs: nn.Module) -> int:
    """Point kornia ColorJitters' hue step at :func:`clipag.augment.adjust_hue` (the same function, cheaper).

    kornia keeps the step as the ``_hue_fn`` attribute (its own ``compile()`` swaps it the same way); parameter
    sampling and the order of the colour steps stay kornia's. Returns how many were switched.
    """
    from kornia.enhance import adjust_hue as kornia_adjust_hue

    from clipag.augment import adjust_hue

    switched = 0
    for module in augs.modules():
        if getattr(module, "_hue_fn", None) is kornia_adjust_hue:
            module._hue_fn = adjust_hue
            switched += 1
    return switched


class Cutouts(nn.Module):
    """``(1, 3, H, W)`` image in [0, 1] → ``(cutn, 3, cut_size, cut_size)`` augmented, noisy views."""

    def __init__(self, cut_size: int, cutn: int = 32, augments: Sequence[str] = DEFAULT_AUGMENTS,
                 noise_fac: float = 0.1, fast_hue: bool = True) -> None:
        super().__init__()
        if cutn < 1:
            raise ValueError(f"cutn must be at least 1, got {cutn}")
        self.cut_size, self.cutn, self.noise_fac = cut_size, cutn, noise_fac
        self.augs = nn.Sequential(*(make_augment(code, cut_size) for code in augments))
        if fast_hue:
            _use_closed_form_hue(self.augs)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        size = (self.cut_size, self.cut_size)
        pooled = (F.adaptive_avg_pool2d(image, size) + F.adaptive_max_pool2d(image, size)) / 2
        copies = pooled.expand(self.cutn, -1, -1, -1) if image.shape[0] == 1 else pooled.repeat(self.cutn, 1, 1, 1)
        batch = self.augs(copies)
        if self.noise_fac:
            facs = batch.new_empty([batch.shape[0], 1, 1, 1]).uniform_(0, self.noise_fac)
            batch = batch + facs * torch.randn_like(batch)
        return batch
