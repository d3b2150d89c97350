"""open_clip/OpenAI CLIP <-> transformers ``CLIPModel``: configs, state dicts and preprocessing, both directions.

The two layouts hold the same tensors: open_clip fuses q/k/v into ``in_proj_weight`` and stores the projections as
``x @ proj`` matrices, transformers splits q/k/v and stores projections as ``nn.Linear`` weights (transposed). The
conversion is pure tensor bookkeeping, so a round trip is bit-exact, and reading a transformers-format CLIP needs no
transformers install. transformers publishes no converter for this direction (only OpenAI -> HF); the mapping is
small and written here, and every conversion must consume every key, so nothing is dropped silently.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

__all__ = ["NotExpressibleError", "to_transformers_config", "to_transformers_state_dict", "from_transformers_config",
           "from_transformers_state_dict", "to_transformers_preprocess", "from_transformers_preprocess",
           "HF_TEXT_DEFAULTS", "HF_VISION_DEFAULTS", "SOT_ID", "EOT_ID", "PAD_ID"]

SOT_ID, EOT_ID, PAD_ID = 49406, 49407, 0  # OpenAI's tokenizer pads with 0 ("!"), not with EOT as HF's openai/* repos
_EPS = 1e-5  # torch's LayerNorm default, which open_clip's CLIP uses

# transformers' CLIPTextConfig/CLIPVisionConfig defaults, for config.json files that omit keys (LEAF's do).
# tests/hf/test_convert.py checks them against the installed transformers.
HF_TEXT_DEFAULTS = {"num_attention_heads": 8, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
                    "eos_token_id": EOT_ID}
HF_VISION_DEFAULTS = {"num_attention_heads": 12, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
                      "num_channels": 3}
_HF_ACTS = {"quick_gelu": (True, None), "gelu": (False, None), "gelu_pytorch_tanh": (False, "tanh"),
            "gelu_new": (False, "tanh")}


class NotExpressibleError(RuntimeError):
    """The model uses something the other library's CLIP has no counterpart for. The message names it."""


# ---- configs -------------------------------------------------------------------------------------------------

def _unexpressible_options(cfg: dict[str, Any], dataclass_type: type, expressible: set[str], where: str) -> list[str]:
    """Options set away from open_clip's defaults that ``CLIPModel`` cannot express (e.g. ``pool_type='avg'``)."""
    defaults = {f.name: (f.default if f.default is not dataclasses.MISSING else None)
                for f in dataclasses.fields(dataclass_type)}
    problems = []
    for key, value in cfg.items():
        if key in expressible:
            continue
        if key not in defaults:
            problems.append(f"{where}.{key} (unknown to open_clip)")
        elif value != defaults[key] and not (value in (None, False) and defaults[key] in (None, False)):
            problems.append(f"{where}.{key}={value!r}")
    return problems


def _activation(quick_gelu: bool, act_kwargs: dict | None, where: str) -> str:
    approximate = (act_kwargs or {}).get("approximate", "none")
    if set(act_kwargs or {}) - {"approximate"} or approximate not in ("none", "tanh"):
        raise NotExpressibleError(f"{where}.act_kwargs={act_kwargs!r} has no transformers activation")
    if quick_gelu:
        if approximate != "none":
            raise NotExpressibleError(f"{where}: QuickGELU with act_kwargs={act_kwargs!r}")
        return "quick_gelu"
    return "gelu_pytorch_tanh" if approximate == "tanh" else "gelu"


def _eps(norm_kwargs: dict | None, where: str) -> float:
    if set(norm_kwargs or {}) - {"eps"}:
        raise NotExpressibleError(f"{where}.norm_kwargs={norm_kwargs!r}: transformers' LayerNorm only takes eps")
    return float((norm_kwargs or {}).get("eps", _EPS))


# Top-level open_clip model_cfg keys; the refused ones describe other architectures (CoCa, HF text towers, SigLIP).
_MODEL_REFUSED = {"multimodal_cfg": "multimodal_cfg (a CoCa text decoder)",
                  "custom_text": "custom_text (a Hugging Face text tower)",
                  "init_logit_bias": "init_logit_bias (a SigLIP logit bias)"}
_MODEL_KEYS = ("embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "cast_dtype", "init_logit_scale",
               "nonscalar_logit_scale", "output_dict", *_MODEL_REFUSED)


