"""VQGAN+CLIP (Crowson; nerdyrodent/VQGAN-CLIP ``generate.py``) with clipag's CLIP: optimize a VQGAN latent.

Per step: the latent ``z`` is snapped to its nearest codebook entries (straight-through), decoded to an image
in [0, 1], seen as ``cutn`` augmented cutouts, encoded by CLIP, and scored against each prompt by the
spherical distance with its weight and stop threshold; Adam (lr 0.1) moves ``z``, which is then clamped to
the codebook's per-channel range. Defaults are VQGAN-CLIP's; docs/vqgan_clip.md lists them.

Differences that change no result: the cutouts are pooled once (VQGAN-CLIP pools the same image ``cutn`` times),
the codebook lookup is an index instead of a one-hot matmul, CLIP's weights are frozen and run on
:func:`clipag.speed.input_grad_mode`'s exact fast paths. The seed is set *before* the start latent is drawn,
so unlike VQGAN-CLIP the same seed gives the same image.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from clipag.images import to_pil
from clipag.precision import autocast_for, check_amp
from clipag.progress import Interrupted, run_steps
from clipag.scale.memory import ViewBudget
from clipag.scale.views import ViewBatcher, ViewPart
from clipag.speed import optimizer_mode

from .cutouts import DEFAULT_AUGMENTS, Cutouts
from .losses import Prompt, clamp_with_grad, parse_prompts, split_prompt, vector_quantize

__all__ = ["VQGANCLIPConfig", "VQGANCLIP", "Session", "VQStep", "VQGANCLIPResult", "VQGANCLIPInterrupted",
           "DEFAULT_VQGAN"]

DEFAULT_VQGAN = "vqgan_imagenet_f16_16384"


@dataclass
class VQGANCLIPConfig(ViewBudget):
    """VQGAN-CLIP's knobs with its defaults (its ``-s`` default is 256 without a GPU, 512 with one), and
    :class:`~clipag.scale.memory.ViewBudget`'s two, which split the cutouts into encoder calls (same maths)."""

    steps: int = 500
    size: tuple[int, int] = (256, 256)  # width, height; rounded down to a multiple of the VQGAN's factor
    lr: float = 0.1
    cutn: int = 32
    augments: tuple[str, ...] = DEFAULT_AUGMENTS
    noise_fac: float = 0.1
    init_image: str | None = None
    init_weight: float = 0.0  # VQGAN-CLIP's decaying pull of z towards zero: w · mse(z, 0) / (2(2i+1))
    image_prompts: tuple[str, ...] = ()  # "path:weight:stop"
    frame_every: int = 0  # keep a frame every N steps (0: none)
    fast: bool = True  # clipag.speed's exact CLIP fast paths and the closed-form hue (same maths, ~1e-6)
    amp: str = "auto"  # CLIP under autocast: auto (bf16/fp16 on CUDA, off elsewhere), bf16, fp16, off

    def validate(self) -> None:
        if self.steps < 0 or self.cutn < 1 or self.lr <= 0:
            raise ValueError(f"need steps >= 0, cutn >= 1 and lr > 0 (got {self.steps}, {self.cutn}, {self.lr})")
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"size is (width, height) in pixels, got {self.size!r}")
        check_amp(self.amp)
        self.validate_budget()
        if self.init_image is not None and not Path(self.init_image).is_file():
            raise ValueError(f"init image {self.init_image} not found")
        for item in self.image_prompts:
            if not Path(split_prompt(item)[0]).is_file():
                raise ValueError(f"image prompt {split_prompt(item)[0]} not found")


@dataclass
class VQStep:
    step: int
    loss: float
    losses: list[float]  # per prompt (and the init-weight term first, if any), before this step's update


@dataclass
class VQGANCLIPResult:
    prompts: list[tuple[str, float, float]]
    seed: int
    image: Image.Image
    tensor: torch.Tensor
    losses: list[float] = field(default_factory=list)
    frames: list[Image.Image] = field(default_factory=list)
    steps_done: int = 0
    seconds: float = 0.0
    interrupted: bool = False


class VQGANCLIPInterrupted(Interrupted):
    """Ctrl-C during :meth:`VQGANCLIP.run`; ``.result`` holds the image as it was."""


class _RNG:
    """A private seeded RNG stream for kornia and noise (which draw from torch's global generator)."""

    def __init__(self, seed: int, device: torch.device) -> None:
        self.devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=self.devices):
            torch.manual_seed(seed)
            self.state = self._get()

    def _get(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in self.devices]

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        with torch.random.fork_rng(devices=self.devices):
            torch.set_rng_state(self.state[0])
            for device, state in zip(self.devices, self.state[1], strict=True):
                torch.cuda.set_rng_state(state, device)
            try:
                yield
            finally:
                self.state = self._get()


