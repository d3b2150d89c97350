"""Text-driven style transfer (CLIPStyler, Kwon & Ye 2022) with any CLIP clipag loads, CLIPAG by default.

A fresh :class:`~.stylenet.StyleNet` is trained on one content image for ``steps`` Adam steps. Each step the
network's output is judged by CLIP (the directional loss on the whole image, the thresholded patch loss on 64
random perspective-warped crops) and by VGG19 (content loss), with a total-variation term. Upstream's defaults
are :class:`StyleConfig`'s (docs/clipstyler.md lists them). What is different from upstream's ``train_CLIPstyler.py``:

* CLIP's weights are frozen and run under :func:`clipag.speed.input_grad_mode` (upstream computes and
  accumulates CLIP weight gradients every step, which nothing reads); the crops and the whole image go
  through one encoder call;
* the crops are cut and warped batched on the device (upstream loops over them in Python), from a private
  ``torch.Generator``, so a seed gives the same result on the same machine without touching global RNG state;
* VGG stops at the last layer the content loss reads;
* the learning-rate schedule steps after the optimizer (upstream steps it first, so its halving comes one
  step early) and exactly ``steps`` updates are made (upstream's loop runs ``steps + 1``).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from clipag import augment as A
from clipag.images import to_pil
from clipag.precision import autocast_for, check_amp
from clipag.progress import Interrupted, run_steps
from clipag.scale.memory import ViewBudget
from clipag.scale.views import ViewBatcher, ViewPart
from clipag.speed import optimizer_mode

from . import losses as L
from .stylenet import StyleNet
from .vgg import VGGContent, load_vgg_content

__all__ = ["StyleConfig", "StyleStep", "StyleResult", "StyleInterrupted", "Styler", "StyleSession", "style",
           "load_content", "finish"]


@dataclass
class StyleConfig(ViewBudget):
    """Upstream's defaults (``train_CLIPstyler.py`` argument defaults and hard-coded values), and
    :class:`~clipag.scale.memory.ViewBudget`'s two, which split the crops into CLIP calls (same maths)."""

    steps: int = 200
    size: tuple[int, int] | None = (512, 512)  # (width, height), multiples of 8; None = the image's own, floored
    lr: float = 5e-4
    lr_step: int = 100  # StepLR: multiply the learning rate by lr_gamma every lr_step steps
    lr_gamma: float = 0.5
    crops: int = 64
    crop_size: int = 128
    distortion: float = 0.5  # RandomPerspective distortion_scale of the crops
    threshold: float = 0.7  # patch losses below this are zeroed
    lambda_patch: float = 9000.0
    lambda_content: float = 150.0
    lambda_tv: float = 2e-3
    lambda_dir: float = 500.0
    source: str = L.SOURCE_TEXT
    templates: tuple[str, ...] | None = None  # prompt templates averaged per text; None = the 79 ImageNet ones
    contrast: float | None = 1.5  # upstream's saved image: contrast ×1.5, then stretched to [0, 1]; None = raw
    amp: str = "auto"  # autocast for CLIP: auto (CUDA bf16/fp16, CPU off) | bf16 | fp16 | off
    frame_every: int = 0  # keep the output every this many steps as a frame (0 = none)
    fast: bool = True  # clipag.speed's encoder fast paths (same maths); CLIP's weights are frozen either way

    def validate(self) -> None:
        if self.steps < 0 or self.crops < 1 or self.crop_size < 1 or self.frame_every < 0:
            raise ValueError("steps and frame_every must be >= 0, crops and crop_size >= 1")
        if self.size is not None:
            if len(self.size) != 2 or any(not isinstance(s, int) or s < 8 or s % 8 for s in self.size):
                raise ValueError(f"size must be (width, height), each a multiple of 8 (StyleNet halves it three "
                                 f"times), got {self.size!r}")
            if self.crop_size > min(self.size):
                raise ValueError(f"crop_size {self.crop_size} is larger than the image {self.size}")
        if self.templates is not None and (not self.templates or any("{}" not in t for t in self.templates)):
            raise ValueError(f"every template needs a {{}} for the text, got {self.templates!r}")
        check_amp(self.amp)
        self.validate_budget()


@dataclass
class StyleStep:
    """What a callback sees after each step (losses measured before that step's update)."""

    step: int
    loss: float
    terms: dict[str, float]  # unweighted: patch, content, tv, directional


