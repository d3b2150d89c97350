"""CLIPDraw (Frans et al. 2021) with any CLIP ``clipag.load`` takes: optimize vector strokes so CLIP sees the prompt.

The algorithm and its defaults are kvfrans/clipdraw's (docs/clipdraw.md): 256 open cubic Bézier strokes of 1–3
segments starting within 0.1 of the canvas around a random point, width 1, random RGBA; Adam on points (lr 1,
then 0.4 from 50% and 0.1 from 75% of the steps), widths (0.1, clamped to [1, 50]) and colours (0.01, clamped
to [0, 1]); each step renders the strokes over white and scores 4 augmented views (perspective 0.5 with white
fill, then a random resized crop of 70–90%) by ``-Σ cos(text, view)``, optionally ``+ 0.3 Σ cos(negative,
view)`` for upstream's two negative prompts. Views are not normalized by default (upstream's choice).

Deviations, each documented in docs/clipdraw.md: the render is composited over white *inside* the rasterizer
(exact anti-aliasing, so PNG and SVG agree; diffvg's un-premultiplied output darkens edges slightly), views are
resized to the model's input size when it is not the canvas's, Ctrl-C keeps what ``keep`` asks for (the last
completed step's drawing by default), and the random start strokes come from ``random.Random(seed)`` drawn in
upstream's order (so ``random.seed(seed)`` before upstream's loop gives the same start).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from clipag.augment import resize_to
from clipag.extras import import_module
from clipag.images import to_pil
from clipag.loader import input_resolution, resolve_model
from clipag.precision import autocast_for, check_amp
from clipag.progress import Interrupted, run_steps
from clipag.scale.memory import ViewBudget
from clipag.scale.views import ViewBatcher, ViewPart
from clipag.speed import optimizer_mode

from .geometry import STROKE, build_structure
from .raster import rasterize
from .scene import Path, ShapeGroup
from .svg import save_svg, svg_string

__all__ = ["DrawConfig", "Drawing", "DrawingInterrupted", "Drawer", "DrawSession", "draw", "initial_strokes"]

NEGATIVE_PROMPTS = ("A badly drawn sketch.", "Many ugly, messy drawings.")


@dataclass
class DrawConfig(ViewBudget):
    """Upstream's knobs with upstream's values (and :class:`~clipag.scale.memory.ViewBudget`'s two, which split
    the views into encoder calls without changing the maths)."""

    strokes: int = 256
    steps: int = 1000
    size: int = 224  # canvas side in pixels
    min_segments: int = 1
    max_segments: int = 3
    radius: float = 0.1  # spread of a stroke's control points, as a fraction of the canvas
    width: float = 1.0  # start half-width (diffvg's stroke_width)
    max_width: float = 50.0
    lr_points: float = 1.0
    lr_width: float = 0.1
    lr_color: float = 0.01
    schedule: tuple[tuple[float, float], ...] = ((0.5, 0.4), (0.75, 0.1))  # (fraction of steps, points lr)
    augmentations: int = 4
    distortion: float = 0.5
    crop_scale: tuple[float, float] = (0.7, 0.9)
    normalize: bool = False  # upstream's use_normalized_clip
    negative: bool = False  # upstream's use_negative
    negative_weight: float = 0.3
    keep: str = "last"  # last (upstream) | best (the lowest-loss drawing); Ctrl-C keeps the same
    amp: str = "auto"  # CLIP under autocast: auto (bf16/fp16 on CUDA, off elsewhere), bf16, fp16, off
    frame_every: int = 10  # keep a frame every this many steps (0 = none)
    fast: bool = True  # clipag.speed's encoder fast paths (same maths); weights are frozen either way

    def validate(self) -> None:
        if self.strokes < 1 or self.steps < 0 or self.augmentations < 1:
            raise ValueError("strokes and augmentations must be >= 1 and steps >= 0")
        if not 1 <= self.min_segments <= self.max_segments:
            raise ValueError("need 1 <= min_segments <= max_segments")
        if not 16 <= self.size <= 4096:
            raise ValueError(f"size must be from 16 to 4096 pixels, got {self.size}")
        if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        if self.keep not in ("best", "last"):
            raise ValueError(f"keep must be 'best' or 'last', got {self.keep!r}")
        check_amp(self.amp)
        self.validate_budget()


@dataclass
class Strokes:
    """Packed stroke parameters (the optimizer's leaves) and their fixed topology."""

    points: torch.Tensor  # (P, 2) pixels
    widths: torch.Tensor  # (N,) half-widths
    colors: torch.Tensor  # (N, 4) RGBA
    segments: list[int]  # cubic segments per stroke

    def detached(self) -> Strokes:
        return Strokes(self.points.detach().clone(), self.widths.detach().clone(), self.colors.detach().clone(),
                       list(self.segments))

    def scene(self) -> tuple[list[Path], list[ShapeGroup]]:
        """diffvg-style shapes and groups (CPU copies) for SVG files."""
        shapes, groups, start = [], [], 0
        points, widths, colors = self.points.detach().cpu(), self.widths.detach().cpu(), self.colors.detach().cpu()
        for i, k in enumerate(self.segments):
            shapes.append(Path([2] * k, points[start:start + 3 * k + 1], False, widths[i]))
            groups.append(ShapeGroup([i], None, stroke_color=colors[i]))
            start += 3 * k + 1
        return shapes, groups


def initial_strokes(config: DrawConfig, seed: int) -> Strokes:
    """Upstream's random start, drawn from ``random.Random(seed)`` in upstream's order."""
    rng = random.Random(seed)
    size, radius = config.size, config.radius
    points, colors, segments = [], [], []
    for _ in range(config.strokes):
        k = rng.randint(config.min_segments, config.max_segments)
        p = (rng.random(), rng.random())
        path = [p]
        for _ in range(3 * k):
            p = (p[0] + radius * (rng.random() - 0.5), p[1] + radius * (rng.random() - 0.5))
            path.append(p)
        points.extend(path)
        segments.append(k)
        colors.append([rng.random() for _ in range(4)])
    return Strokes(torch.tensor(points) * size, torch.full((config.strokes,), config.width), torch.tensor(colors),
                   segments)


@dataclass
class Drawing:
    prompt: str
    seed: int
    strokes: Strokes  # the kept drawing (best or last)
    image: Image.Image  # its render over white, at the canvas size
    size: int
    best_step: int
    best_loss: float
    losses: list[float] = field(default_factory=list)
    frames: list[Image.Image] = field(default_factory=list)
    steps_done: int = 0
    seconds: float = 0.0
    interrupted: bool = False

    def svg(self) -> str:
        return svg_string(self.size, self.size, *self.strokes.scene(), background="white")

    def save_svg(self, path: str | os.PathLike) -> os.PathLike:
        return save_svg(path, self.size, self.size, *self.strokes.scene(), background="white")


class DrawingInterrupted(Interrupted):
    """Ctrl-C while drawing; ``.result`` holds the drawing kept so far."""


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed the CPU generator kornia draws its augmentation parameters from (on any device), and restore it
    afterwards: the caller's random state, CPU or device, is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


class Drawer:
    """A model prepared for CLIPDraw; :meth:`run` one prompt at a time (the CLI reuses it across prompts).

    ``model``: anything :func:`clipag.load` takes, or a loaded CLIP model (used on its own device; pass its
    ``preprocess`` to use ``normalize=True``).
    """

    def __init__(self, model: Any = "ViT-B/32", *, device: str | torch.device | None = None,
                 config: DrawConfig | None = None, preprocess: Any = None) -> None:
        K = import_module("kornia.augmentation", "clipdraw", "CLIPDraw")

        self.config = cfg = config or DrawConfig()
        cfg.validate()
        self.model, loaded_preprocess, self.device = resolve_model(model, device)
        preprocess = loaded_preprocess if loaded_preprocess is not None else preprocess
        self.preprocess = preprocess
        self.resolution = input_resolution(self.model)
        self._mean = self._std = None
        if cfg.normalize:
            if preprocess is None:
                raise ValueError("normalize=True needs the model's preprocess (clipag.load returns it)")
            from clipag.model import image_normalization

            self._mean, self._std = image_normalization(preprocess, self.device)
        self._perspective = K.RandomPerspective(distortion_scale=cfg.distortion, p=1.0)
        self._crop = K.RandomResizedCrop((cfg.size, cfg.size), scale=cfg.crop_scale)
        self._structure = None
        self._white = torch.ones(cfg.size, cfg.size, 4, device=self.device)
        self.batcher = ViewBatcher(self.encode, cfg, self.device, self.model)

    def with_config(self, config: DrawConfig) -> Drawer:
        """The same model under another config (the prompt-file runner's per-item settings)."""
        return Drawer(self.model, device=self.device, config=config, preprocess=self.preprocess)

    def _text(self, prompts: list[str]) -> torch.Tensor:
        from clipag.tokenizer import tokenize_for

        tokens = tokenize_for(self.model, prompts, f"prompt {prompts[0][:40]!r}...", stacklevel=4).to(self.device)
        with torch.no_grad():
            return F.normalize(self.model.encode_text(tokens).float(), dim=-1)

    def render(self, strokes: Strokes) -> torch.Tensor:
        """``(1, 3, S, S)`` in [0, 1]: the strokes over white, differentiable in the stroke parameters."""
        size = self.config.size
        if self._structure is None or self._structure[0] != strokes.segments:
            structure = build_structure([[2] * k for k in strokes.segments], [False] * len(strokes.segments),
                                        [(STROKE, [i], True) for i in range(len(strokes.segments))],
                                        device=self.device)
            self._structure = (list(strokes.segments), structure)
        image = rasterize(strokes.points, strokes.widths, strokes.colors, self._structure[1], size, size,
                          background=self._white)
        return image[..., :3].permute(2, 0, 1)[None]

    def views(self, image: torch.Tensor, seed: int) -> torch.Tensor:
        """``augmentations`` views of ``image`` at the model's input size (kornia, batched on the device)."""
        batch = image.expand(self.config.augmentations, -1, -1, -1)
        with _seeded(seed):
            batch = self._perspective(batch - 1) + 1  # kornia pads with zeros; this makes the fill white
            batch = self._crop(batch)
        batch = resize_to(batch, self.resolution)
        if self._mean is not None:
            batch = (batch - self._mean) / self._std
        return batch

    def encode(self, views: torch.Tensor) -> torch.Tensor:
        """Unit-norm float32 features of (already normalised, if configured) views, under the ``amp`` autocast."""
        with autocast_for(self.config.amp, self.device):
            encoded = self.model.encode_image(views)
        return F.normalize(encoded.float(), dim=-1)

    def loss_of(self, features: torch.Tensor, text: torch.Tensor, negatives: torch.Tensor | None) -> torch.Tensor:
        """Upstream's loss of these views' features: ``-Σ cos(text, view) (+ w Σ cos(negative, view))``; a sum over
        views, so any split of the views adds up to the whole."""
        loss = -(features @ text.T).sum()
        if negatives is not None:
            loss = loss + self.config.negative_weight * (features @ negatives.T).sum()
        return loss

    def loss(self, image: torch.Tensor, text: torch.Tensor, negatives: torch.Tensor | None, seed: int) -> torch.Tensor:
        return self.loss_of(self.encode(self.views(image, seed)), text, negatives)

    def step_many(self, sessions: list[DrawSession]) -> list[DrawStep]:
        """One step of several drawings of this drawer, their views sharing encoder calls (``--batch K``)."""
        with self._mode():
            parts = [session.prepare() for session in sessions]
            features = self.batcher.backward(parts)
        return [session.finish(f) for session, f in zip(sessions, features, strict=True)]

    def _mode(self) -> contextlib.AbstractContextManager:
        return optimizer_mode(self.model, self.config.fast)

    def session(self, prompt: str, *, seed: int = 0, start: Strokes | None = None) -> DrawSession:
        """One drawing driven step by step: ``s = drawer.session(p); s.step() ...; s.result()``."""
        return DrawSession(self, prompt, seed, start)

    def run(self, prompt: str, *, seed: int = 0, start: Strokes | None = None, progress: bool = False,
            callback: Callable[[int, float], bool | None] | None = None) -> Drawing:
        """Draw ``prompt``. ``start`` overrides the random start strokes; ``callback(step, loss)`` returning True
        stops early. Ctrl-C raises :class:`DrawingInterrupted` carrying the drawing kept so far."""
        return run_steps(self.session(prompt, seed=seed, start=start), self.config.steps, label=prompt,
                         progress=progress, callback=None if callback is None else lambda s: callback(s.step, s.loss),
                         interrupted=DrawingInterrupted,
                         postfix=lambda s: {"loss": f"{s.loss:.4f}", "best": f"{s.best_loss:.4f}"})


@dataclass(frozen=True)
class DrawStep:
    step: int
    loss: float
    best_loss: float


class DrawSession:
    """One CLIPDraw run: the strokes, their optimizer and schedule, the lowest-loss drawing, losses and frames."""

    def __init__(self, drawer: Drawer, prompt: str, seed: int, start: Strokes | None) -> None:
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("the prompt is empty: describe the drawing, e.g. \"a watercolor painting of a fox\"")
        self.drawer, self.prompt, self.seed = drawer, prompt, seed
        cfg = drawer.config
        self.text = drawer._text([prompt])
        self.negatives = drawer._text(list(NEGATIVE_PROMPTS)) if cfg.negative else None
        s = (start or initial_strokes(cfg, seed)).detached()
        device = drawer.device
        self.strokes = Strokes(s.points.to(device).requires_grad_(), s.widths.to(device).requires_grad_(),
                               s.colors.to(device).requires_grad_(), s.segments)
        self.optimizer = torch.optim.Adam([{"params": [self.strokes.points], "lr": cfg.lr_points},
                                           {"params": [self.strokes.widths], "lr": cfg.lr_width},
                                           {"params": [self.strokes.colors], "lr": cfg.lr_color}])
        self.switches = {int(cfg.steps * fraction): lr for fraction, lr in cfg.schedule}
        self.best, self.best_loss, self.best_step = self.strokes.detached(), math.inf, -1
        self.last = self.strokes.detached()  # after the last completed step: what Ctrl-C keeps with keep="last"
        self.losses: list[float] = []
        self.frames: list[Image.Image] = []
        self.t0 = time.perf_counter()

    def prepare(self) -> ViewPart:
        """The first half of a step: render, and this step's augmented views (the encoder runs in between)."""
        drawer, t = self.drawer, len(self.losses)
        if t in self.switches:
            self.optimizer.param_groups[0]["lr"] = self.switches[t]
        self.optimizer.zero_grad(set_to_none=True)
        self._image = drawer.render(self.strokes)
        views = drawer.views(self._image, self.seed * 1_000_003 + t)
        return ViewPart(views, lambda features, start, stop: drawer.loss_of(features, self.text, self.negatives))

    def finish(self, features: torch.Tensor) -> DrawStep:
        """The second half: keep the best, update, clamp widths and colours."""
        cfg, strokes, t = self.drawer.config, self.strokes, len(self.losses)
        with torch.no_grad():
            value = float(self.drawer.loss_of(features, self.text, self.negatives))
        if value < self.best_loss:  # keep the drawing this loss was measured on
            self.best, self.best_loss, self.best_step = strokes.detached(), value, t
        self.optimizer.step()
        with torch.no_grad():
            strokes.widths.clamp_(1.0, cfg.max_width)
            strokes.colors.clamp_(0.0, 1.0)
        self.last = strokes.detached()
        self.losses.append(value)
        if cfg.frame_every and (t % cfg.frame_every == 0 or t == cfg.steps - 1):
            self.frames.append(to_pil(self._image.detach()))
        self._image = None
        return DrawStep(t, value, self.best_loss)

    def step(self) -> DrawStep:
        return self.drawer.step_many([self])[0]

    def result(self, interrupted: bool = False) -> Drawing:
        """The drawing ``cfg.keep`` asks for: the last one or the lowest-loss one. After Ctrl-C, "last" is the drawing
        of the last completed step (the interrupted step may have moved only some of the strokes)."""
        cfg = self.drawer.config
        if cfg.keep == "best" and self.best_step >= 0:
            kept = self.best
        else:
            kept = self.last if interrupted else self.strokes.detached()
        with torch.no_grad():
            image = to_pil(self.drawer.render(kept))  # kept comes from the strokes, already on the device
        return Drawing(self.prompt, self.seed, kept, image, cfg.size, self.best_step, self.best_loss,
                       list(self.losses), list(self.frames), len(self.losses), time.perf_counter() - self.t0,
                       interrupted)


def draw(prompt: str, *, model: Any = "ViT-B/32", steps: int = 1000, strokes: int = 256, seed: int = 0,
         device: str | torch.device | None = None, progress: bool = False, **knobs: Any) -> Drawing:
    """CLIPDraw one prompt with upstream's defaults; ``knobs`` override :class:`DrawConfig` fields."""
    unknown = set(knobs) - {f.name for f in dataclasses.fields(DrawConfig)}
    if unknown:
        raise TypeError(f"unknown drawing option(s) {sorted(unknown)}; see clipag.adapters.clipdraw.DrawConfig")
    config = dataclasses.replace(DrawConfig(), steps=steps, strokes=strokes, **knobs)
    return Drawer(model, device=device, config=config).run(prompt, seed=seed, progress=progress)
