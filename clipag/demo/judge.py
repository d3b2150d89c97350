"""An independent judge for generated images: a small CNN that never saw CLIP.

It is trained on the procedural shapes plus a reject class ("none": flat colours, noise, empty
backgrounds), so a blank or noisy generation cannot land in a shape class and inflate a score.
Images are judged at a fixed low resolution after an area (box) downsample, which averages away the
pixel-level texture an attack on CLIP leaves, keeping only what a person would see.
"""

from __future__ import annotations

import random

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from .shapes import BACKGROUNDS, CLASSES, random_sample

__all__ = ["Judge", "train_judge", "prepare", "nuisance_images", "render_pool", "JUDGE_SIZE", "NONE"]

JUDGE_SIZE = 32
NONE = len(CLASSES)  # the reject class


class Judge(nn.Module):
    def __init__(self, num_classes: int = len(CLASSES) + 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(24, 48, 3, padding=1), nn.BatchNorm2d(48), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(48, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(64, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(prepare(images)).flatten(1))

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Class indices; ``len(CLASSES)`` means "no recognisable shape"."""
        self.eval()
        return self(images).argmax(-1)


def prepare(images: torch.Tensor) -> torch.Tensor:
    """[0,1] images of any size → box-downsampled to JUDGE_SIZE and centred."""
    if images.shape[-1] != JUDGE_SIZE:
        images = F.interpolate(images, size=(JUDGE_SIZE, JUDGE_SIZE), mode="area")
    return images * 2 - 1


def nuisance_images(count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Flat colours, Gaussian and uniform noise, and empty backgrounds: what a failed generation looks like."""
    kind = torch.randint(0, 4, (count,), generator=generator)
    flat = torch.rand(count, 3, 1, 1, generator=generator).expand(count, 3, size, size)
    spread = torch.rand(count, 1, 1, 1, generator=generator)
    gaussian = (0.5 + torch.randn(count, 3, size, size, generator=generator) * spread).clamp(0, 1)
    uniform = torch.rand(count, 3, size, size, generator=generator)
    palette = torch.tensor(list(BACKGROUNDS.values()), dtype=torch.float32) / 255
    background = palette[torch.randint(0, len(palette), (count,), generator=generator)][:, :, None, None]
    background = (background + 0.02 * torch.randn(count, 3, size, size, generator=generator)).clamp(0, 1)
    choices = torch.stack([flat, gaussian, uniform, background])
    return choices[kind, torch.arange(count)]


def render_pool(count: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` rendered shapes as a [0,1] tensor with their class indices."""
    rng = random.Random(seed)
    images, labels = [], []
    for _ in range(count):
        image, _, index = random_sample(size, rng)
        images.append(torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1))
        labels.append(index)
    return torch.stack(images), torch.tensor(labels)


def train_judge(steps: int = 400, batch: int = 64, size: int = 32, pool: int = 6000, seed: int = 0,
                progress: bool = True) -> Judge:
    """Train on a pool of rendered shapes (seeded apart from the CLIP data) plus fresh reject-class images."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    shapes, labels = render_pool(pool, size, seed + 1000)
    judge = Judge()
    optimizer = torch.optim.AdamW(judge.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
    n_none = batch // (len(CLASSES) + 1) + 1
    judge.train()
    for _ in tqdm(range(steps), desc="judge", disable=not progress):
        pick = torch.randint(0, pool, (batch - n_none,), generator=generator)
        images = torch.cat([shapes[pick], nuisance_images(n_none, size, generator)])
        targets = torch.cat([labels[pick], torch.full((n_none,), NONE)])
        loss = F.cross_entropy(judge(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return judge.eval()
