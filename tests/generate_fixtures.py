"""Tiny CLIPs for the generation tests: small canvases keep a generation step in the milliseconds."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import torch

from clipag.model import build_model

# 32 px, 4x4 patches of 8 px: 17 tokens, two blocks per tower.
TINY_32 = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8,
                                           "head_width": 32},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}


def tiny_model(size: int = 32, seed: int = 0) -> torch.nn.Module:
    config = json.loads(json.dumps(TINY_32))
    config["vision_cfg"]["image_size"] = size
    torch.manual_seed(seed)
    return build_model(config)


def save_hub_folder(folder: Path, size: int = 32, seed: int = 0, preprocess_cfg: dict | None = None) -> Path:
    """A Hub-layout folder (``open_clip_config.json`` + ``open_clip_model.safetensors``) ``clipag.load`` reads."""
    from safetensors.torch import save_file

    config = json.loads(json.dumps(TINY_32))
    config["vision_cfg"]["image_size"] = size
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": config,
                                                                     "preprocess_cfg": preprocess_cfg or {}}))
    state = {k: v.contiguous() for k, v in tiny_model(size, seed).state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    return folder


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine OpenMP's waiting for a
    descheduled second thread made each tiny step ~40x slower; run them single-threaded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