def _load_vqgan(vqgan: Any, config: Any, checkpoint: Any, device: torch.device) -> nn.Module:
    from .vqgan import load_vqgan

    if config is not None or checkpoint is not None:
        if config is None or checkpoint is None:
            raise ValueError("give both a VQGAN config (yaml) and its checkpoint, or a registry name")
        return load_vqgan(config, checkpoint, device)
    if isinstance(vqgan, nn.Module):
        return vqgan.eval().requires_grad_(False).to(device)
    from .registry import fetch_vqgan

    return load_vqgan(*fetch_vqgan(str(vqgan)), device)


class VQGANCLIP:
    """A CLIP and a VQGAN prepared for VQGAN+CLIP; :meth:`run` one prompt set at a time.

    ``model``: anything :func:`clipag.load` takes, or its ``(model, preprocess)`` pair. ``vqgan``: a registry name
    (``clipag.adapters.vqgan_clip.registry.VQGANS``), a loaded VQGAN, or ``config`` + ``checkpoint`` files.
    """

    def __init__(self, model: Any = "ViT-B/32", vqgan: Any = DEFAULT_VQGAN, *, config: Any = None,
                 checkpoint: Any = None, device: str | torch.device | None = None,
                 settings: VQGANCLIPConfig | None = None) -> None:
        from clipag.model import image_normalization

        from .registry import VQGANS, unknown_vqgan_error

        if isinstance(vqgan, str) and config is None and checkpoint is None and vqgan not in VQGANS:
            raise unknown_vqgan_error(vqgan)  # before the CLIP loads
        self.settings = settings or VQGANCLIPConfig()
        self.settings.validate()
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if isinstance(model, tuple):
            self.perceptor, preprocess = model
        else:
            from clipag.loader import load

            self.perceptor, preprocess = load(str(model), device=self.device, precision="fp32")
        self.perceptor.eval().requires_grad_(False)
        self._mean, self._std = image_normalization(preprocess, self.device)
        self.vqgan = _load_vqgan(vqgan, config, checkpoint, self.device)
        self.cut_size = int(self.perceptor.visual.input_resolution)
        self.factor = 2 ** (self.vqgan.decoder.num_resolutions - 1)
        codebook = self.vqgan.codebook.detach()
        self.codebook, self.codebook_sq = codebook, codebook.pow(2).sum(1)
        self.z_min = codebook.min(dim=0).values[None, :, None, None]
        self.z_max = codebook.max(dim=0).values[None, :, None, None]
        self.cutouts = Cutouts(self.cut_size, self.settings.cutn, self.settings.augments, self.settings.noise_fac,
                               fast_hue=self.settings.fast)
        self.batcher = ViewBatcher(self.encode_views, self.settings, self.device, self.perceptor)
        self._preprocess = preprocess

    def with_config(self, settings: VQGANCLIPConfig) -> VQGANCLIP:
        """The same CLIP and VQGAN under other settings (the prompt-file runner's per-item settings)."""
        return VQGANCLIP((self.perceptor, self._preprocess), self.vqgan, device=self.device, settings=settings)

    def _autocast(self) -> contextlib.AbstractContextManager:
        return autocast_for(self.settings.amp, self.device)

    def _mode(self) -> contextlib.AbstractContextManager:
        return optimizer_mode(self.perceptor, self.settings.fast)

    def encode_views(self, views: torch.Tensor) -> torch.Tensor:
        """CLIP features (float32) of views in [0, 1] at CLIP's input size, normalized as its preprocess does."""
        with self._autocast():
            return self.perceptor.encode_image((views - self._mean) / self._std).float()

    def synth(self, z: torch.Tensor) -> torch.Tensor:
        """Latent → image in [0, 1], through the straight-through vector quantizer."""
        z_q = vector_quantize(z.movedim(1, 3), self.codebook, self.codebook_sq).movedim(3, 1)
        return clamp_with_grad(self.vqgan.decode(z_q).add(1).div(2), 0, 1)

    def session(self, prompts: str | Sequence[str], seed: int = 0) -> Session:
        return Session(self, prompts, seed)

    def step_many(self, sessions: list[Session]) -> list[VQStep]:
        """One step of several images of this generator, their cutouts sharing CLIP calls (``--batch K``); each
        keeps its own latent, optimizer and random stream."""
        with self._mode():
            parts = [session.prepare() for session in sessions]
            features = self.batcher.backward(parts)
        return [session.finish(f) for session, f in zip(sessions, features, strict=True)]

    def run(self, prompts: str | Sequence[str], *, seed: int = 0, progress: bool = False,
            callback: Callable[[VQStep], bool | None] | None = None) -> VQGANCLIPResult:
        """Optimize for ``settings.steps`` steps; ``callback(step)`` returning True stops early.

        Ctrl-C raises :class:`VQGANCLIPInterrupted` carrying the image as it was.
        """
        session = self.session(prompts, seed)
        return run_steps(session, self.settings.steps, label=session.label, progress=progress, callback=callback,
                         interrupted=VQGANCLIPInterrupted, postfix=lambda step: {"loss": f"{step.loss:.4f}"})


def _resize_keep_area(image: Image.Image, out_size: tuple[int, int]) -> Image.Image:
    """VQGAN-CLIP's image-prompt resize: the aspect ratio kept, the area at most ``out_size``'s."""
    ratio = image.size[0] / image.size[1]
    area = min(image.size[0] * image.size[1], out_size[0] * out_size[1])
    return image.resize((round((area * ratio) ** 0.5), round((area / ratio) ** 0.5)), Image.LANCZOS)


