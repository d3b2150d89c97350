"""An independent judge for generated images: small CNNs that never saw CLIP.

They are trained on the procedural shapes plus a reject class ("none": flat colours, noise, empty
backgrounds), so a blank or noisy generation cannot land in a shape class and inflate a score.

Images are judged after an area (box) downsample to 16 px, which averages away the pixel-level texture an
attack on CLIP leaves and keeps what a person sees from a distance: colour and coarse shape. Measured on
the same generations, 32 px judges trained with different seeds disagreed wildly on them (one scored every
model 20–40 points lower than another), while 16 px judges agreed within ~10 points; the judge is an
ensemble of a few such CNNs (mean of their probabilities) to shrink that spread further.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .shapes import BACKGROUNDS, CLASSES, render_pool

__all__ = ["Judge", "JudgeEnsemble", "train_judge", "prepare", "nuisance_images", "JUDGE_SIZE", "NONE"]

JUDGE_SIZE = 16
NONE = len(CLASSES)  # the reject class


class Judge(nn.Module):
    """Three conv blocks on a 16 px image; 12 shape classes + "none"."""

    def __init__(self, num_classes: int = len(CLASSES) + 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(64, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(prepare(images)).flatten(1))


class JudgeEnsemble(nn.Module):
    """Members vote by averaging their class probabilities."""

    def __init__(self, members: list[Judge]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        self.eval()
        return torch.stack([m(images).softmax(-1) for m in self.members]).mean(0)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Class indices; ``NONE`` (= ``len(CLASSES)``) means "no recognisable shape"."""
        return self.probabilities(images).argmax(-1)

    def forced_choice(self, images: torch.Tensor) -> torch.Tensor:
        """The most likely of the 12 shape classes, the reject class ignored."""
        return self.probabilities(images)[:, :NONE].argmax(-1)


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


def _train_one(shapes: torch.Tensor, labels: torch.Tensor, steps: int, batch: int, seed: int) -> Judge:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    judge = Judge()
    optimizer = torch.optim.AdamW(judge.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
    n_none = batch // (len(CLASSES) + 1) + 1
    judge.train()
    for _ in range(steps):
        pick = torch.randint(0, len(labels), (batch - n_none,), generator=generator)
        images = torch.cat([shapes[pick], nuisance_images(n_none, shapes.shape[-1], generator)])
        targets = torch.cat([labels[pick], torch.full((n_none,), NONE)])
        loss = F.cross_entropy(judge(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return judge.eval()


def train_judge(steps: int = 400, batch: int = 64, size: int = 32, pool: int = 6000, seed: int = 0,
                members: int = 3) -> JudgeEnsemble:
    """Train ``members`` CNNs on one pool of rendered shapes (seeded apart from the CLIP data) plus fresh
    reject-class images; each member has its own initialisation and batches."""
    shapes, labels = render_pool(pool, size, seed + 1000)
    return JudgeEnsemble([_train_one(shapes, labels, steps, batch, seed + 17 * k) for k in range(members)])
