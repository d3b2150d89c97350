"""Export a trained model in open_clip's Hub layout, and publish it.

The folder holds ``open_clip_config.json`` (``{"model_cfg", "preprocess_cfg"}``), ``open_clip_model.safetensors``
(which also carries the model config in its metadata, so the file alone is loadable) and a model card.
``clipag.load(folder)``, ``clipag.load("hf-hub:ORG/NAME")`` after a push, and ``open_clip`` all read it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..checkpoints import save_safetensors
from ..hub import write_json_atomic
from ..weights import CONFIG_METADATA_KEY, CONFIG_NAME, WEIGHTS_NAME

__all__ = ["export_model", "push_to_hub", "exported_run", "EXPORT_KEY"]

EXPORT_KEY = "clipag_finetune"  # safetensors metadata: {"step", "branch"} of the run that wrote the weights

_CARD = """---
library_name: open_clip
tags: [clip, clipag, adversarial-training, robust]
---
# {title}

Finetuned with `python -m clipag.finetune` (clipag: CLIP with Perceptually Aligned Gradients, after CLIPAG,
Ganz & Elad, WACV 2024).

| | |
|---|---|
| initial weights | {pretrained} |
| objective | {objective} |
| threat model | {norm}, ε = {epsilon:g} (pixels in [0, 1]), {attack_steps}-step PGD, ε ramp over {epsilon_warmup:.0%} |
| text tower | {text} |
| steps × global batch | {steps} × {global_batch} |
| data | {data} |

```python
import clipag as clip
model, preprocess = clip.load("{load_name}")
```
"""


def export_model(model: torch.nn.Module, model_cfg: dict[str, Any], preprocess_cfg: dict[str, Any],
                 folder: str | os.PathLike, info: dict[str, Any] | None = None,
                 run: dict[str, Any] | None = None) -> Path:
    """Write the Hub-layout folder (atomically per file) and return it; ``run`` (``{"step", "branch"}``) is kept
    in the weights' metadata, so a resumed run can tell an up-to-date export from a stale one."""
    folder = Path(folder)
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    metadata = {CONFIG_METADATA_KEY: model_cfg, "format": "pt", **({EXPORT_KEY: run} if run else {})}
    save_safetensors(state, folder / WEIGHTS_NAME, metadata=metadata)
    write_json_atomic(folder / CONFIG_NAME, {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg})
    if info is not None:
        fields = {"title": folder.name, "load_name": str(folder), "pretrained": "none", "objective": "contrastive",
                  "norm": "l2", "epsilon": 0.0, "attack_steps": 0, "epsilon_warmup": 0.0, "steps": 0,
                  "global_batch": 0, "data": "", "text": "frozen", **info}
        (folder / "README.md").write_text(_CARD.format(**fields), encoding="utf-8")
    return folder


def exported_run(folder: str | os.PathLike) -> tuple[int, str | None] | None:
    """``(step, branch)`` of the weights in an export folder, if it is complete and says so (exports written
    before run ids existed, or by hand, do not: ``None``, i.e. not known to be current)."""
    from safetensors import safe_open

    weights = Path(folder) / WEIGHTS_NAME
    if not (weights.is_file() and (Path(folder) / CONFIG_NAME).is_file()):
        return None
    try:
        with safe_open(str(weights), "pt") as f:
            info = json.loads((f.metadata() or {})[EXPORT_KEY])
        return int(info["step"]), info["branch"]
    except Exception:  # no such metadata, or a damaged file
        return None


def push_to_hub(folder: str | os.PathLike, repo: str, private: bool = False,
                commit_message: str = "clipag.finetune export") -> str:
    """Create ``repo`` if needed and upload the folder through huggingface_hub; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo, private=private, exist_ok=True)
    info = api.upload_folder(repo_id=repo, folder_path=str(folder), commit_message=commit_message)
    return str(getattr(info, "commit_url", info))


def read_config(folder: str | os.PathLike) -> dict[str, Any]:
    return json.loads((Path(folder) / CONFIG_NAME).read_text(encoding="utf-8"))
