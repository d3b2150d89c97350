"""Everything a run builds before its first step: model, frozen parts, optimiser, schedules, precision."""

from __future__ import annotations

import json
import math
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import open_clip
import torch

from ..model import attach_preprocess, build_model, load_weights
from .args import from_scratch

__all__ = ["model_config", "create_model", "param_groups", "lr_at", "epsilon_at", "Precision", "BUNDLED_CONFIGS"]

BUNDLED_CONFIGS = Path(__file__).with_name("configs")


def model_config(name: str) -> dict[str, Any]:
    """An open_clip model config from a JSON file, a bundled config name, or an open_clip architecture."""
    path = Path(name)
    if not path.is_file():
        path = BUNDLED_CONFIGS / f"{name}.json"
    if path.is_file():
        config = json.loads(path.read_text(encoding="utf-8"))
        return config.get("model_cfg", config)  # a Hub-layout open_clip_config.json works too
    config = open_clip.get_model_config(name.replace("/", "-"))
    if config is None:
        bundled = sorted(p.stem for p in BUNDLED_CONFIGS.glob("*.json"))
        raise ValueError(f"unknown model {name!r}: not a JSON file, a bundled config ({', '.join(bundled)}) "
                         "or an open_clip architecture (open_clip.list_models())")
    return config


def create_model(args: Any) -> tuple[torch.nn.Module, dict[str, Any], dict[str, Any]]:
    """``(model, model_cfg, preprocess_cfg)`` on the CPU in fp32, from ``--pretrained`` or ``--model``.

    Model init uses ``--seed`` on every rank, so ranks start identical even before DDP broadcasts.
    """
    torch.manual_seed(args.seed)
    if not from_scratch(args):
        from ..weights import resolve

        resolved = resolve(args.pretrained)
        config, preprocess = dict(resolved.config), dict(resolved.preprocess)
        if args.force_quick_gelu:
            config["quick_gelu"] = True
        model = build_model(config, initialize=False)
        load_weights(model, resolved.state_dict, resolved.source)
    else:
        config, preprocess = model_config(args.model), {}
        if args.force_quick_gelu:
            config["quick_gelu"] = True
        model = build_model(config)
    preprocess = attach_preprocess(model, preprocess)  # OpenAI's mean/std unless the weights say otherwise
    model.requires_grad_(False)
    model.visual.requires_grad_(True)
    if args.unlock_text:  # pretraining: text tower, logit scale (and bias) train too
        model.requires_grad_(True)
    if args.grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model, config, preprocess


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no decay on gains, biases, embeddings' 1-D tensors and the logit scale (open_clip's rule)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "logit_scale" in name or "logit_bias" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_at(step: int, base_lr: float, warmup: int, total: int, schedule: str) -> float:
    """Linear warmup from 0, then cosine to 0 (or constant): a pure function of the step, so resuming needs
    no scheduler object."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    if schedule == "const":
        return base_lr
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * progress)) * base_lr


def epsilon_at(step: int, epsilon: float, warmup_fraction: float, total: int) -> float:
    """ε ramped linearly from 0 over the first ``warmup_fraction`` of training (measured: needed for ε ≥ 1)."""
    ramp = warmup_fraction * total
    return epsilon if ramp < 1 else epsilon * min(1.0, (step + 1) / ramp)


class Precision:
    """``auto`` = bf16 autocast on CUDA with bf16 support, fp32 elsewhere; fp16 brings a gradient scaler."""

    def __init__(self, name: str, device: torch.device) -> None:
        if name == "auto":
            name = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
        self.name, self.device = name, device
        self.dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
        self.scaler = torch.amp.GradScaler(device.type, enabled=name == "fp16")

    def autocast(self) -> AbstractContextManager:
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None)
