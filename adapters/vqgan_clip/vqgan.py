"""taming's ``VQModel``, ``GumbelVQ`` and ``Net2NetTransformer`` (first stage only), without Lightning.

Constructors take taming's yaml ``model.params`` as they are, so ``VQModel(**config.model.params)`` works on a
published config. ``lossconfig`` is kept, never built: taming's would construct LPIPS and download VGG weights,
and nothing but training reads it. ``init_from_ckpt`` reads Lightning checkpoints without running their pickles
(:mod:`.checkpoint`), and is strict where taming is silent: a missing model weight is an error.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import load_model_weights
from .modules import Decoder, Encoder, GumbelQuantize, VectorQuantizer2

__all__ = ["VQModel", "GumbelVQ", "Net2NetTransformer", "TrainingOnly", "TARGETS", "load_config",
           "build_from_config", "load_vqgan"]


def _plain(value: Any) -> Any:
    """OmegaConf containers (what ``OmegaConf.load`` gives upstream scripts) as plain dicts and lists."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, DictConfig | ListConfig):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:
        pass
    return value


class TrainingOnly(nn.Module):
    """Holds a training-only sub-config (``lossconfig``) unbuilt: no LPIPS, no VGG download, no parameters.

    Attributes can be set on it (taming's GumbelVQ sets ``loss.n_classes``) and ``del model.loss`` works.
    """

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = _plain(config)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        target = (self.config or {}).get("target", "?") if isinstance(self.config, dict) else "?"
        raise RuntimeError(f"the VQGAN's training loss ({target}) is not built by clipag: it is only needed to "
                           "train a VQGAN, which clipag does not do")


class VQModel(nn.Module):
    """Encoder → quant_conv → VectorQuantizer2 → post_quant_conv → Decoder, as taming's ``VQModel``."""

    def __init__(self, ddconfig: Mapping[str, Any], lossconfig: Any, n_embed: int, embed_dim: int,
                 ckpt_path: str | None = None, ignore_keys: list[str] | tuple[str, ...] = (), image_key: str = "image",
                 colorize_nlabels: int | None = None, monitor: str | None = None, remap: str | None = None,
                 sane_index_shape: bool = False, **unused: Any) -> None:
        super().__init__()
        ddconfig = dict(_plain(ddconfig))
        self.image_key, self.ddconfig, self.n_embed, self.embed_dim = image_key, ddconfig, n_embed, embed_dim
        self.encoder = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        self.loss = TrainingOnly(lossconfig)
        self.quantize: nn.Module = VectorQuantizer2(n_embed, embed_dim, beta=0.25, remap=remap,
                                                    sane_index_shape=sane_index_shape)
        self.quant_conv = nn.Conv2d(ddconfig["z_channels"], embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)
        if colorize_nlabels is not None:
            self.register_buffer("colorize", torch.randn(3, colorize_nlabels, 1, 1))
        if monitor is not None:
            self.monitor = monitor
        if ckpt_path is not None:
            self.init_from_ckpt(ckpt_path, ignore_keys=list(ignore_keys))

    @property
    def downsample_factor(self) -> int:
        """Pixels per latent position along each side (16 for the f16 models)."""
        return 2 ** (self.decoder.num_resolutions - 1)

    @property
    def codebook(self) -> torch.Tensor:
        """The (n_embed, embed_dim) codebook that latents are quantized to."""
        return self.quantize.embedding.weight

    def init_from_ckpt(self, path: str | os.PathLike, ignore_keys: list[str] | tuple[str, ...] = ()) -> None:
        """Load weights from a taming/Lightning ``.ckpt`` (converted once to safetensors) or a ``.safetensors``."""
        report = load_model_weights(self, path, ignore_keys=tuple(ignore_keys))
        print(f"[clipag] VQGAN restored from {path}{report}", file=sys.stderr)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple]:
        """Image in [-1, 1] → ``(quantized latent, codebook loss, (None, None, indices))``."""
        return self.quantize(self.quant_conv(self.encoder(x)))

    def decode(self, quant: torch.Tensor) -> torch.Tensor:
        """Latent → image in (about) [-1, 1]; differentiable with respect to ``quant``."""
        return self.decoder(self.post_quant_conv(quant))

    def decode_code(self, code_b: torch.Tensor) -> torch.Tensor:
        return self.decode(self.quantize.embed_code(code_b))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        quant, diff, _ = self.encode(x)
        return self.decode(quant), diff

    def get_last_layer(self) -> torch.Tensor:
        return self.decoder.conv_out.weight


