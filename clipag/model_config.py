"""Checks on a model config before anything is built from it: field types, sane bounds, and the weights' size.

A config comes from a file the user or a Hub repo supplied (``open_clip_config.json``, safetensors metadata).
Building from ``layers: 1000000`` takes minutes and ``width: 1e9`` fails deep in the allocator, naming no file;
a string where a number belongs fails in a constructor. Here each is an error naming the file and the field.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ModelConfigError", "check_model_config", "estimate_parameters"]

# Generous bounds: the largest published CLIPs (ViT-bigG-14: 48 layers, width 1664; EVA-CLIP-18B) are far inside.
_INT_BOUNDS = {"embed_dim": (1, 32768), "layers": (1, 512), "width": (1, 32768), "heads": (1, 1024),
               "head_width": (1, 4096), "patch_size": (1, 1024), "image_size": (1, 16384),
               "context_length": (1, 65536), "vocab_size": (1, 10_000_000)}
_FLOAT_BOUNDS = {"mlp_ratio": (0.01, 64.0), "ls_init_value": (0.0, 1e6)}


class ModelConfigError(ValueError):
    """A model config field has the wrong type, an insane value, or does not fit the weights. Names both."""


def _check_int(value: Any, where: str, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ModelConfigError(f"{where} = {value!r} must be an integer")
    if not low <= value <= high:
        raise ModelConfigError(f"{where} = {value:,} is outside the sane range {low:,}..{high:,}")


def _check_fields(cfg: dict[str, Any], prefix: str, source: str) -> None:
    for key, value in cfg.items():
        where = f"{source}: {prefix}{key}"
        if key in _INT_BOUNDS and value is not None:
            low, high = _INT_BOUNDS[key]
            items = value if isinstance(value, list | tuple) and key in ("layers", "image_size") else [value]
            if not items:
                raise ModelConfigError(f"{where} = {value!r} is empty")
            for item in items:
                _check_int(item, where, low, high)
        elif key in _FLOAT_BOUNDS and value is not None:
            low, high = _FLOAT_BOUNDS[key]
            if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
                raise ModelConfigError(f"{where} = {value!r} must be a number in {low}..{high}")


def check_model_config(config: Any, source: str, weights_numel: int | None = None) -> None:
    """Raise :class:`ModelConfigError` naming ``source`` and the field if ``config`` cannot be what it claims.

    With ``weights_numel`` (the number of values in the weights that come with it), a standard ViT/text
    transformer config must also describe a model of about that size, so nothing big is built for nothing.
    """
    if not isinstance(config, dict):
        raise ModelConfigError(f"{source}: the model config must be a JSON object, got {type(config).__name__}")
    _check_fields(config, "", source)
    for tower in ("vision_cfg", "text_cfg"):
        sub = config.get(tower, {})
        if not isinstance(sub, dict):
            raise ModelConfigError(f"{source}: {tower} must be a JSON object, got {type(sub).__name__}")
        _check_fields(sub, f"{tower}.", source)
    if weights_numel is None:
        return
    estimate = estimate_parameters(config)
    if estimate is not None and not 0.5 <= weights_numel / estimate <= 2.0:
        raise ModelConfigError(f"{source}: the config describes a model of about {estimate:,} parameters, but the "
                               f"weights hold {weights_numel:,} values: the config does not belong to these weights")


def estimate_parameters(config: dict[str, Any]) -> int | None:
    """About how many parameters open_clip builds from ``config``; ``None`` for towers it cannot tell (timm, Hugging
    Face text models, ResNets)."""
    vision, text = config.get("vision_cfg", {}), config.get("text_cfg", {})
    if "timm_model_name" in vision or "hf_model_name" in text or not isinstance(vision.get("layers", 12), int):
        return None
    embed = config.get("embed_dim", 512)

    def transformer(width: int, layers: int, mlp_ratio: float) -> int:
        return layers * int(4 * width * width + 2 * mlp_ratio * width * width)

    width, patch = vision.get("width", 768), vision.get("patch_size", 16)
    size = vision.get("image_size", 224)
    side = size[0] if isinstance(size, list | tuple) else size
    tokens = (side // patch) ** 2 + 1
    visual = (3 * patch * patch * width + tokens * width + transformer(width, vision.get("layers", 12),
                                                                         vision.get("mlp_ratio", 4.0)) + width * embed)
    t_width = text.get("width", 512)
    textual = (text.get("vocab_size", 49408) * t_width + text.get("context_length", 77) * t_width
               + transformer(t_width, text.get("layers", 12), text.get("mlp_ratio", 4.0)) + t_width * embed)
    return visual + textual
