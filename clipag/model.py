"""The model: open_clip's CLIP with OpenAI's ``clip`` surface.

open_clip's CLIP already has OpenAI's parameter names (``visual.conv1``, ``token_embedding``,
``transformer.resblocks``...), so we subclass it rather than wrap it: the weights are the same
tensors and only the behaviour that downstream code relies on changes (``dtype``, input casting,
``visual.input_resolution`` and a ``forward`` that returns logits).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transform import PreprocessCfg, image_transform_v2

from .registry import OPENAI_MEAN, OPENAI_STD

__all__ = ["CLIP", "CustomTextCLIP", "build_model", "load_weights", "make_preprocess", "attach_preprocess",
           "normalization_of", "image_normalization", "WeightsMismatchError"]

PRECISIONS = ("fp32", "fp16", "bf16")


class WeightsMismatchError(RuntimeError):
    """The checkpoint's keys or shapes don't fit the architecture it was loaded into."""


class OpenAICompatible:
    """Mixin giving an open_clip model OpenAI's ``clip.model.CLIP`` behaviour."""

    visual: torch.nn.Module
    logit_scale: torch.nn.Parameter

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        image_size = getattr(self.visual, "image_size", None)
        size = image_size[0] if isinstance(image_size, tuple | list) else image_size
        self.visual.input_resolution = int(size)
        if not hasattr(self.visual, "output_dim"):
            self.visual.output_dim = kwargs.get("embed_dim", args[0] if args else None)

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype, as OpenAI reads it: that of the patch-embedding (or first) weight."""
        conv1 = getattr(self.visual, "conv1", None)
        if conv1 is not None:
            return conv1.weight.dtype
        return next(p for p in self.visual.parameters() if p.is_floating_point()).dtype

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return super().encode_image(image.type(self.dtype), normalize=normalize)

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits_per_image, logits_per_text)`` as OpenAI's CLIP returns (open_clip returns features)."""
        image_features = F.normalize(self.encode_image(image), dim=-1)
        text_features = F.normalize(self.encode_text(text), dim=-1)
        logits_per_image = self.logit_scale.exp() * image_features @ text_features.t()
        if getattr(self, "logit_bias", None) is not None:
            logits_per_image = logits_per_image + self.logit_bias
        return logits_per_image, logits_per_image.t()


class CLIP(OpenAICompatible, open_clip.CLIP):
    """open_clip ``CLIP`` (standard text tower) with the OpenAI surface."""


class CustomTextCLIP(OpenAICompatible, open_clip.CustomTextCLIP):
    """open_clip ``CustomTextCLIP`` (e.g. Hugging Face text towers) with the OpenAI surface."""


_INIT_FUNCTIONS = ("normal_", "uniform_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_",
                   "xavier_uniform_", "xavier_normal_", "constant_", "zeros_", "ones_", "orthogonal_")


@contextlib.contextmanager
def skip_init() -> Iterator[None]:
    """Skip random initialisation while building a model whose every weight is loaded next.

    Random init of ViT-B/32 costs more than reading its weights from safetensors; a strict
    ``load_state_dict`` afterwards guarantees no uninitialised tensor survives.
    """
    saved = {name: getattr(torch.nn.init, name) for name in _INIT_FUNCTIONS}
    try:
        for name in _INIT_FUNCTIONS:
            setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.nn.init, name, fn)


