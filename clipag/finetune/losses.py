"""The three objectives (CLIPAG's contrastive, FARE, TeCoA): one loss serves the attack and the update.

The attack maximises the same loss the update minimises, on targets computed once per batch without
gradients (frozen text embeddings, or FARE's frozen original embeddings), so the attack's target is well
defined even while the text tower trains. Identical captions are one text: ``text_groups`` merges them,
so two images of "a photo of a dog." are positives of the same text, never negatives of each other.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..eval import PixelCLIP

__all__ = ["text_groups", "contrastive_loss", "tecoa_loss", "fare_loss", "chance_level", "Targets", "Objective",
           "LossResult"]


def text_groups(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(first, inverse)``: the first row of each distinct token sequence, and each row's group."""
    _, inverse = torch.unique(tokens, dim=0, return_inverse=True)
    rows = torch.arange(len(tokens), device=tokens.device)
    first = torch.full((int(inverse.max()) + 1,), len(tokens), device=tokens.device, dtype=torch.long)
    return first.scatter_reduce(0, inverse, rows, reduce="amin"), inverse


def _logits(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return scale * F.normalize(image.float(), dim=-1) @ F.normalize(text.float(), dim=-1).T


def contrastive_loss(image: torch.Tensor, text: torch.Tensor, index: torch.Tensor, scale: torch.Tensor,
                     reduction: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric InfoNCE over distinct texts; ``(loss, image→text top-1 accuracy)``.

    Image i's positive is ``text[index[i]]``; text u's positives are all images with ``index == u``
    (one positive set). With all captions distinct this is exactly CLIP's loss.
    """
    logits = _logits(image, text, scale)  # B × U
    image_to_text = F.cross_entropy(logits, index, reduction=reduction)
    positive = index[None, :] == torch.arange(len(text), device=index.device)[:, None]  # U × B
    per_text = torch.logsumexp(logits.T, dim=1) - torch.logsumexp(logits.T.masked_fill(~positive, -torch.inf), dim=1)
    text_to_image = per_text.sum() if reduction == "sum" else per_text.mean()
    return (image_to_text + text_to_image) / 2, (logits.argmax(-1) == index).float().mean()


def tecoa_loss(image: torch.Tensor, text: torch.Tensor, index: torch.Tensor, scale: torch.Tensor,
               reduction: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy over class prompts (or a batch's distinct captions): TeCoA, Mao et al. 2023."""
    logits = _logits(image, text, scale)
    return F.cross_entropy(logits, index, reduction=reduction), (logits.argmax(-1) == index).float().mean()


def fare_loss(image: torch.Tensor, original: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Squared L2 distance to the frozen original embedding (unnormalised), FARE, Schlarmann et al. 2024."""
    per_sample = (image.float() - original.float()).pow(2).sum(-1)
    return per_sample.sum() if reduction == "sum" else per_sample.mean()


def chance_level(index: torch.Tensor, num_texts: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, accuracy)`` of the best answer that ignores the image: the batch's text frequencies.

    Image→text, that is the entropy of the batch's labels (ln U when the U texts are equally frequent);
    text→image (``symmetric``, the contrastive loss), text u scores ``ln(B / n_u)`` whatever the logits, when
    all images look the same. The accuracy is the most frequent text's share. A run whose loss and batch
    accuracy stay here has learned nothing (see ``watch.py``).
    """
    ones = torch.ones(len(index), device=index.device)
    counts = torch.zeros(num_texts, device=index.device).scatter_add_(0, index, ones)
    share = counts / len(index)  # no data-dependent shapes: no host sync inside the PGD loop
    loss = -torch.xlogy(share, share).sum()
    if symmetric:
        present = counts > 0
        per_text = torch.where(present, (len(index) / counts.clamp(min=1)).log(), 0.0)
        loss = (loss + per_text.sum() / present.sum()) / 2
    return loss, share.max()


class LossResult(NamedTuple):
    loss: torch.Tensor
    acc: torch.Tensor
    chance_loss: torch.Tensor  # see chance_level; NaN for FARE, which has no chance value
    chance_acc: torch.Tensor


@dataclass
class Targets:
    index: torch.Tensor | None  # (B,) row of ``text`` each image belongs to
    tokens: torch.Tensor | None  # the token rows whose features make ``text`` (distinct captions or class prompts)
    text: torch.Tensor | None  # normalised text targets, without gradient
    original: torch.Tensor | None = None  # FARE: frozen original embeddings of the clean images
    sample_tokens: torch.Tensor | None = None  # every image's caption tokens (for --gather-features)
    class_prompts: bool = False  # ``tokens`` are class prompts × templates (averaged per class)
    chance: tuple[torch.Tensor, torch.Tensor] | None = None  # chance_level of ``index``: fixed for the batch


class _VisualOnly(torch.nn.Module):
    def __init__(self, visual: torch.nn.Module) -> None:
        super().__init__()
        self.visual = visual

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        weight = next(self.visual.parameters())
        return self.visual(image.to(weight.dtype))


class Objective:
    """Builds per-batch targets and evaluates the chosen loss on image features."""

    def __init__(self, kind: str, model: PixelCLIP, class_tokens: torch.Tensor | None = None,
                 templates_per_class: int = 1, text_locked: bool = True) -> None:
        self.kind, self.model, self.text_locked = kind, model, text_locked
        self.class_tokens, self.templates = class_tokens, templates_per_class
        self._class_text: torch.Tensor | None = None
        self.original: PixelCLIP | None = None
        if kind == "fare":  # FARE's anchor: the image tower as it was before finetuning, frozen
            visual = copy.deepcopy(model.model.visual).requires_grad_(False).eval()
            self.original = PixelCLIP(_VisualOnly(visual), model.mean.flatten().tolist(), model.std.flatten().tolist())
            self.original.to(model.mean.device)

    def text(self, features: torch.Tensor, class_prompts: bool) -> torch.Tensor:
        """Normalised targets from raw text features; class prompts are averaged over templates."""
        features = F.normalize(features.float(), dim=-1)
        if class_prompts:
            features = F.normalize(features.view(-1, self.templates, features.shape[-1]).mean(1), dim=-1)
        return features

    @torch.no_grad()
    def targets(self, images: torch.Tensor, tokens: torch.Tensor, labels: torch.Tensor) -> Targets:
        if self.kind == "fare":
            return Targets(None, None, None, original=self.original.encode_image(images))
        symmetric = self.kind == "contrastive"
        if self.kind == "tecoa" and self.class_tokens is not None and bool((labels >= 0).all()):
            if self._class_text is None or not self.text_locked:
                self._class_text = self.text(self.model.encode_text(self.class_tokens), class_prompts=True)
            return Targets(labels, self.class_tokens, self._class_text, class_prompts=True,
                           chance=chance_level(labels, len(self._class_text), symmetric))
        first, inverse = text_groups(tokens)  # captions: CE / InfoNCE over the batch's distinct texts
        distinct = tokens[first]
        return Targets(inverse, distinct, self.text(self.model.encode_text(distinct), class_prompts=False),
                       sample_tokens=tokens, chance=chance_level(inverse, len(distinct), symmetric))

    def loss(self, image: torch.Tensor, targets: Targets, scale: torch.Tensor, text: torch.Tensor | None = None,
             reduction: str = "mean") -> LossResult:
        """Loss, accuracy and their chance values; ``text`` (raw features of ``targets.tokens``) replaces the
        frozen targets."""
        if self.kind == "fare":
            nan = torch.full((), float("nan"), device=image.device)
            return LossResult(fare_loss(image, targets.original, reduction), torch.zeros((), device=image.device),
                              nan, nan)
        if text is not None:
            text = self.text(text, class_prompts=targets.class_prompts)
        else:
            text = targets.text
        loss_fn = contrastive_loss if self.kind == "contrastive" else tecoa_loss
        return LossResult(*loss_fn(image, text, targets.index, scale, reduction), *targets.chance)

    def global_loss(self, image: torch.Tensor, targets: Targets, scale: torch.Tensor,
                    text: torch.Tensor | None = None) -> LossResult:
        """The contrastive loss over every rank's batch (``--gather-features``).

        Every rank computes the same global loss; all_gather's backward sums the ranks' gradients and DDP
        averages them, which together give exactly the global loss's gradient.
        """
        import torch.distributed as dist
        from torch.distributed.nn.functional import all_gather

        per_sample_text = (self.text(text, False) if text is not None else targets.text)[targets.index]
        all_image = torch.cat(all_gather(image.float()))
        all_text = torch.cat(all_gather(per_sample_text.contiguous()))
        tokens = [torch.empty_like(targets.sample_tokens) for _ in range(dist.get_world_size())]
        dist.all_gather(tokens, targets.sample_tokens)
        all_tokens = torch.cat(tokens)
        first, inverse = text_groups(all_tokens)
        return LossResult(*contrastive_loss(all_image, all_text[first], inverse, scale),
                          *chance_level(inverse, len(first), symmetric=True))
