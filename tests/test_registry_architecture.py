"""The real ViT-B/32 registry architecture loads a checkpoint in CLIPAG's file format (random weights).

This proves the registry's config (open_clip ViT-B-32, GELU) matches the keys and shapes of the Zenodo
file's layout, and that clipag.load agrees with the official loader,
``open_clip.create_model_and_transforms('ViT-B/32', pretrained=FILE)``.
"""

import dataclasses

import pytest
import torch

import clipag
from clipag import registry
from clipag.weights import import_checkpoint


@pytest.fixture(scope="module")
def clipag_format_file(tmp_path_factory):
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32")
    state_dict = {f"module.{k}": v for k, v in model.state_dict().items()}
    first = next(iter(state_dict))
    path = tmp_path_factory.mktemp("zenodo") / "CLIPAG_ViTB32.pt"
    # CLIPAG's layout: an open_clip training checkpoint with optimizer state beside the weights.
    torch.save({"epoch": 10, "name": "clipag", "state_dict": state_dict,
                "optimizer": {"state": {0: {"step": torch.tensor(1.0), "exp_avg": torch.zeros_like(state_dict[first])}},
                              "param_groups": [{"lr": 1e-5, "weight_decay": 0.2, "params": [0]}]}}, path)
    return path


def test_vit_b32_registry_loads_clipag_format(clipag_format_file, monkeypatch):
    import open_clip

    entry = dataclasses.replace(registry.REGISTRY["ViT-B/32"], size=clipag_format_file.stat().st_size)
    monkeypatch.setitem(registry.REGISTRY, "ViT-B/32", entry)
    import_checkpoint(entry, clipag_format_file)
    model, preprocess = clipag.load("ViT-B/32", device="cpu")
    official, _, official_preprocess = open_clip.create_model_and_transforms(
        "ViT-B/32", pretrained=str(clipag_format_file))
    official.eval()
    assert model.visual.input_resolution == 224 and model.visual.output_dim == 512
    torch.manual_seed(1)
    image = torch.randn(2, 3, 224, 224)
    text = clipag.tokenize(["a photo of a cat", "a drawing of a dog"])
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(image), official.encode_image(image), atol=1e-5, rtol=0)
        torch.testing.assert_close(model.encode_text(text), official.encode_text(text.long()), atol=1e-5, rtol=0)
    assert str(preprocess) == str(official_preprocess)
