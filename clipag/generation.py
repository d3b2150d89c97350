"""Generator-free text-to-image: optimize pixels so a robust CLIP matches the prompt (CLIPAG, WACV 2024).

The algorithm is the official notebook's (``CLIPAG_T2I.ipynb``; docs/generate.md): every step the canvas is seen
as ``global_views`` noisy DiffAugment views and ``patch_views`` random patch crops; the loss is
``global_weight·mean(1−cos) + patch_weight·mean(1−cos)`` against the prompt's text embedding; AdamW moves
the pixels, the image gradient's norm is clipped, and dynamic thresholding keeps pixels in range. The output
is the canvas with the lowest global loss. Deviations from the notebook are listed in ``docs/generate.md``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from . import augment as A
from .images import to_pil
from .loader import input_resolution, resolve_model
from .model import image_normalization
from .precision import autocast_for, check_amp
from .prior import Prior, default_prior_path, upsample
from .progress import Interrupted, run_steps
from .scale.memory import ViewBudget
from .scale.views import ViewBatcher, ViewPart
from .speed import optimizer_mode

__all__ = ["GenerateConfig", "GenerationResult", "GenerationInterrupted", "Generator", "Session", "Step",
           "generate",
           "generate_result", "dynamic_threshold"]

INITS = ("auto", "noise", "gray", "dark")


@dataclass
class GenerateConfig(A.AugmentParams, ViewBudget):
    """Every knob of the notebook, with its values as defaults (``patch_fraction`` = its 128 of 224 px).

    ``max_views_per_batch`` and ``memory`` (:class:`~clipag.scale.memory.ViewBudget`) split the views into
    encoder calls that fit; the gradient is the same.
    """

    steps: int = 100
    lr: float = 0.0175
    weight_decay: float = 0.01  # AdamW's default, which the notebook keeps
    grad_clip: float = 0.001  # max L2 norm of the image gradient; 0 disables
    global_views: int = 32
    patch_views: int = 32
    global_weight: float = 1.0
    patch_weight: float = 5.0
    patch_fraction: float = 128 / 224  # patch crop side as a fraction of the canvas side
    noise: float = 0.01  # std of the pixel noise added to every view
    rejection: float = 0.0  # zero the patch losses below this quantile (0 = off, as the notebook's default)
    threshold: float = 0.95  # dynamic-thresholding percentile; 0 = plain clamp to [0, 1]
    normalize: bool = True  # normalise the views with the model's own mean/std (its preprocess config)
    # DiffAugment's ranges are inherited from clipag.augment.AugmentParams
    # Start image and canvas
    size: int | None = None  # canvas side; None = the model's input resolution
    init: str = "auto"  # auto (the prior if there is one, else noise) | noise | gray | dark | an image file
    prior_samples: int = 1000  # prior samples scored against the prompt (the notebook's actual count)
    # Engineering (no effect on the maths, except amp)
    frame_every: int = 10  # keep a frame every this many steps (0 = none)
    amp: str = "auto"  # autocast: auto (CUDA bf16/fp16, CPU off) | bf16 | fp16 | off
    fast: bool = True  # clipag.speed's encoder fast paths (same maths); weights are frozen either way
    compile: bool = False  # torch.compile the image encoder (CUDA: CUDA graphs); pays off over several images

    def validate(self) -> None:
        if self.steps < 0 or self.global_views < 0 or self.patch_views < 0:
            raise ValueError("steps, global_views and patch_views must be >= 0")
        if self.global_views + self.patch_views == 0:
            raise ValueError("at least one global view or patch view is needed")
        if not 0 < self.patch_fraction <= 1:
            raise ValueError(f"patch_fraction must be in (0, 1], got {self.patch_fraction}")
        if not 0 <= self.threshold < 1 or not 0 <= self.rejection < 1:
            raise ValueError("threshold and rejection are quantiles in [0, 1)")
        check_amp(self.amp)
        self.validate_budget()
        self.augmenter()  # validates the policy
        if self.init not in INITS and not Path(self.init).is_file():
            raise ValueError(f"init must be one of {INITS} or an image file, got {self.init!r}")


@dataclass
class Step:
    """What a callback sees after each step (``image`` is the canvas after the update, detached)."""

    step: int
    loss: float
    global_loss: float
    patch_loss: float
    best_loss: float
    image: torch.Tensor


@dataclass
class GenerationResult:
    prompt: str
    seed: int
    image: Image.Image  # the best canvas
    tensor: torch.Tensor  # the best canvas, (1, 3, H, W) in [0, 1], on the CPU
    best_step: int
    best_loss: float
    losses: list[dict[str, float]] = field(default_factory=list)  # per step: loss, global, patch
    frames: list[Image.Image] = field(default_factory=list)
    start: Image.Image | None = None
    steps_done: int = 0
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def steps_per_second(self) -> float:
        return self.steps_done / self.seconds if self.seconds else 0.0


class GenerationInterrupted(Interrupted):
    """Ctrl-C during generation; ``.result`` holds the best image so far."""


def dynamic_threshold(x: torch.Tensor, p: float) -> torch.Tensor:
    """Imagen's dynamic thresholding on [0, 1] images: map to [-1, 1], let ``s = max(1, quantile(|x|, p))``
    per image, clamp to ±s, divide by s, map back. Saturated pixels are pulled in instead of piling up at 0/1."""
    y = x * 2 - 1
    s = torch.quantile(y.abs().flatten(1).float(), p, dim=1).clamp(min=1).to(y.dtype).view(-1, 1, 1, 1)
    return (torch.maximum(torch.minimum(y, s), -s) / s + 1) / 2


def _compiled(encode: Callable[[torch.Tensor], torch.Tensor],
              device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """The encoder under ``torch.compile``. On CUDA, mode ``reduce-overhead`` replays each step's forward and
    backward as CUDA graphs: a 64-view ViT-B/32 step is hundreds of small kernels, bound by their launches."""
    return torch.compile(encode, dynamic=False, mode="reduce-overhead" if device.type == "cuda" else None)


def _resolve_prior(prior: Prior | str | os.PathLike | None) -> Prior | None:
    if prior is None or isinstance(prior, Prior):
        return prior
    if str(prior) == "auto":
        path = default_prior_path()
        return Prior.load(path) if path.exists() else None
    if not Path(prior).exists():
        raise FileNotFoundError(f"prior {prior} not found (build one with `clipag prior build`)")
    return Prior.load(prior)


class Generator:
    """A model prepared for generation; :meth:`run` one prompt at a time (the CLI reuses it across prompts).

    ``model``: anything :func:`clipag.load` takes, or a loaded CLIP model (used on its own device).
    ``prior``: a :class:`Prior`, a prior file, ``"auto"`` (the one ``clipag prior build`` wrote to the cache,
    if any) or ``None`` (start from ``config.init``).
    """

    def __init__(self, model: Any = "ViT-B/32", *, device: str | torch.device | None = None,
                 prior: Prior | str | os.PathLike | None = "auto", config: GenerateConfig | None = None) -> None:
        self.model, _, self.device = resolve_model(model, device)
        self.config = config or GenerateConfig()
        self.config.validate()
        self.prior = _resolve_prior(prior)
        self.resolution = input_resolution(self.model)
        self.canvas_size()  # refuse a bad size now, not after the prompt is encoded
        self._encode_image = _compiled(self.model.encode_image, self.device) if self.config.compile \
            else self.model.encode_image
        self._mean, self._std = image_normalization(self.model, self.device)  # the model's own preprocess
        mark = torch.compiler.cudagraph_mark_step_begin if self.config.compile and self.device.type == "cuda" else None
        self.batcher = ViewBatcher(self._encode, self.config, self.device, self.model, before_call=mark)

    def with_config(self, config: GenerateConfig) -> Generator:
        """The same model and prior under another config (the prompt-file runner's per-item settings)."""
        return Generator(self.model, device=self.device, prior=self.prior, config=config)

    # -- pieces ---------------------------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager:
        return autocast_for(self.config.amp, self.device)

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm float32 image features of views at the model's resolution."""
        if self.config.normalize:
            images = (images - self._mean) / self._std
        with self._autocast():
            features = self._encode_image(images)
        return F.normalize(features.float(), dim=-1)

    def _text_features(self, prompt: str) -> torch.Tensor:
        from .tokenizer import tokenize_for

        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("the prompt is empty: describe the image to generate, e.g. \"a red apple on a table\"")
        tokens = tokenize_for(self.model, [prompt], "the prompt", stacklevel=3)
        with torch.no_grad(), self._autocast():
            features = self.model.encode_text(tokens.to(self.device))
        return F.normalize(features.float(), dim=-1)

    def canvas_size(self) -> int:
        size = self.config.size or self.resolution
        if not (isinstance(size, int) and 16 <= size <= 4 * self.resolution):
            raise ValueError(f"size must be an integer from 16 to {4 * self.resolution} (4x the model's "
                             f"{self.resolution} px input), got {size!r}")
        return size

    def start_image(self, text: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
        """The prior sample most similar to the prompt, or the configured ``init`` without a prior (on the CPU)."""
        cfg = self.config
        if self.prior is not None and cfg.init == "auto" and cfg.prior_samples > 0:
            def score(samples: torch.Tensor) -> torch.Tensor:
                views = upsample(samples.to(self.device), self.resolution)
                with torch.no_grad():
                    return (self._encode(views) @ text.T).squeeze(1).cpu()
            return upsample(self.prior.best_match(score, cfg.prior_samples, generator), size)
        if cfg.init in ("auto", "noise"):  # a data-free stand-in for a prior sample: 16x16 colour noise around mid-grey
            small = (0.5 + 0.2 * torch.randn(1, 3, 16, 16, generator=generator)).clamp(0, 1)
            return upsample(small, size)
        if cfg.init == "gray":
            return torch.full((1, 3, size, size), 0.5)
        if cfg.init == "dark":  # the start the notebook has commented out: uniform noise * 0.05
            return torch.rand(1, 3, size, size, generator=generator) * 0.05
        path = Path(cfg.init)
        if not path.is_file():
            raise ValueError(f"init must be one of {INITS} or an image file, got {cfg.init!r}")
        import torchvision.transforms.functional as TF

        with Image.open(path) as image:
            tensor = TF.to_tensor(TF.center_crop(TF.resize(image.convert("RGB"), size), [size, size]))
        return tensor.unsqueeze(0)

    def views(self, x: torch.Tensor, generator: torch.Generator | None, augment: A.DiffAugment) -> torch.Tensor:
        """The step's views of canvas ``x`` (1, 3, S, S): ``global_views`` noisy augmented copies, then
        ``patch_views`` augmented patch crops, all at the model's resolution and in this order."""
        cfg, r = self.config, self.resolution
        g, p = cfg.global_views, cfg.patch_views
        views = []
        if g:
            views.append(augment(A.add_noise(A.resize_to(x, r).expand(g, -1, -1, -1), cfg.noise,
                                             generator=generator), generator))
        if p:
            crop = max(1, round(cfg.patch_fraction * x.shape[-1]))
            shared = A.add_noise(x, cfg.noise, shared=True, generator=generator).expand(p, -1, -1, -1)
            views.append(augment(A.random_crops(shared, crop, r, generator).clamp(0, 1), generator))
        return views[0] if len(views) == 1 else torch.cat(views)

    def losses_of(self, features: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(total, global, patch)`` losses from the features of all of a step's views (see :meth:`views`)."""
        cfg = self.config
        g, p = cfg.global_views, cfg.patch_views
        distance = 1 - (features @ text.T).squeeze(1)
        zero = distance.new_zeros(())
        global_loss = distance[:g].mean() if g else zero
        patch = distance[g:]
        if p and cfg.rejection > 0:  # keep only the hardest patches (those above the quantile)
            patch = torch.where(patch < torch.quantile(patch.detach(), cfg.rejection), 0.0, patch)
        patch_loss = patch.mean() if p else zero
        return cfg.global_weight * global_loss + cfg.patch_weight * patch_loss, global_loss, patch_loss

    def step_many(self, sessions: list[Session]) -> list[Step]:
        """One step of several sessions of this generator, their views sharing encoder calls (``--batch K``).
        Each canvas keeps its own optimizer, clipping, thresholding and random stream."""
        with self._mode():
            parts = [session.prepare() for session in sessions]
            features = self.batcher.backward(parts)
        return [session.finish(f) for session, f in zip(sessions, features, strict=True)]

    # -- the loop -------------------------------------------------------------------------------------------
    def session(self, prompt: str, seed: int = 0) -> Session:
        """One generation driven step by step: ``s = gen.session(p); s.step() ...; s.result()``."""
        return Session(self, prompt, seed)

    def _mode(self) -> contextlib.AbstractContextManager:
        return optimizer_mode(self.model, self.config.fast)

    def run(self, prompt: str, *, seed: int = 0, callback: Callable[[Step], bool | None] | None = None,
            progress: bool = False) -> GenerationResult:
        """Generate one image. ``callback(step)`` runs after every step; returning True stops early.

        Ctrl-C raises :class:`GenerationInterrupted` (a ``KeyboardInterrupt``) carrying the best image so far.
        """
        return run_steps(self.session(prompt, seed), self.config.steps, label=prompt, progress=progress,
                         callback=callback, interrupted=GenerationInterrupted,
                         postfix=lambda step: {"loss": f"{step.loss:.4f}", "best": f"{step.best_loss:.4f}"})


class Session:
    """The state of one generation: the canvas, its optimizer, the best canvas so far, losses and frames.

    The model is put in :func:`~clipag.speed.input_grad_mode` only while :meth:`step` runs, so between steps
    (in callbacks, or interleaved with other work) it is exactly as the caller left it.
    """

    def __init__(self, generator: Generator, prompt: str, seed: int) -> None:
        self.generator, self.prompt, self.seed = generator, prompt, seed
        self.config = cfg = generator.config
        self.text = generator._text_features(prompt)
        self.size = generator.canvas_size()
        cpu_gen = torch.Generator().manual_seed(seed)
        device = generator.device
        self._gen = cpu_gen if device.type == "cpu" else torch.Generator(device).manual_seed(seed)
        self._augment = cfg.augmenter()
        self._quantile: torch.Tensor | None = None
        self.best: torch.Tensor | None = None
        self.best_loss, self.best_step = math.inf, -1
        self.losses: list[dict[str, float]] = []
        self.frames: list[Image.Image] = []
        with generator._mode():
            self.x = generator.start_image(self.text, self.size, cpu_gen).to(device).requires_grad_(True)
        self.start = to_pil(self.x)
        self.optimizer = torch.optim.AdamW([self.x], lr=cfg.lr, weight_decay=cfg.weight_decay)
        self._t0 = time.perf_counter()

    def prepare(self) -> ViewPart:
        """The first half of a step: this canvas's views and how they score (the encoder runs in between)."""
        cfg = self.config
        if cfg.compile:  # CUDA graphs may now reuse the last step's buffers
            torch.compiler.cudagraph_mark_step_begin()
        self.optimizer.zero_grad(set_to_none=True)
        self._quantile = None
        views = self.generator.views(self.x, self._gen, self._augment)
        needs_all = cfg.patch_views and cfg.rejection > 0
        return ViewPart(views, self._partial_loss, prepass=self._prepass if needs_all else None)

    def _prepass(self, features: torch.Tensor) -> None:
        """The rejection quantile needs every patch's distance before any micro-batch's gradient."""
        g = self.config.global_views
        self._quantile = torch.quantile(1 - (features[g:] @ self.text.T).squeeze(1), self.config.rejection)

    def _partial_loss(self, features: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """The contribution of views ``start:stop`` to :meth:`Generator.losses_of`'s total (its means as sums)."""
        cfg = self.config
        g, p = cfg.global_views, cfg.patch_views
        distance = 1 - (features @ self.text.T).squeeze(1)
        loss = distance.new_zeros(())
        if start < g:
            loss = loss + cfg.global_weight * (distance[:g - start].sum() / g)
        if stop > g:
            patch = distance[max(g - start, 0):]
            if cfg.rejection > 0:
                if self._quantile is None:  # one encoder call: every patch is here
                    assert start <= g and stop == g + p, "rejection with several micro-batches needs the prepass"
                    self._quantile = torch.quantile(patch.detach(), cfg.rejection)
                patch = torch.where(patch < self._quantile, 0.0, patch)
            loss = loss + cfg.patch_weight * (patch.sum() / p)
        return loss

    def finish(self, features: torch.Tensor) -> Step:
        """The second half of a step, once the canvas has its gradient: clip, keep the best, update, threshold."""
        cfg, x, n = self.config, self.x, len(self.losses)
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([x], cfg.grad_clip)
        with torch.no_grad():
            losses = self.generator.losses_of(features, self.text)
        total, glob, patch = torch.stack(losses).tolist()
        tracked = glob if cfg.global_views else total
        if tracked < self.best_loss:  # keep the canvas these losses were measured on
            self.best, self.best_loss, self.best_step = x.detach().clone(), tracked, n
        self.optimizer.step()
        with torch.no_grad():
            x.copy_(dynamic_threshold(x, cfg.threshold) if cfg.threshold > 0 else x.clamp(0, 1))
        self.losses.append({"loss": total, "global": glob, "patch": patch})
        if cfg.frame_every and (n % cfg.frame_every == 0 or n == cfg.steps - 1):
            self.frames.append(to_pil(x))
        return Step(n, total, glob, patch, self.best_loss, x.detach())

    def step(self) -> Step:
        """One optimization step; returns its losses (measured on the canvas before the update)."""
        return self.generator.step_many([self])[0]

    def result(self, interrupted: bool = False) -> GenerationResult:
        best = self.best if self.best is not None else self.x.detach().clone()
        return GenerationResult(prompt=self.prompt, seed=self.seed, image=to_pil(best), tensor=best.cpu(),
                                best_step=self.best_step, best_loss=self.best_loss, losses=self.losses,
                                frames=self.frames, start=self.start, steps_done=len(self.losses),
                                seconds=time.perf_counter() - self._t0, interrupted=interrupted)


def generate_result(prompt: str, *, model: Any = "ViT-B/32", steps: int = 100, seed: int = 0,
                    device: str | torch.device | None = None, prior: Prior | str | os.PathLike | None = "auto",
                    config: GenerateConfig | None = None, progress: bool = False,
                    callback: Callable[[Step], bool | None] | None = None, **knobs: Any) -> GenerationResult:
    """:func:`generate`, returning the :class:`GenerationResult` (frames, per-step losses, timing)."""
    unknown = set(knobs) - {f.name for f in dataclasses.fields(GenerateConfig)}
    if unknown:
        raise TypeError(f"unknown generation option(s) {sorted(unknown)}; see clipag.generation.GenerateConfig")
    cfg = dataclasses.replace(config or GenerateConfig(), steps=steps, **knobs)
    generator = Generator(model, device=device, prior=prior, config=cfg)
    return generator.run(prompt, seed=seed, callback=callback, progress=progress)


def generate(prompt: str, *, model: Any = "ViT-B/32", steps: int = 100, seed: int = 0,
             device: str | torch.device | None = None, prior: Prior | str | os.PathLike | None = "auto",
             config: GenerateConfig | None = None, progress: bool = False,
             callback: Callable[[Step], bool | None] | None = None, **knobs: Any) -> Image.Image:
    """Text → image with CLIPAG and no generator: optimize the pixels for ``steps`` steps; return the best.

    ``model`` is anything :func:`clipag.load` takes or a loaded model; ``knobs`` override
    :class:`GenerateConfig` fields (e.g. ``global_views=16``, ``size=448``, ``init="gray"``).
    """
    return generate_result(prompt, model=model, steps=steps, seed=seed, device=device, prior=prior, config=config,
                           progress=progress, callback=callback, **knobs).image
