"""Models for the CLIPStyler tests: a random VGG19 checkpoint in a torch hub cache, and tiny CLIP folders."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def write_random_vgg19(torch_home: Path, seed: int = 0) -> Path:
    """``TORCH_HOME/hub/checkpoints/vgg19-dcbb9e9d.pth``: random weights up to relu5_2, zeros for the rest.

    The rest (conv5_3, conv5_4 and the 120M-weight classifier, unused by CLIPStyler) is stored as expanded
    zeros, which ``torch.save`` keeps as one element each: the file is 61 MB instead of 548 MB, and
    torchvision's strict ``vgg19(pretrained=True)`` still loads it, as it loads the real file. Like the real file
    (published in 2017, before PyTorch 1.6), it is written in torch's legacy, non-zip format.
    """
    import torchvision
    from clipag.adapters.clipstyler.vgg import VGGContent

    from clipag.model import skip_init

    state = VGGContent.random(seed).state_dict_for_torchvision()
    with skip_init():
        full = torchvision.models.vgg19(weights=None).state_dict()
    for name, tensor in full.items():
        state.setdefault(name, torch.zeros(1).expand(tensor.shape))  # conv5_3, conv5_4 and the classifier
    path = torch_home / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path, _use_new_zipfile_serialization=False)  # the 2017 file predates torch's zip format
    return path


# DESIGN §8's tiny open_clip config (224 px, 32 px patches: 49 tokens), for scripts that resize to 224 themselves.
TINY_224 = {"embed_dim": 32, "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "patch_size": 32,
                                            "head_width": 32},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}


def save_tiny_224(folder: Path, seed: int = 0) -> Path:
    from safetensors.torch import save_file

    from clipag.model import build_model

    torch.manual_seed(seed)
    model = build_model(TINY_224)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_224, "preprocess_cfg": {}}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder


def content_image(path: Path, size: int = 64) -> Path:
    """A small synthetic photo: a gradient with a disc."""
    from PIL import Image, ImageDraw

    image = Image.linear_gradient("L").resize((size, size)).convert("RGB")
    ImageDraw.Draw(image).ellipse((size // 4, size // 4, 3 * size // 4, 3 * size // 4), fill=(200, 80, 40))
    image.save(path)
    return path
