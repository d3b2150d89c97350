"""The equivalence figures of a transformers export, measured rather than assumed.

Every ``clipag export --format transformers`` runs these on what it wrote (reloaded by transformers itself) and its
model card states the numbers; the tests hold the same functions to the documented bounds.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

__all__ = ["AWKWARD_TEXTS", "Equivalence", "synthetic_photo", "tokenizer_differences", "processor_difference",
           "feature_difference", "features", "measure_export", "PHOTO_SIZES", "tokenizer_classes",
           "image_processor_classes"]

# Strings where tokenizers part ways: unicode, decomposed accents, CJK, emoji, odd whitespace, contractions (ASCII and
# curly), the special-token strings, HTML entities, what ftfy repairs, text cut at 77 tokens, and the empty string.
AWKWARD_TEXTS = (
    "a photo of a cat",
    "Crème brûlée, naïve café, résumé",
    "Cre\u0300me bru\u0302le\u0301e, nai\u0308ve cafe\u0301",  # the same, decomposed (NFD)
    "東京の夜景と한국어 텍스트",
    "a dog 🐶 in a hat 🎩, thumbs up 👍🏽",
    "tabs\tand\nnew lines\r\n and\u00a0no-break\u2003em space ",
    "don't you're we'll it's I'd they've I'm",
    "don\u2019t you\u2019re",
    "<|startoftext|>a<|endoftext|>b",
    "<|ENDOFTEXT|> in capitals",
    "fish &amp; chips &lt;3 &#39;quoted&#39;",
    "&amp;amp; escaped twice",  # OpenAI unescapes twice, ftfy once
    "<b>bold</b> &amp; tags",  # ftfy leaves entities alone in text with tags; OpenAI's html.unescape does not
    "caf\u00c3\u00a9 au lait",  # mojibake of "café", which ftfy repairs
    "\ufb01ne \ufb02owers",  # ligatures
    "\uff21\uff22\uff23 fullwidth",
    "UPPER lower MiXeD 123 4.5e-3 #hash @user",
    " ".join(["word"] * 100),  # 102 tokens: cut at 77
    "",
    "   ",
)

PHOTO_SIZES = ((640, 480), (480, 640), (500, 333), (224, 224), (1000, 300), (97, 131))


def synthetic_photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A natural-looking RGB photo: 1/f texture (natural images' spectrum), a sky gradient, a sun, a horizon, and
    JPEG compression, so resampling meets the edges and textures of real pictures rather than flat colour."""
    rng = np.random.default_rng(seed)
    fy, fx = np.meshgrid(np.fft.fftfreq(height), np.fft.fftfreq(width), indexing="ij")
    falloff = 1.0 / np.maximum(np.hypot(fx, fy), 1.0 / max(width, height))
    channels = []
    for _ in range(3):
        spectrum = np.fft.fft2(rng.standard_normal((height, width))) * falloff
        texture = np.real(np.fft.ifft2(spectrum))
        channels.append((texture - texture.mean()) / (texture.std() + 1e-8))
    texture = np.stack(channels, -1) * 0.6 + np.stack(channels[:1] * 3, -1) * 0.4  # correlated colours
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    horizon = 0.55 * height / max(width, height) + 0.05 * np.sin(x * 9 + seed)
    sky = np.stack([0.35 + 0.3 * y, 0.55 + 0.2 * y, 0.9 - 0.1 * y], -1)
    ground = np.stack([0.35 + 0.1 * x, 0.45 - 0.1 * y, 0.2 + 0.05 * x], -1)
    image = np.where((y > horizon)[..., None], ground + 0.12 * texture, sky + 0.03 * texture)
    sun = np.hypot(x - 0.7 * width / max(width, height), y - 0.2 * height / max(width, height)) < 0.06
    image[sun] = [1.0, 0.95, 0.8]
    pixels = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=85)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def tokenizer_differences(tokenizer: Any, texts: tuple[str, ...] = AWKWARD_TEXTS,
                          context_length: int = 77) -> dict[str, tuple[list[int], list[int]]]:
    """``{text: (transformers ids, clipag ids)}`` for every text where the padded ids differ."""
    from ..tokenizer import tokenize

    theirs = tokenizer(list(texts), padding="max_length", max_length=context_length, truncation=True)["input_ids"]
    ours = tokenize(list(texts), context_length=context_length, truncate=True).tolist()
    return {text: (list(a), list(b)) for text, a, b in zip(texts, theirs, ours, strict=True) if list(a) != list(b)}