def _to_tensor(image: Image.Image) -> torch.Tensor:
    import torchvision.transforms.functional as TF

    return TF.to_tensor(image.convert("RGB")).unsqueeze(0)


class Session:
    """The state of one VQGAN+CLIP run: the latent, its optimizer, the prompts, the losses and frames."""

    def __init__(self, gen: VQGANCLIP, prompts: str | Sequence[str], seed: int) -> None:
        from clipag.tokenizer import tokenize_for

        self.gen, self.seed, cfg = gen, seed, gen.settings
        device, f = gen.device, gen.factor
        toks_x, toks_y = cfg.size[0] // f, cfg.size[1] // f
        if toks_x < 1 or toks_y < 1:
            raise ValueError(f"size {cfg.size} is below the VQGAN's factor {f}: use at least {f}x{f}")
        self.side = (toks_x * f, toks_y * f)
        self.prompts = parse_prompts(prompts) if (prompts or not cfg.image_prompts) else []
        self.label = " | ".join(text for text, _, _ in self.prompts) or "image prompts"
        self.targets: list[Prompt] = []
        with torch.no_grad():
            for text, weight, stop in self.prompts:
                tokens = tokenize_for(gen.perceptor, text, f"prompt {text[:40]!r}...", stacklevel=3)
                embed = gen.perceptor.encode_text(tokens.to(device)).float()
                self.targets.append(Prompt(embed, weight, stop).to(device))
        self._rng = _RNG(seed, device)
        with self._rng.active(), torch.no_grad(), gen._mode():
            for item in cfg.image_prompts:
                path, weight, stop = split_prompt(item)
                with Image.open(path) as image:
                    tensor = _to_tensor(_resize_keep_area(image.convert("RGB"), self.side)).to(device)
                embed = gen.encode_views(gen.cutouts(tensor))
                self.targets.append(Prompt(embed, weight, stop).to(device))
            if cfg.init_image:
                with Image.open(cfg.init_image) as image:
                    tensor = _to_tensor(image.convert("RGB").resize(self.side, Image.LANCZOS)).to(device)
                z = gen.vqgan.encode(tensor * 2 - 1)[0]
            else:
                tokens = torch.randint(gen.codebook.shape[0], [toks_y * toks_x], device=device)
                z = gen.codebook[tokens].view(1, toks_y, toks_x, -1).permute(0, 3, 1, 2)
        self.z = z.detach().clone().contiguous().requires_grad_(True)
        self.optimizer = torch.optim.Adam([self.z], lr=cfg.lr)
        self.losses: list[float] = []
        self.frames: list[Image.Image] = []
        self._t0 = time.perf_counter()

    def _init_term(self, n: int) -> list[torch.Tensor]:
        weight = self.gen.settings.init_weight
        return [self.z.pow(2).mean() * (weight / (2 * n + 1)) / 2] if weight else []

    def prepare(self) -> ViewPart:
        """The first half of a step: decode the latent and cut this step's cutouts (from this run's random stream)."""
        n, every, gen = len(self.losses), self.gen.settings.frame_every, self.gen
        self.optimizer.zero_grad(set_to_none=True)
        with self._rng.active():
            image = gen.synth(self.z)
            views = gen.cutouts(image)
        if every and n % every == 0:
            self.frames.append(to_pil(image.detach()))
        init = self._init_term(n)
        self._init_values = [t.detach() for t in init]
        cutn = views.shape[0]

        def loss(features: torch.Tensor, start: int, stop: int) -> torch.Tensor:
            return sum(target.partial(features, cutn) for target in self.targets)

        return ViewPart(views, loss, extra=init[0] if init else None)

    def finish(self, features: torch.Tensor) -> VQStep:
        """The second half: Adam on the latent, then clamp it to the codebook's range."""
        self.optimizer.step()
        with torch.no_grad():
            self.z.copy_(self.z.maximum(self.gen.z_min).minimum(self.gen.z_max))
            terms = [*self._init_values, *(target(features) for target in self.targets)]
        values = torch.stack(terms).tolist()
        self.losses.append(math.fsum(values))
        return VQStep(len(self.losses) - 1, self.losses[-1], values)

    def step(self) -> VQStep:
        """One update of the latent; the losses (and a GIF frame) are of the image before it."""
        return self.gen.step_many([self])[0]

    def image(self) -> Image.Image:
        with torch.no_grad():
            return to_pil(self.gen.synth(self.z))

    def result(self, interrupted: bool = False) -> VQGANCLIPResult:
        with torch.no_grad():
            tensor = self.gen.synth(self.z).cpu()
        return VQGANCLIPResult(prompts=self.prompts, seed=self.seed, image=to_pil(tensor), tensor=tensor,
                               losses=list(self.losses), frames=list(self.frames), steps_done=len(self.losses),
                               seconds=time.perf_counter() - self._t0, interrupted=interrupted)