def to_transformers_config(model_cfg: dict[str, Any]) -> dict[str, Any]:
    """``CLIPConfig`` keyword arguments for an open_clip ``model_cfg``; refuses what ``CLIPModel`` cannot express."""
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    vision, text = dict(model_cfg.get("vision_cfg", {})), dict(model_cfg.get("text_cfg", {}))
    problems = [_MODEL_REFUSED.get(k, f"{k} (unknown to open_clip)") for k in model_cfg
                if k not in _MODEL_KEYS or (k in _MODEL_REFUSED and model_cfg[k] not in (None, False))]
    if isinstance(vision.get("layers", 12), list | tuple):
        problems.append("vision_cfg.layers is a list (a ModifiedResNet image tower)")
        vision.pop("layers")
    problems += _unexpressible_options(vision, CLIPVisionCfg, {"layers", "width", "head_width", "mlp_ratio",
                                                               "patch_size", "image_size", "patch_dropout",
                                                               "act_kwargs", "norm_kwargs"}, "vision_cfg")
    problems += _unexpressible_options(text, CLIPTextCfg, {"context_length", "vocab_size", "width", "heads", "layers",
                                                           "mlp_ratio", "act_kwargs", "norm_kwargs", "pad_id"},
                                      "text_cfg")
    if problems:
        raise NotExpressibleError("transformers' CLIPModel cannot express " + ", ".join(problems))
    image_size, patch_size = vision.get("image_size", 224), vision.get("patch_size", 16)
    for value, name in ((image_size, "image_size"), (patch_size, "patch_size")):
        if isinstance(value, list | tuple) and len(set(value)) != 1:
            raise NotExpressibleError(f"vision_cfg.{name}={value!r}: transformers' CLIP takes square sizes only")
    image_size = int(image_size[0] if isinstance(image_size, list | tuple) else image_size)
    patch_size = int(patch_size[0] if isinstance(patch_size, list | tuple) else patch_size)
    quick_gelu = bool(model_cfg.get("quick_gelu", False))
    width, head_width = int(vision.get("width", 768)), int(vision.get("head_width", 64))
    text_width, heads = int(text.get("width", 512)), int(text.get("heads", 8))
    if width % head_width or text_width % heads:
        raise NotExpressibleError(f"widths {width}/{text_width} are not multiples of the head widths")
    if text.get("vocab_size", 49408) != 49408:
        raise NotExpressibleError(f"text_cfg.vocab_size={text['vocab_size']}: not OpenAI's BPE vocabulary")
    embed_dim = int(model_cfg["embed_dim"])
    vision_config = {"hidden_size": width, "intermediate_size": int(width * vision.get("mlp_ratio", 4.0)),
                     "num_hidden_layers": int(vision.get("layers", 12)), "num_attention_heads": width // head_width,
                     "image_size": image_size, "patch_size": patch_size, "num_channels": 3,
                     "hidden_act": _activation(quick_gelu, vision.get("act_kwargs"), "vision_cfg"),
                     "layer_norm_eps": _eps(vision.get("norm_kwargs"), "vision_cfg"), "projection_dim": embed_dim}
    text_config = {"vocab_size": 49408, "hidden_size": text_width,
                   "intermediate_size": int(text_width * text.get("mlp_ratio", 4.0)),
                   "num_hidden_layers": int(text.get("layers", 12)), "num_attention_heads": heads,
                   "max_position_embeddings": int(text.get("context_length", 77)),
                   "hidden_act": _activation(quick_gelu, text.get("act_kwargs"), "text_cfg"),
                   "layer_norm_eps": _eps(text.get("norm_kwargs"), "text_cfg"), "projection_dim": embed_dim,
                   "bos_token_id": SOT_ID, "eos_token_id": EOT_ID, "pad_token_id": PAD_ID}
    return {"text_config": text_config, "vision_config": vision_config, "projection_dim": embed_dim}


