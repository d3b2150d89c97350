"""A synthetic captioned, labelled image source: smoke tests and CPU-sized experiments need no download.

Each class is a fixed, smooth random colour layout; a sample jitters it (shift, brightness, noise). The
task is easy to learn at 32 px yet, like natural images, a clean-trained model is fooled by small
perturbations, so clean pretraining and adversarial finetuning both show measurable effects in seconds.
Everything is a pure function of (seed, index): any sample can be regenerated, which makes resuming exact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["SyntheticImages", "CLASSNAMES", "EVAL_INDEX_OFFSET"]

CLASSNAMES = ("apple", "boat", "car", "dog", "house", "tree", "bird", "chair", "fish", "flower", "guitar", "horse",
              "lamp", "moon", "piano", "rocket", "shoe", "train", "umbrella", "whale")
EVAL_INDEX_OFFSET = 1 << 40  # evaluation draws indices here, disjoint from any training index


class SyntheticImages:
    """``item(index) -> (pixels in [0,1] of shape 3×S×S, caption, label)``; the class is ``index % classes``."""

    def __init__(self, num_classes: int = 10, image_size: int = 32, seed: int = 0,
                 template: str = "a photo of a {}.") -> None:
        if not 2 <= num_classes <= len(CLASSNAMES):
            raise ValueError(f"synthetic classes must be in [2, {len(CLASSNAMES)}], got {num_classes}")
        self.classnames = list(CLASSNAMES[:num_classes])
        self.image_size, self.seed, self.template = image_size, seed, template
        layouts = torch.rand(num_classes, 3, 4, 4, generator=torch.Generator().manual_seed(seed))
        self.patterns = F.interpolate(layouts, size=(image_size, image_size), mode="bilinear", align_corners=False)

    def __len__(self) -> int:
        return len(self.classnames)

    def item(self, index: int) -> tuple[torch.Tensor, str, int]:
        label = index % len(self.classnames)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        shift = self.image_size // 8
        dy, dx = (int(v) for v in torch.randint(-shift, shift + 1, (2,), generator=g))
        image = torch.roll(self.patterns[label], shifts=(dy, dx), dims=(1, 2))
        image = image * (0.8 + 0.4 * torch.rand(1, generator=g)) + 0.05 * torch.randn(image.shape, generator=g)
        return image.clamp(0, 1), self.template.format(self.classnames[label]), label
