"""CLIPStyler's loss terms (Kwon & Ye, CVPR 2022), each a small function of tensors so tests can check it by hand.

total = 9000·patch + 150·content + 2e-3·TV + 500·directional (upstream's weights, in :class:`StyleConfig`).

* **directional**: CLIP's image-embedding change from the content image must point where the text embedding
  moves from the source text ("a Photo") to the style text: ``1 − cos(Δimage, Δtext)``.
* **patch**: the same for random perspective-warped crops, with crops already closer than the threshold
  (loss < 0.7) zeroed, so easy patches stop pulling.
* **content**: MSE between VGG19 activations of the output and of the content image.
* **total variation**: the L2 norms of four neighbour differences (right, down, two diagonals).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

__all__ = ["IMAGENET_TEMPLATES", "SOURCE_TEXT", "template_text_features", "text_direction", "directional_loss",
           "patch_loss", "content_loss", "total_variation"]

SOURCE_TEXT = "a Photo"


def _imagenet_templates() -> list[str]:
    """OpenAI's 80 ImageNet prompt templates (from open_clip) less "a photo of many {}.": CLIPStyler's 79."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return [t for t in (template("{}") for template in OPENAI_IMAGENET_TEMPLATES) if t != "a photo of many {}."]


IMAGENET_TEMPLATES: list[str] = _imagenet_templates()


def template_text_features(encode_text: Callable[[torch.Tensor], torch.Tensor],
                           tokenize: Callable[[list[str]], torch.Tensor], text: str,
                           templates: Sequence[str] = IMAGENET_TEMPLATES,
                           device: str | torch.device = "cpu") -> torch.Tensor:
    """The unit-norm mean of the (unnormalised) text embeddings of ``text`` in every template, ``(1, D)``.

    Upstream averages the raw embeddings first and normalises the mean; so does this.
    """
    tokens = tokenize([template.format(text) for template in templates]).to(device)
    with torch.no_grad():
        features = encode_text(tokens).float().mean(dim=0, keepdim=True)
    return F.normalize(features, dim=-1)


def text_direction(style: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Unit vector from the source text's features to the style text's, ``(1, D)``."""
    return F.normalize(style - source, dim=-1)


def directional_loss(image_features: torch.Tensor, source_features: torch.Tensor,
                     direction: torch.Tensor) -> torch.Tensor:
    """Per image ``1 − cos(normalize(f̂ − ŝ), direction)``, where f̂ and ŝ are the unit-norm image features of the
    output views and of the content image, ``(N,)``."""
    shift = F.normalize(image_features, dim=-1) - F.normalize(source_features, dim=-1)
    image_direction = F.normalize(shift, dim=-1)
    return 1 - F.cosine_similarity(image_direction, direction.expand_as(image_direction), dim=1)


def patch_loss(crop_features: torch.Tensor, source_features: torch.Tensor, direction: torch.Tensor,
               threshold: float = 0.7) -> torch.Tensor:
    """Mean directional loss of the crops, each crop's loss zeroed where it is below ``threshold``."""
    loss = directional_loss(crop_features, source_features, direction)
    return torch.where(loss < threshold, torch.zeros_like(loss), loss).mean()


def content_loss(output: dict[str, torch.Tensor], content: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum over layers of the mean squared difference of the activations."""
    return torch.stack([F.mse_loss(output[name], content[name]) for name in content]).sum()


def total_variation(image: torch.Tensor) -> torch.Tensor:
    """``‖dx‖ + ‖dy‖ + ‖d↘‖ + ‖d↗‖``: Frobenius norms (not squared) of the four neighbour differences."""
    right = image[..., :, :-1] - image[..., :, 1:]
    down = image[..., :-1, :] - image[..., 1:, :]
    anti = image[..., 1:, :-1] - image[..., :-1, 1:]
    diagonal = image[..., :-1, :-1] - image[..., 1:, 1:]
    return torch.stack([torch.linalg.vector_norm(d) for d in (right, down, anti, diagonal)]).sum()