def from_transformers_config(config: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The open_clip ``model_cfg`` of a transformers ``CLIPModel`` (its ``config.json`` and weights).

    Dimensions come from the weight shapes; heads, activation and LayerNorm eps from the config, with transformers'
    defaults where the file omits them.
    """
    if config.get("model_type") != "clip":
        raise NotExpressibleError(f"model_type={config.get('model_type')!r}: only transformers' 'clip' is read")
    vision = {**HF_VISION_DEFAULTS, **config.get("vision_config", {})}
    text = {**HF_TEXT_DEFAULTS, **config.get("text_config", {})}
    if int(vision["num_channels"]) != 3:
        raise NotExpressibleError(f"vision_config.num_channels={vision['num_channels']}")
    acts = {}
    for where, cfg in (("vision_config", vision), ("text_config", text)):
        if cfg["hidden_act"] not in _HF_ACTS:
            raise NotExpressibleError(f"{where}.hidden_act={cfg['hidden_act']!r} has no open_clip counterpart")
        acts[where] = _HF_ACTS[cfg["hidden_act"]]
    if acts["vision_config"][0] != acts["text_config"][0]:
        raise NotExpressibleError("one tower uses QuickGELU and the other GELU; open_clip has one switch for both")
    sd = state_dict
    patch = sd["vision_model.embeddings.patch_embedding.weight"]
    positions = sd["vision_model.embeddings.position_embedding.weight"].shape[0]
    grid = round((positions - 1) ** 0.5)
    if grid * grid + 1 != positions or patch.shape[-1] != patch.shape[-2]:
        raise NotExpressibleError(f"{positions} image positions / patch {tuple(patch.shape[-2:])}: not a square grid")
    width, text_width = patch.shape[0], sd["text_model.final_layer_norm.weight"].shape[0]
    v_layers = _count_layers(sd, "vision_model.encoder.layers.")
    t_layers = _count_layers(sd, "text_model.encoder.layers.")
    v_heads, t_heads = int(vision["num_attention_heads"]), int(text["num_attention_heads"])
    if width % v_heads or text_width % t_heads:
        raise NotExpressibleError(f"hidden sizes {width}/{text_width} are not divisible by {v_heads}/{t_heads} heads")
    vision_cfg: dict[str, Any] = {
        "image_size": grid * patch.shape[-1], "layers": v_layers, "width": width, "patch_size": patch.shape[-1],
        "head_width": width // v_heads,
        "mlp_ratio": sd["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0] / width}
    text_cfg: dict[str, Any] = {
        "context_length": sd["text_model.embeddings.position_embedding.weight"].shape[0],
        "vocab_size": sd["text_model.embeddings.token_embedding.weight"].shape[0], "width": text_width,
        "heads": t_heads, "layers": t_layers,
        "mlp_ratio": sd["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0] / text_width}
    for cfg, hf, where in ((vision_cfg, vision, "vision_config"), (text_cfg, text, "text_config")):
        if cfg["mlp_ratio"] == 4.0:
            del cfg["mlp_ratio"]
        if acts[where][1]:
            cfg["act_kwargs"] = {"approximate": acts[where][1]}
        if float(hf["layer_norm_eps"]) != _EPS:
            cfg["norm_kwargs"] = {"eps": float(hf["layer_norm_eps"])}
    return {"embed_dim": sd["text_projection.weight"].shape[0], "quick_gelu": acts["vision_config"][0],
            "vision_cfg": vision_cfg, "text_cfg": text_cfg}


# ---- state dicts ---------------------------------------------------------------------------------------------

_BLOCK = (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("attn.out_proj", "self_attn.out_proj"),
          ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2"))
_TOWERS = (("visual.transformer.resblocks.", "vision_model.encoder.layers."),
           ("transformer.resblocks.", "text_model.encoder.layers."))
_PLAIN = (("visual.conv1.weight", "vision_model.embeddings.patch_embedding.weight"),
          ("visual.class_embedding", "vision_model.embeddings.class_embedding"),
          ("visual.positional_embedding", "vision_model.embeddings.position_embedding.weight"),
          ("visual.ln_pre.weight", "vision_model.pre_layrnorm.weight"),  # (sic) transformers' spelling
          ("visual.ln_pre.bias", "vision_model.pre_layrnorm.bias"),
          ("visual.ln_post.weight", "vision_model.post_layernorm.weight"),
          ("visual.ln_post.bias", "vision_model.post_layernorm.bias"),
          ("token_embedding.weight", "text_model.embeddings.token_embedding.weight"),
          ("positional_embedding", "text_model.embeddings.position_embedding.weight"),
          ("ln_final.weight", "text_model.final_layer_norm.weight"),
          ("ln_final.bias", "text_model.final_layer_norm.bias"),
          ("logit_scale", "logit_scale"))
_TRANSPOSED = (("visual.proj", "visual_projection.weight"), ("text_projection", "text_projection.weight"))
# Buffers older transformers versions saved; they are not weights.
_HF_BUFFERS = ("vision_model.embeddings.position_ids", "text_model.embeddings.position_ids")


def _count_layers(state_dict: dict[str, torch.Tensor], prefix: str) -> int:
    return len({k[len(prefix):].split(".")[0] for k in state_dict if k.startswith(prefix)})


def _take(state_dict: dict[str, torch.Tensor], key: str, source: str) -> torch.Tensor:
    try:
        return state_dict.pop(key)
    except KeyError:
        raise NotExpressibleError(f"{source} has no {key}: not the CLIP layout this converter maps") from None


def _leftover(state_dict: dict[str, torch.Tensor], what: str) -> None:
    if state_dict:
        keys = sorted(state_dict)
        more = " ..." if len(keys) > 6 else ""
        raise NotExpressibleError(f"{what} has weights with no counterpart: {keys[:6]}{more}")


def to_transformers_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip/OpenAI key layout -> ``CLIPModel``'s; every tensor is mapped or the conversion is refused."""
    sd, out = dict(state_dict), {}
    for ours, theirs in _PLAIN:
        out[theirs] = _take(sd, ours, "the open_clip state dict")
    out["logit_scale"] = out["logit_scale"].reshape(())
    for ours, theirs in _TRANSPOSED:
        out[theirs] = _take(sd, ours, "the open_clip state dict").t().contiguous()
    for ours_prefix, theirs_prefix in _TOWERS:
        for i in range(_count_layers(sd, ours_prefix)):
            a, b = f"{ours_prefix}{i}.", f"{theirs_prefix}{i}."
            for ours, theirs in _BLOCK:
                for p in ("weight", "bias"):
                    out[f"{b}{theirs}.{p}"] = _take(sd, f"{a}{ours}.{p}", "the open_clip state dict")
            for p in ("weight", "bias"):
                q, k, v = _take(sd, f"{a}attn.in_proj_{p}", "the open_clip state dict").chunk(3, dim=0)
                for name, part in zip("qkv", (q, k, v), strict=True):
                    out[f"{b}self_attn.{name}_proj.{p}"] = part.clone()
    _leftover(sd, "the open_clip model")
    return out


def from_transformers_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``CLIPModel``'s key layout -> open_clip/OpenAI's (the exact inverse of :func:`to_transformers_state_dict`)."""
    sd, out = {k: v for k, v in state_dict.items() if k not in _HF_BUFFERS}, {}
    for ours, theirs in _PLAIN:
        out[ours] = _take(sd, theirs, "the transformers checkpoint")
    for ours, theirs in _TRANSPOSED:
        out[ours] = _take(sd, theirs, "the transformers checkpoint").t().contiguous()
    for ours_prefix, theirs_prefix in _TOWERS:
        for i in range(_count_layers(sd, theirs_prefix)):
            a, b = f"{ours_prefix}{i}.", f"{theirs_prefix}{i}."
            for ours, theirs in _BLOCK:
                for p in ("weight", "bias"):
                    out[f"{a}{ours}.{p}"] = _take(sd, f"{b}{theirs}.{p}", "the transformers checkpoint")
            for p in ("weight", "bias"):
                out[f"{a}attn.in_proj_{p}"] = torch.cat(
                    [_take(sd, f"{b}self_attn.{n}_proj.{p}", "the transformers checkpoint") for n in "qkv"])
    _leftover(sd, "the transformers checkpoint")
    return out


# ---- preprocessing -------------------------------------------------------------------------------------------

_RESAMPLE = {"bilinear": 2, "bicubic": 3, "nearest": 0}


def to_transformers_preprocess(preprocess_cfg: dict[str, Any], image_size: int) -> dict[str, Any]:
    """``CLIPImageProcessor`` keyword arguments that preprocess as the model's open_clip config says."""
    from ..registry import OPENAI_MEAN, OPENAI_STD

    mode = preprocess_cfg.get("resize_mode", "shortest")
    interpolation = preprocess_cfg.get("interpolation", "bicubic")
    if interpolation not in _RESAMPLE:
        raise NotExpressibleError(f"preprocess interpolation={interpolation!r}")
    kwargs: dict[str, Any] = {"image_mean": list(preprocess_cfg.get("mean", OPENAI_MEAN)),
                              "image_std": list(preprocess_cfg.get("std", OPENAI_STD)),
                              "resample": _RESAMPLE[interpolation], "do_convert_rgb": True}
    if mode == "shortest":
        kwargs.update(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
                      do_center_crop=True)
    elif mode == "squash":
        kwargs.update(size={"height": image_size, "width": image_size}, do_center_crop=False)
    else:
        raise NotExpressibleError(f"preprocess resize_mode={mode!r}: CLIPImageProcessor does not pad to a square")
    return kwargs


def from_transformers_preprocess(processor_config: dict[str, Any]) -> dict[str, Any]:
    """The open_clip ``preprocess_cfg`` of a ``preprocessor_config.json`` (empty dict: OpenAI's defaults)."""
    if not processor_config:
        return {}
    size = processor_config.get("size", {"shortest_edge": 224})
    if isinstance(size, int):
        size = {"shortest_edge": size}
    resample = {v: k for k, v in _RESAMPLE.items()}.get(processor_config.get("resample", 3))
    if resample is None:
        raise NotExpressibleError(f"preprocessor resample={processor_config.get('resample')!r}")
    cfg: dict[str, Any] = {"interpolation": resample}
    if "image_mean" in processor_config:
        cfg["mean"] = tuple(processor_config["image_mean"])
    if "image_std" in processor_config:
        cfg["std"] = tuple(processor_config["image_std"])
    if "shortest_edge" in size:
        if not processor_config.get("do_center_crop", True):
            raise NotExpressibleError("preprocessor resizes the short side without a center crop (not square)")
        cfg["resize_mode"] = "shortest"
    else:
        cfg["resize_mode"] = "squash"
    return cfg
