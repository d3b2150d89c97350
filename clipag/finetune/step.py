"""One adversarial micro-step: targets, PGD against them, the loss on the adversarial images.

Shared by the training loop and ``benchmarks/gpu_finetune.py``, so the benchmark times the real code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..attacks import pgd
from ..eval import PixelCLIP
from .build import Precision
from .losses import Objective, Targets
from .watch import mean_pairwise_cosine

__all__ = ["AdversarialStep"]


@dataclass
class AdversarialStep:
    pixel: PixelCLIP  # the model itself (train/eval mode, logit scale)
    net: torch.nn.Module  # what the update calls: ``pixel``, its DDP wrapper, or a compiled one
    attack_forward: torch.nn.Module  # what the attack calls: ``pixel`` or ``torch.compile(pixel)``
    objective: Objective
    precision: Precision
    norm: str
    attack_steps: int
    random_start: bool = True
    unlock_text: bool = False
    global_loss: bool = False  # contrastive loss over all ranks (--gather-features)

    def attack(self, images: torch.Tensor, targets: Targets, epsilon: float, step_size: float | None,
               generator: torch.Generator | None) -> torch.Tensor:
        """PGD on the objective's own loss, with the model in eval mode (fixed BatchNorm statistics)."""
        self.pixel.eval()
        scale = self.pixel.model.logit_scale.exp().detach().float()

        def loss(x: torch.Tensor) -> torch.Tensor:
            with self.precision.autocast():
                return self.objective.loss(self.attack_forward(x)[0], targets, scale, reduction="sum")[0]

        adversarial = pgd(loss, images, norm=self.norm, epsilon=epsilon, steps=self.attack_steps,
                          step_size=step_size, random_start=self.random_start, generator=generator)
        self.pixel.train()
        return adversarial

    def __call__(self, images: torch.Tensor, tokens: torch.Tensor, labels: torch.Tensor, epsilon: float,
                 step_size: float | None = None, generator: torch.Generator | None = None) -> \
            tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(loss, accuracy, signals)`` on adversarial images; the caller runs backward (inside DDP's no_sync if
        needed). ``signals`` (detached) are what ``watch.LearningWatch`` reads: the mean pairwise cosine of the
        batch's image and text embeddings, and the loss and accuracy at chance (NaN where undefined)."""
        with self.precision.autocast():
            targets = self.objective.targets(images, tokens, labels)
        adversarial = self.attack(images, targets, epsilon, step_size, generator)
        with self.precision.autocast():
            image_features, text_features, scale = self.net(adversarial, targets.tokens if self.unlock_text else None)
            if self.global_loss:
                result = self.objective.global_loss(image_features, targets, scale, text_features)
            else:
                result = self.objective.loss(image_features, targets, scale, text_features)
        with torch.no_grad():
            nan = torch.full((), float("nan"), device=images.device)
            text = mean_pairwise_cosine(targets.text) if targets.text is not None else nan
            signals = torch.stack([mean_pairwise_cosine(image_features), text, result.chance_loss.float(),
                                   result.chance_acc.float()])
        return result.loss, result.acc, signals

    @staticmethod
    def flops_per_image(model: Any, attack_steps: int, distinct_captions_per_image: float = 1.0) -> float:
        """Model FLOPs of one training image: PGD costs a forward and an input-only backward (≈ 2 forwards) per
        step, the update a forward and a full backward (≈ 3 forwards), plus the frozen text tower's forward."""
        image, text = _vit_forward_flops(model.visual), _text_forward_flops(model)
        return (2 * attack_steps + 3) * image + distinct_captions_per_image * text


def _transformer_flops(tokens: int, width: int, layers: int, mlp_ratio: float = 4.0) -> float:
    per_token = 2 * (4 + 2 * mlp_ratio) * width * width  # qkv + out projections, MLP; 2 FLOPs per MAC
    attention = 2 * 2 * tokens * width  # QKᵀ and AV per token
    return layers * tokens * (per_token + attention)


def _vit_forward_flops(visual: Any) -> float:
    """Analytic forward FLOPs of an open_clip VisionTransformer (patch embedding, blocks, projection)."""
    conv = visual.conv1
    grid = visual.grid_size[0] * visual.grid_size[1]
    width = conv.out_channels
    patch = 2 * grid * conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1] * width
    blocks = _transformer_flops(grid + 1, width, len(visual.transformer.resblocks),
                                visual.transformer.resblocks[0].mlp.c_fc.out_features / width)
    proj = 2 * visual.proj.numel() if getattr(visual, "proj", None) is not None else 0
    return patch + blocks + proj


def _text_forward_flops(model: Any) -> float:
    width = model.token_embedding.embedding_dim
    blocks = model.transformer.resblocks
    return _transformer_flops(model.context_length, width, len(blocks), blocks[0].mlp.c_fc.out_features / width)