def build_model(config: dict[str, Any], precision: str = "fp32", device: str | torch.device = "cpu",
                initialize: bool = True) -> CLIP | CustomTextCLIP:
    """Build the architecture an open_clip ``model_cfg`` describes, on ``device`` at ``precision``.

    ``precision`` follows OpenAI: ``fp16``/``bf16`` convert matmul and conv weights while LayerNorm stays
    fp32. ``initialize=False`` leaves weights uninitialised for a caller that loads all of them.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    cfg = copy.deepcopy(config)
    if "multimodal_cfg" in cfg:
        raise NotImplementedError("CoCa-style models (multimodal_cfg) have no OpenAI CLIP counterpart")
    vision_cfg, text_cfg = cfg.setdefault("vision_cfg", {}), cfg.setdefault("text_cfg", {})
    if "timm_model_name" in vision_cfg:
        vision_cfg["timm_model_pretrained"] = False
    if "hf_model_name" in text_cfg:
        text_cfg["hf_model_pretrained"] = False
    custom_text = cfg.pop("custom_text", False) or "hf_model_name" in text_cfg
    model_class = CustomTextCLIP if custom_text else CLIP
    cast_dtype = open_clip.get_cast_dtype(precision)
    with contextlib.nullcontext() if initialize else skip_init():
        model = model_class(**cfg, cast_dtype=cast_dtype)
    model.to(device)
    if precision != "fp32":
        open_clip.convert_weights_to_lp(model, dtype=cast_dtype)
    return model.eval()


def load_weights(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str,
                 assign: bool = False) -> None:
    """Strictly load ``state_dict`` into ``model``; a mismatch names the file and the first bad keys.

    ``assign=True`` makes the model take ``state_dict``'s tensors (cast to the model's dtypes where they differ)
    instead of copying them into its own: loading then holds the weights once, not twice. The model's own
    uninitialised tensors (``build_model(initialize=False)``) were never written, so they were never resident.
    The caller must not reuse ``state_dict`` afterwards, since the model now owns its tensors.
    """
    state_dict = dict(state_dict)
    scale = state_dict.get("logit_scale")
    if scale is not None and scale.shape != model.logit_scale.shape:
        state_dict["logit_scale"] = scale.reshape(model.logit_scale.shape)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong_shape = sorted(k for k in set(expected) & set(state_dict) if expected[k].shape != state_dict[k].shape)
    if missing or unexpected or wrong_shape:
        details = "; ".join(f"{label}: {keys[:5]}{' ...' if len(keys) > 5 else ''}"
                            for label, keys in (("missing", missing), ("unexpected", unexpected),
                                                ("wrong shape", wrong_shape)) if keys)
        raise WeightsMismatchError(f"{source}: weights do not fit the architecture ({details})")
    if assign:  # assign keeps the state dict's dtype and device; keep the model's (e.g. fp16 weights, fp32 norms)
        state_dict = {k: v.to(device=expected[k].device, dtype=expected[k].dtype) for k, v in state_dict.items()}
    model.load_state_dict(state_dict, strict=True, assign=assign)


def make_preprocess(image_size: int, preprocess_cfg: dict[str, Any] | None = None) -> Any:
    """OpenAI's eval transform (bicubic resize of the short side, center crop, RGB, normalize)."""
    cfg = {**(preprocess_cfg or {}), "size": image_size}
    known = PreprocessCfg.__dataclass_fields__
    return image_transform_v2(PreprocessCfg(**{k: v for k, v in cfg.items() if k in known}), is_train=False)


def attach_preprocess(model: torch.nn.Module, preprocess_cfg: dict[str, Any] | None = None) -> dict[str, Any]:
    """Record the preprocess config on the model, where open_clip keeps it (``model.visual.preprocess_cfg``).

    Code that is handed only the model (generation, the adapters, eval) then normalises its pixels with the
    model's own mean/std. Missing fields get OpenAI's values, as :func:`make_preprocess` does.
    """
    cfg = {"mean": OPENAI_MEAN, "std": OPENAI_STD, **(preprocess_cfg or {}), "size": model.visual.input_resolution}
    cfg["mean"], cfg["std"] = tuple(cfg["mean"]), tuple(cfg["std"])
    open_clip.set_model_preprocess_cfg(model, cfg)
    return cfg


def normalization_of(source: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` a model's images are normalised with: what pixel-space optimizers (generation, the adapters)
    apply to their own views, so a model not normalised like OpenAI's is fed what it was trained on.

    ``source`` is a model (its ``visual.preprocess_cfg``, set by :func:`clipag.load` and open_clip, or the
    legacy ``visual.image_mean``/``image_std``), a preprocess transform (its ``Normalize``, e.g. from
    ``clip.load``), or a preprocess config dict. A model that records none, such as one from OpenAI's ``clip``
    package, gets OpenAI's values, which its own preprocess uses.
    """
    mean, std = _find_normalization(source)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def image_normalization(source: Any, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`normalization_of` as float32 ``(1, C, 1, 1)`` tensors on ``device``: ``(pixels - mean) / std``."""
    mean, std = normalization_of(source)
    shape = (1, -1, 1, 1)
    return (torch.tensor(mean, dtype=torch.float32, device=device).view(shape),
            torch.tensor(std, dtype=torch.float32, device=device).view(shape))


def _find_normalization(source: Any) -> tuple[Any, Any]:
    from torchvision.transforms import Normalize, v2

    if isinstance(source, dict):
        return source.get("mean", OPENAI_MEAN), source.get("std", OPENAI_STD)
    if isinstance(source, Normalize | v2.Normalize):
        return source.mean, source.std
    module = getattr(source, "visual", source)  # open_clip keeps it on the image tower
    cfg = getattr(module, "preprocess_cfg", None) or {}
    mean, std = cfg.get("mean", getattr(module, "image_mean", None)), cfg.get("std", getattr(module, "image_std", None))
    if mean is not None and std is not None:
        return mean, std
    if hasattr(source, "visual"):  # a CLIP model with no record of its preprocess: OpenAI's, as its preprocess
        return OPENAI_MEAN, OPENAI_STD
    for transform in reversed(getattr(source, "transforms", None) or ()):  # a Compose: its last Normalize
        with contextlib.suppress(ValueError):
            return _find_normalization(transform)
    raise ValueError(f"no Normalize transform in {source!r}, and it is neither a CLIP model nor a preprocess "
                     "config: cannot tell its image mean/std")