def processor_difference(processor: Any, preprocess: Any, images: list[Image.Image]) -> dict[str, float]:
    """How far a transformers image processor's ``pixel_values`` are from clipag's ``preprocess`` (normalised units)."""
    diffs = []
    for image in images:
        theirs = processor(images=image, return_tensors="pt")["pixel_values"][0]
        diffs.append((theirs.float() - preprocess(image).float()).abs().flatten())
    every = torch.cat(diffs)
    return {"max_abs": float(every.max()), "mean_abs": float(every.mean()),
            "p99_abs": float(torch.quantile(every[torch.randperm(len(every))[:1_000_000]], 0.99))}


def features(output: Any) -> torch.Tensor:
    """``get_image_features``' tensor under transformers 4 (a tensor) and 5 (an output object's ``pooler_output``)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


@torch.no_grad()
def feature_difference(model: torch.nn.Module, hf_model: Any, seed: int = 0, images: int = 4) -> dict[str, float]:
    """Max |clipag encode_* - transformers get_*_features| on random pixels and on the awkward texts (same ids)."""
    from ..tokenizer import tokenize

    size = model.visual.input_resolution
    pixels = torch.randn(images, 3, size, size, generator=torch.Generator().manual_seed(seed))
    ids = tokenize(list(AWKWARD_TEXTS), context_length=model.context_length, truncate=True)
    image = (model.encode_image(pixels) - features(hf_model.get_image_features(pixel_values=pixels))).abs().max()
    text = (model.encode_text(ids) - features(hf_model.get_text_features(input_ids=ids.long()))).abs().max()
    return {"image_max_abs": float(image), "text_max_abs": float(text), "images": images, "texts": len(ids)}


@dataclass
class Equivalence:
    """What a transformers export was measured to reproduce, for its model card."""

    features: dict[str, float]
    tokenizers: dict[str, list[str]]  # tokenizer class -> the awkward texts whose ids differ from clipag.tokenize
    processors: dict[str, dict[str, float]]  # processor class -> pixel differences from clipag's preprocess
    versions: dict[str, str] = field(default_factory=dict)
    texts: int = len(AWKWARD_TEXTS)


def measure_export(model: torch.nn.Module, preprocess: Any, folder: Path) -> Equivalence:
    """Reload ``folder`` with transformers' own classes and compare everything with the clipag ``model``."""
    import transformers

    hf_model = transformers.CLIPModel.from_pretrained(folder).eval()
    tokenizers = {name: getattr(transformers, name).from_pretrained(folder) for name in tokenizer_classes()}
    photos = [synthetic_photo(w, h, seed=i) for i, (w, h) in enumerate(PHOTO_SIZES)]
    processors = {name: processor_difference(getattr(transformers, name).from_pretrained(folder), preprocess, photos)
                  for name in image_processor_classes()}
    return Equivalence(
        features=feature_difference(model, hf_model),
        tokenizers={name: sorted(tokenizer_differences(t, context_length=model.context_length))
                    for name, t in tokenizers.items()},
        processors=processors,
        versions={"transformers": transformers.__version__, "torch": torch.__version__.split("+")[0]})


def _major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


def tokenizer_classes() -> tuple[str, ...]:
    """transformers 4: a Python CLIPTokenizer (ftfy when installed) and a tokenizers-backed CLIPTokenizerFast;
    in 5 the one CLIPTokenizer is tokenizers-backed and CLIPTokenizerFast is the same class."""
    return ("CLIPTokenizer", "CLIPTokenizerFast") if _major() < 5 else ("CLIPTokenizer",)


def image_processor_classes() -> tuple[str, ...]:
    """transformers 4: CLIPImageProcessor (PIL/numpy) and CLIPImageProcessorFast (torchvision); 5: CLIPImageProcessor
    (torchvision) and CLIPImageProcessorPil."""
    return ("CLIPImageProcessor", "CLIPImageProcessorFast") if _major() < 5 else ("CLIPImageProcessor",
                                                                                 "CLIPImageProcessorPil")
