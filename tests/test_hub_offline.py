"""hf-hub: ids and Hub-backed registry entries, from an offline Hugging Face cache the tests build."""

import dataclasses

import pytest
import torch
from hub_fixtures import TINY_OPEN_CLIP, make_hub_repo, tiny_open_clip_state_dict

import clipag
from clipag import registry
from clipag.hub import OfflineError

PREPROCESS = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic",
              "resize_mode": "shortest"}


def _open_clip_reference(state_dict, quick_gelu=False):
    import open_clip

    model = open_clip.CLIP(**TINY_OPEN_CLIP, quick_gelu=quick_gelu).eval()
    model.load_state_dict(state_dict)
    return model


def test_hf_hub_id_loads_offline(isolated_caches):
    state_dict = tiny_open_clip_state_dict()
    make_hub_repo(isolated_caches / "hf", "someone/tiny-clip", {"model_cfg": TINY_OPEN_CLIP,
                                                                "preprocess_cfg": PREPROCESS}, state_dict)
    model, preprocess = clipag.load("hf-hub:someone/tiny-clip", device="cpu")
    reference = _open_clip_reference(state_dict)
    image = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(image), reference.encode_image(image), atol=1e-6, rtol=0)
    normalize = preprocess.transforms[-1]
    assert list(normalize.mean) == [0.5, 0.5, 0.5]


def test_hub_repo_without_weights_is_an_error(isolated_caches):
    """open_clip would warn and return random weights here; we refuse."""
    snapshot = make_hub_repo(isolated_caches / "hf", "someone/config-only", {"model_cfg": TINY_OPEN_CLIP}, None)
    no_exist = snapshot.parent.parent / ".no_exist" / snapshot.name  # what an online lookup leaves behind
    no_exist.mkdir(parents=True)
    for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                 "open_clip_pytorch_model.bin"):
        (no_exist / name).touch()
    with pytest.raises(RuntimeError, match="has no weights file"):
        clipag.load("hf-hub:someone/config-only", device="cpu")


def test_offline_weights_not_cached_is_actionable(isolated_caches):
    make_hub_repo(isolated_caches / "hf", "someone/half-cached", {"model_cfg": TINY_OPEN_CLIP}, None)
    with pytest.raises(OfflineError, match="not in the Hugging Face cache and offline mode is on"):
        clipag.load("hf-hub:someone/half-cached", device="cpu")


def test_offline_missing_repo_says_how_to_get_it():
    with pytest.raises(OfflineError, match="clipag download hf-hub:nobody/nothing"):
        clipag.load("hf-hub:nobody/nothing", device="cpu")


def test_pickled_hub_weights_are_converted_once(isolated_caches, monkeypatch):
    state_dict = tiny_open_clip_state_dict(seed=3)
    make_hub_repo(isolated_caches / "hf", "someone/bin-clip", {"model_cfg": TINY_OPEN_CLIP}, state_dict,
                  weights_name="open_clip_pytorch_model.bin")
    first, _ = clipag.load("hf-hub:someone/bin-clip", device="cpu")
    converted = list((isolated_caches / "clipag" / "hub").rglob("*.safetensors"))
    assert len(converted) == 1

    def no_unpickling(*args, **kwargs):
        raise AssertionError("the pickle was read again")

    monkeypatch.setattr(torch, "load", no_unpickling)
    second, _ = clipag.load("hf-hub:someone/bin-clip", device="cpu")
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_registry_hub_entry_pins_activation(isolated_caches, monkeypatch):
    """A registry entry states its activation; a Hub config that omits quick_gelu can't change it."""
    entry = dataclasses.replace(registry.REGISTRY["FARE2-ViT-L/14"], arch="unused", hf_repo="chs20/tiny-fare")
    monkeypatch.setitem(registry.REGISTRY, entry.name, entry)
    state_dict = tiny_open_clip_state_dict(seed=5)
    make_hub_repo(isolated_caches / "hf", "chs20/tiny-fare", {"model_cfg": TINY_OPEN_CLIP}, state_dict)
    model, _ = clipag.load("FARE2-ViT-L/14", device="cpu")
    reference = _open_clip_reference(state_dict, quick_gelu=True)
    text = clipag.tokenize(["robust"])
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(text), reference.encode_text(text), atol=1e-6, rtol=0)


def test_unknown_name_lists_models():
    with pytest.raises(RuntimeError) as info:
        clipag.load("ViT-Q/99", device="cpu")
    assert str(info.value) == f"Model ViT-Q/99 not found; available models = {clipag.available_models()}"


def test_openai_name_without_counterpart_explains():
    with pytest.raises(RuntimeError, match="Model RN50 not found; available models = .*no robust counterpart"):
        clipag.load("RN50", device="cpu")


def test_every_entry_is_documented():
    import open_clip

    for entry in registry.REGISTRY.values():
        assert entry.description and entry.embedding_space and entry.source
        assert entry.license and entry.threat_model and entry.layout in ("open_clip", "transformers")
        assert isinstance(entry.quick_gelu, bool)
        assert entry.arch in open_clip.list_models()
        assert entry.preprocess["mean"] and entry.preprocess["std"]
    clipag_entry = registry.REGISTRY["ViT-B/32"]
    assert clipag_entry.size == 1_310_567_621 and "zenodo.org/records/10446026" in clipag_entry.url
    assert clipag_entry.arch == "ViT-B-32" and clipag_entry.quick_gelu is False
    assert all(e.hf_repo.startswith(("chs20/", "LEAF-CLIP/")) for e in registry.REGISTRY.values() if e.hf_repo)
    leaf = registry.REGISTRY["LEAF-FARE2-ViT-L/14"]
    assert leaf.hf_repo == "LEAF-CLIP/CLIP-ViT-L-FARE2" and leaf.layout == "transformers" and leaf.quick_gelu