@dataclass
class StyleResult:
    text: str
    seed: int
    image: Image.Image  # finished as upstream saves it (see StyleConfig.contrast)
    raw: torch.Tensor  # StyleNet's output, (1, 3, H, W) in (0, 1), on the CPU
    losses: list[dict[str, float]] = field(default_factory=list)
    frames: list[Image.Image] = field(default_factory=list)  # every frame_every steps, before that step's update
    steps_done: int = 0
    seconds: float = 0.0
    interrupted: bool = False


class StyleInterrupted(Interrupted):
    """Ctrl-C during styling; ``.result`` holds the network's current output."""


def finish(image: torch.Tensor, contrast: float | None = 1.5) -> torch.Tensor:
    """Upstream's saving: clamp to [0, 1], ``adjust_contrast(·, contrast)``, then stretch min..max to 0..1."""
    if contrast is None:
        return image.clamp(0, 1)
    from torchvision.transforms.functional import adjust_contrast

    image = adjust_contrast(image.clamp(0, 1), contrast)
    low, high = image.min(), image.max()
    return (image - low) / (high - low).clamp(min=1e-5)


def load_content(content: Any, size: tuple[int, int] | None) -> torch.Tensor:
    """A path, PIL image or [0, 1] tensor as ``(1, 3, H, W)``, resized to ``size`` = (width, height)."""
    import torchvision.transforms.functional as TF

    if isinstance(content, str | os.PathLike):
        if not Path(content).is_file():
            raise FileNotFoundError(f"content image {content} not found")
        with Image.open(content) as opened:
            content = opened.convert("RGB")
    if isinstance(content, Image.Image):
        image = content.convert("RGB")
        width, height = size or (image.width // 8 * 8, image.height // 8 * 8)
        if width < 8 or height < 8:
            raise ValueError(f"the content image {image.size} is smaller than 8x8")
        return TF.to_tensor(image.resize((width, height), Image.Resampling.BICUBIC)).unsqueeze(0)
    if isinstance(content, torch.Tensor):
        tensor = (content if content.dim() == 4 else content.unsqueeze(0)).detach().float()
        if tensor.shape[:2] != (1, 3):
            raise ValueError(f"content tensor must be (3, H, W) or (1, 3, H, W), got {tuple(content.shape)}")
        width, height = size or (tensor.shape[-1] // 8 * 8, tensor.shape[-2] // 8 * 8)
        if tensor.shape[-2:] != (height, width):
            tensor = F.interpolate(tensor, size=(height, width), mode="bilinear", antialias=True)
        return tensor.clamp(0, 1).cpu()
    raise TypeError(f"content must be a path, a PIL image or a tensor, got {type(content).__name__}")


class Styler:
    """CLIP + VGG prepared once; :meth:`run` styles one content image with one text (the CLI reuses it).

    ``model``: anything :func:`clipag.load` takes (loaded in fp32), or a loaded CLIP together with the
    ``preprocess`` ``clip.load`` returned (its ``Normalize`` gives the views' mean/std). ``vgg``: a
    :class:`VGGContent` to share between stylers; by default torchvision's pretrained VGG19 is loaded.
    """

    def __init__(self, model: Any = "ViT-B/32", *, device: str | torch.device | None = None, preprocess: Any = None,
                 vgg: VGGContent | None = None, config: StyleConfig | None = None, progress: bool = True) -> None:
        from clipag.loader import input_resolution, resolve_model
        from clipag.model import image_normalization

        self.config = config or StyleConfig()
        self.config.validate()
        by_name = isinstance(model, str | os.PathLike)
        if not by_name and preprocess is None:
            raise ValueError("pass preprocess= (the transform clip.load returned) with a loaded model, so the "
                             "views are normalised as the model expects")
        # VGG first: a missing VGG19 file is reported before a CLIP download starts
        if by_name:
            self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        else:
            _, _, self.device = resolve_model(model, device)  # a CLIP, on `device` if one is given
        self.vgg = (vgg or load_vgg_content(self.device, progress=progress)).to(self.device)
        self.model, loaded_preprocess, _ = resolve_model(model, self.device)
        self._mean, self._std = image_normalization(loaded_preprocess if loaded_preprocess is not None else preprocess,
                                                    self.device)
        self.resolution = input_resolution(self.model)
        self._text_cache: dict[str, torch.Tensor] = {}
        self.batcher = ViewBatcher(self.encode, self.config, self.device, self.model)
        self._preprocess = loaded_preprocess if loaded_preprocess is not None else preprocess

    def with_config(self, config: StyleConfig) -> Styler:
        """The same CLIP and VGG under another config (the prompt-file runner's per-item settings)."""
        return Styler(self.model, device=self.device, preprocess=self._preprocess, vgg=self.vgg, config=config)

    # -- pieces ---------------------------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast_for(self.config.amp, self.device)

    def text_features(self, text: str) -> torch.Tensor:
        """``text`` averaged over the prompt templates (the 79 ImageNet ones), unit norm ``(1, D)``; cached."""
        if text not in self._text_cache:
            from clipag.tokenizer import tokenize_for

            def tokens(texts: list[str]) -> torch.Tensor:
                return tokenize_for(self.model, texts, f"{text!r} in a prompt template", stacklevel=4)

            templates = self.config.templates or L.IMAGENET_TEMPLATES
            with self.autocast():
                self._text_cache[text] = L.template_text_features(self.model.encode_text, tokens, text, templates,
                                                                  device=self.device)
        return self._text_cache[text]

    def encode(self, views: torch.Tensor) -> torch.Tensor:
        """Float32 image features of ``[0, 1]`` views at the model's resolution (normalised as ``preprocess``)."""
        with self.autocast():
            return self.model.encode_image((views - self._mean) / self._std).float()

    def whole_view(self, image: torch.Tensor) -> torch.Tensor:
        """The whole image at CLIP's resolution: bicubic, no antialiasing, as upstream's ``clip_normalize``."""
        return F.interpolate(image, size=(self.resolution, self.resolution), mode="bicubic", align_corners=False)

    def crop_views(self, image: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """``crops`` random crops, each perspective-warped then resized to CLIP's resolution, in one batch."""
        cfg = self.config
        crops = A.random_windows(image, cfg.crops, cfg.crop_size, generator)
        return A.resize_to(A.random_perspective(crops, cfg.distortion, generator), self.resolution)

    def mode(self) -> contextlib.AbstractContextManager:
        return optimizer_mode(self.model, self.config.fast)

    # -- the loop -------------------------------------------------------------------------------------------
    def session(self, content: Any, text: str, seed: int = 0, source: str | None = None) -> StyleSession:
        return StyleSession(self, content, text, seed, source)

    def step_many(self, sessions: list[StyleSession]) -> list[StyleStep]:
        """One step of several stylings (each its own StyleNet and optimizer), their CLIP views sharing encoder
        calls (``--batch K``)."""
        with self.mode():
            parts = [session.prepare() for session in sessions]
            features = self.batcher.backward(parts)
        return [session.finish(f) for session, f in zip(sessions, features, strict=True)]

    def run(self, content: Any, text: str, *, seed: int = 0, source: str | None = None, progress: bool = False,
            callback: Callable[[StyleStep], bool | None] | None = None) -> StyleResult:
        """Style ``content`` (path, PIL image or tensor) after ``text``; ``callback`` returning True stops early.

        ``source`` describes the content (default ``config.source``, upstream's "a Photo"). Ctrl-C raises
        :class:`StyleInterrupted` (a ``KeyboardInterrupt``) carrying the current output.
        """
        return run_steps(self.session(content, text, seed, source), self.config.steps, label=text, progress=progress,
                         callback=callback, interrupted=StyleInterrupted,
                         postfix=lambda step: {"loss": f"{step.loss:.1f}"})


class StyleSession:
    """One styling run: the content image, its fixed targets, the StyleNet and its optimizer."""

    def __init__(self, styler: Styler, content: Any, text: str, seed: int, source: str | None = None) -> None:
        if not isinstance(text, str) or not text.strip():
            raise ValueError('the style text is empty: describe a style, e.g. "an oil painting with thick brush '
                             'strokes"')
        self.styler, self.text, self.seed = styler, text, seed
        cfg, device = styler.config, styler.device
        self.content = load_content(content, cfg.size).to(device)
        if cfg.crop_size > min(self.content.shape[-2:]):
            raise ValueError(f"crop_size {cfg.crop_size} is larger than the image {tuple(self.content.shape[-2:])}")
        self._gen = torch.Generator(device).manual_seed(seed)
        with torch.random.fork_rng(devices=[]):  # the network's init from the seed, global RNG left as it was
            torch.manual_seed(seed)
            self.net = StyleNet().to(device)
        with torch.no_grad():
            self.content_features = styler.vgg(self.content)
            source_image = F.normalize(styler.encode(styler.whole_view(self.content)), dim=-1)
        self.source_features = source_image
        self.direction = L.text_direction(styler.text_features(text), styler.text_features(source or cfg.source))
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=cfg.lr)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=cfg.lr_step, gamma=cfg.lr_gamma)
        self.losses: list[dict[str, float]] = []
        self.frames: list[Image.Image] = []
        self._t0 = time.perf_counter()

    def _clip_terms(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unweighted (directional, patch) losses from the features of the whole view (row 0) and the crops."""
        cfg = self.styler.config
        directional = L.directional_loss(features[:1], self.source_features, self.direction).mean()
        return directional, L.patch_loss(features[1:], self.source_features, self.direction, cfg.threshold)

    def _partial_loss(self, features: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Views ``start:stop``'s share of the CLIP terms (row 0 the whole image, then the crops; the patch mean
        written as a sum, so micro-batches of crops add up to it)."""
        cfg = self.styler.config
        loss = features.new_zeros(())
        if start == 0:
            loss = loss + cfg.lambda_dir * L.directional_loss(features[:1], self.source_features, self.direction).mean()
            features = features[1:]
        if len(features):
            crops = L.directional_loss(features, self.source_features, self.direction)
            kept = torch.where(crops < cfg.threshold, torch.zeros_like(crops), crops)
            loss = loss + cfg.lambda_patch * (kept.sum() / cfg.crops)
        return loss

    def prepare(self) -> ViewPart:
        """The first half of a step: StyleNet's output, its VGG and TV terms, and its CLIP views."""
        s, cfg = self.styler, self.styler.config
        self.optimizer.zero_grad(set_to_none=True)
        output = self.net(self.content)
        content = L.content_loss(s.vgg(output), self.content_features)
        tv = L.total_variation(output)
        self._other = {"content": content.detach(), "tv": tv.detach()}
        self._output = output.detach()
        views = torch.cat([s.whole_view(output), s.crop_views(output, self._gen)])
        return ViewPart(views, self._partial_loss, extra=cfg.lambda_content * content + cfg.lambda_tv * tv)

    def _total(self, patch: torch.Tensor, content: torch.Tensor, tv: torch.Tensor,
               directional: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.styler.config
        total = (cfg.lambda_patch * patch + cfg.lambda_content * content + cfg.lambda_tv * tv
                 + cfg.lambda_dir * directional)
        return total, {"patch": patch, "content": content, "tv": tv, "directional": directional}

    def finish(self, features: torch.Tensor) -> StyleStep:
        """The second half: one Adam step on the StyleNet and one step of its learning-rate schedule."""
        every = self.styler.config.frame_every
        if every and len(self.losses) % every == 0:
            self.frames.append(to_pil(finish(self._output.float().cpu(), self.styler.config.contrast)))
        self._output = None
        self.optimizer.step()
        self.scheduler.step()
        with torch.no_grad():
            directional, patch = self._clip_terms(features)
            total, terms = self._total(patch, self._other["content"], self._other["tv"], directional)
        values = torch.stack([total, *terms.values()]).tolist()
        record = dict(zip(["loss", *terms], values, strict=True))
        self.losses.append(record)
        return StyleStep(len(self.losses) - 1, record["loss"], {k: record[k] for k in terms})

    def step(self) -> StyleStep:
        """One Adam step on the StyleNet."""
        return self.styler.step_many([self])[0]

    def output(self) -> torch.Tensor:
        """The network's current output for the content image, ``(1, 3, H, W)`` in (0, 1)."""
        with torch.no_grad():
            return self.net(self.content)

    def result(self, interrupted: bool = False) -> StyleResult:
        raw = self.output().cpu()
        return StyleResult(text=self.text, seed=self.seed, image=to_pil(finish(raw, self.styler.config.contrast)),
                           raw=raw, losses=self.losses, frames=list(self.frames), steps_done=len(self.losses),
                           seconds=time.perf_counter() - self._t0, interrupted=interrupted)


def style(content: Any, text: str, *, model: Any = "ViT-B/32", steps: int = 200, seed: int = 0,
          device: str | torch.device | None = None, progress: bool = False, **knobs: Any) -> Image.Image:
    """Style ``content`` (path, PIL image or tensor) after ``text`` with CLIPAG; returns the finished image.

    ``knobs`` override :class:`StyleConfig` fields (``size=(768, 512)``, ``crops=32``, ``contrast=None``...).
    """
    import dataclasses

    unknown = set(knobs) - {f.name for f in dataclasses.fields(StyleConfig)}
    if unknown:
        raise TypeError(f"unknown style option(s) {sorted(unknown)}; see clipag.adapters.clipstyler.StyleConfig")
    config = dataclasses.replace(StyleConfig(), steps=steps, **knobs)
    return Styler(model, device=device, config=config, progress=progress).run(
        content, text, seed=seed, progress=progress).image
