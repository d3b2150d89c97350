"""Tiny open_clip weights and Hugging Face cache layouts, for tests that build an offline Hub by hand."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

# DESIGN §8: a 3.6M-parameter open_clip config with fast forward and backward.
TINY_OPEN_CLIP = {"embed_dim": 32, "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "patch_size": 32,
                                                  "head_width": 32},
                  "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}


def tiny_open_clip_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    import open_clip

    torch.manual_seed(seed)
    return open_clip.CLIP(**TINY_OPEN_CLIP).state_dict()


def make_hub_repo(hf_cache: str | os.PathLike, repo: str, config: dict | None,
                  state_dict: dict[str, torch.Tensor] | None, weights_name: str = "open_clip_model.safetensors",
                  revision: str = "0123456789abcdef0123456789abcdef01234567") -> Path:
    """Lay out a repo exactly as huggingface_hub caches it (DESIGN §4), so offline loads find it."""
    from safetensors.torch import save_file

    base = Path(hf_cache) / f"models--{repo.replace('/', '--')}"
    snapshot = base / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    (base / "refs").mkdir(exist_ok=True)
    (base / "refs" / "main").write_text(revision)
    if config is not None:
        (snapshot / "open_clip_config.json").write_text(json.dumps(config))
    if state_dict is not None:
        if weights_name.endswith(".safetensors"):
            save_file({k: v.contiguous() for k, v in state_dict.items()}, str(snapshot / weights_name))
        else:
            torch.save(state_dict, snapshot / weights_name)
    return snapshot
