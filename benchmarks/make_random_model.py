"""Write a random-weight open_clip architecture as a Hub-layout folder that ``clipag.load`` reads (for benchmarks
of models that cannot be downloaded here).

    python benchmarks/make_random_model.py ViT-L-14 /tmp/vit-l-14
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def write_random_model(arch: str, folder: str | Path, seed: int = 0) -> Path:
    import open_clip
    import torch
    from safetensors.torch import save_file

    from clipag.model import build_model

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = open_clip.get_model_config(arch)
    if config is None:
        raise SystemExit(f"unknown open_clip architecture {arch!r}")
    torch.manual_seed(seed)
    model = build_model(config)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": config, "preprocess_cfg": {}}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    print(write_random_model(sys.argv[1], sys.argv[2]))