class GumbelVQ(VQModel):
    """taming's ``GumbelVQ``: a VQModel whose quantizer samples codes with Gumbel-softmax (the f8-8192 model)."""

    def __init__(self, ddconfig: Mapping[str, Any], lossconfig: Any, n_embed: int, embed_dim: int,
                 temperature_scheduler_config: Any = None, ckpt_path: str | None = None,
                 ignore_keys: list[str] | tuple[str, ...] = (), image_key: str = "image",
                 colorize_nlabels: int | None = None, monitor: str | None = None, kl_weight: float = 1e-8,
                 remap: str | None = None, **unused: Any) -> None:
        super().__init__(ddconfig, lossconfig, n_embed, embed_dim, ckpt_path=None, image_key=image_key,
                         colorize_nlabels=colorize_nlabels, monitor=monitor)
        self.loss.n_classes = n_embed
        self.vocab_size = n_embed
        self.quantize = GumbelQuantize(self.ddconfig["z_channels"], embed_dim, n_embed=n_embed,
                                       kl_weight=kl_weight, temp_init=1.0, remap=remap)
        # taming anneals the temperature during training only; the schedule is kept as config, not built.
        self.temperature_scheduler_config = _plain(temperature_scheduler_config)
        if ckpt_path is not None:
            self.init_from_ckpt(ckpt_path, ignore_keys=list(ignore_keys))

    @property
    def codebook(self) -> torch.Tensor:
        return self.quantize.embed.weight

    def encode_to_prequant(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x))

    def decode_code(self, code_b: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class _Unbuilt(nn.Module):
    """A sub-model of Net2NetTransformer that VQGAN+CLIP never runs (the GPT, the conditioning stage)."""

    def __init__(self, role: str, config: Any) -> None:
        super().__init__()
        self.role, self.config = role, _plain(config)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"clipag's Net2NetTransformer builds only the first stage (the VQGAN); the {self.role} "
                           "is not built. Sampling from the transformer needs the real taming-transformers.")


class Net2NetTransformer(nn.Module):
    """The first stage of taming's ``Net2NetTransformer``, which is all VQGAN+CLIP uses of it.

    The COCO, FacesHQ and S-FLCKR releases are transformer checkpoints whose VQGAN lives under
    ``first_stage_model.*``; the transformer and conditioning weights in them are reported and skipped.
    """

    def __init__(self, transformer_config: Any, first_stage_config: Any, cond_stage_config: Any = None,
                 permuter_config: Any = None, ckpt_path: str | None = None,
                 ignore_keys: list[str] | tuple[str, ...] = (), first_stage_key: str = "image",
                 cond_stage_key: str = "depth", unconditional: bool = False, **unused: Any) -> None:
        super().__init__()
        self.first_stage_key, self.cond_stage_key = first_stage_key, cond_stage_key
        self.be_unconditional = unconditional
        first = dict(_plain(first_stage_config))
        params = dict(first.get("params", {}))
        own = params.pop("ckpt_path", None)  # a training-time path in the released configs (logs/...)
        self.first_stage_model = build_from_config({"target": first["target"], "params": params})
        if own is not None:
            if Path(own).is_file():
                self.first_stage_model.init_from_ckpt(own)
            else:
                warnings.warn(f"first_stage_config names ckpt_path {own!r}, which does not exist; the first stage's "
                              "weights must come from this model's checkpoint instead", stacklevel=2)
        self.first_stage_model.eval()
        self.transformer = _Unbuilt("transformer", transformer_config)
        self.cond_stage_model = _Unbuilt("conditioning stage", cond_stage_config)
        self.permuter_config = _plain(permuter_config)
        if ckpt_path is not None:
            self.init_from_ckpt(ckpt_path, ignore_keys=list(ignore_keys))

    def init_from_ckpt(self, path: str | os.PathLike, ignore_keys: list[str] | tuple[str, ...] = ()) -> None:
        report = load_model_weights(self, path, ignore_keys=tuple(ignore_keys))
        print(f"[clipag] VQGAN (first stage of a Net2NetTransformer) restored from {path}{report}", file=sys.stderr)


# taming's ``model.target`` strings → the classes here.
TARGETS: dict[str, type[nn.Module]] = {
    "taming.models.vqgan.VQModel": VQModel,
    "taming.models.vqgan.GumbelVQ": GumbelVQ,
    "taming.models.cond_transformer.Net2NetTransformer": Net2NetTransformer,
}


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """A taming yaml as a dict (``{"model": {"target": ..., "params": ...}, ...}``); errors name the file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VQGAN config {path} not found")
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not a valid yaml file ({e})") from e
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict) or "target" not in config["model"]:
        raise ValueError(f"{path}: not a taming config (expected model.target and model.params)")
    return config


def build_from_config(config: Mapping[str, Any]) -> nn.Module:
    """Build ``config['target']`` (a taming class path) from ``config['params']``; unknown targets list the known."""
    config = _plain(config)
    target = config.get("target")
    if target not in TARGETS:
        raise ValueError(f"unknown VQGAN model type {target!r}; clipag builds {sorted(TARGETS)}")
    return TARGETS[target](**dict(config.get("params") or {}))


def load_vqgan(config: str | os.PathLike | Mapping[str, Any], checkpoint: str | os.PathLike | None,
               device: str | torch.device = "cpu") -> VQModel:
    """The VQGAN of a taming config + checkpoint, in eval mode with frozen weights, its ``loss`` removed.

    For a Net2NetTransformer config this is its ``first_stage_model``, as VQGAN+CLIP uses it.
    """
    cfg = load_config(config) if isinstance(config, str | os.PathLike) else dict(config)
    model = build_from_config(cfg["model"] if "model" in cfg else cfg)
    if checkpoint is not None:
        model.init_from_ckpt(checkpoint)
    if isinstance(model, Net2NetTransformer):
        model = model.first_stage_model
    model.eval().requires_grad_(False)
    del model.loss
    return model.to(device)
