"""`clipag.load` of transformers-format CLIPs: folders and `hf-hub:` repos written by transformers' own
`save_pretrained`, read offline from the Hugging Face cache, converted once; the LEAF registry entry."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from hf_fixtures import REVISION, install_hf_repo, mark_absent, transformers_clip

import clipag
from clipag.checkpoints import CheckpointError
from clipag.hf import convert

transformers = pytest.importorskip("transformers")


def features(output):
    return output if isinstance(output, torch.Tensor) else output.pooler_output


@torch.no_grad()
def assert_same_features(model, hf_model, image_size=64):
    pixels = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(3))
    ids = clipag.tokenize(["a photo of a cat", "", "<|endoftext|> twice <|endoftext|>"])
    torch.testing.assert_close(model.encode_image(pixels), features(hf_model.get_image_features(pixel_values=pixels)),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(model.encode_text(ids), features(hf_model.get_text_features(input_ids=ids.long())),
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("hidden_act", ["quick_gelu", "gelu"])
def test_hf_hub_transformers_repo_loads_offline_and_equals_transformers(hidden_act, tmp_path, isolated_caches):
    hf_model = transformers_clip(seed=1, hidden_act=hidden_act)
    hf_model.save_pretrained(tmp_path / "repo")
    transformers.CLIPImageProcessor(image_mean=[0.5] * 3, image_std=[0.25] * 3, size={"shortest_edge": 64},
                                    crop_size={"height": 64, "width": 64}).save_pretrained(tmp_path / "repo")
    install_hf_repo(isolated_caches / "hf", "someone/hf-clip", tmp_path / "repo")
    mark_absent(isolated_caches / "hf", "someone/hf-clip", "open_clip_config.json")
    model, preprocess = clipag.load("hf-hub:someone/hf-clip", device="cpu")
    assert_same_features(model, hf_model)
    assert list(preprocess.transforms[-1].mean) == [0.5] * 3 and list(preprocess.transforms[-1].std) == [0.25] * 3
    converted = list((isolated_caches / "clipag" / "hub" / "someone--hf-clip").glob("*.safetensors"))
    assert [p.name for p in converted] == [f"{REVISION}.transformers.safetensors"]


def test_conversion_is_cached_and_a_pickled_bin_is_never_read_twice(tmp_path, isolated_caches, monkeypatch):
    hf_model = transformers_clip(seed=2)
    (tmp_path / "repo").mkdir()
    hf_model.config.save_pretrained(tmp_path / "repo")
    torch.save(hf_model.state_dict(), tmp_path / "repo" / "pytorch_model.bin")  # transformers' pickled format
    install_hf_repo(isolated_caches / "hf", "someone/bin-clip", tmp_path / "repo")
    mark_absent(isolated_caches / "hf", "someone/bin-clip", "open_clip_config.json", "model.safetensors",
                "model.safetensors.index.json", "preprocessor_config.json", "processor_config.json")
    first, _ = clipag.load("hf-hub:someone/bin-clip", device="cpu")
    assert_same_features(first, hf_model)

    def no_unpickling(*args, **kwargs):
        raise AssertionError("the pickle was read again")

    monkeypatch.setattr(torch, "load", no_unpickling)
    second, _ = clipag.load("hf-hub:someone/bin-clip", device="cpu")
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_sharded_safetensors_folder_loads(tmp_path):
    hf_model = transformers_clip(seed=3)
    hf_model.save_pretrained(tmp_path / "sharded", max_shard_size="5MB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) > 1
    model, _ = clipag.load(str(tmp_path / "sharded"), device="cpu")
    assert_same_features(model, hf_model)


def test_a_local_folder_is_converted_once_and_again_when_its_weights_change(tmp_path, isolated_caches):
    transformers_clip(seed=4).save_pretrained(tmp_path / "folder")
    clipag.load(str(tmp_path / "folder"), device="cpu")
    converted = list((isolated_caches / "clipag" / "converted").glob("*.safetensors"))
    assert len(converted) == 1
    newer = transformers_clip(seed=5)
    newer.save_pretrained(tmp_path / "folder")
    model, _ = clipag.load(str(tmp_path / "folder"), device="cpu")
    assert_same_features(model, newer)  # not the stale conversion
    assert list((isolated_caches / "clipag" / "converted").glob("*.safetensors")) == converted  # replaced in place


def test_leaf_registry_entry_reads_a_leaf_style_config(tmp_path, isolated_caches):
    """LEAF's config.json names no hidden_act (transformers' default, quick_gelu, applies) and the repo has no
    preprocessor config; the registry pins QuickGELU either way. A tiny replica under LEAF's repo id."""
    hf_model = transformers_clip(seed=6, hidden_act="quick_gelu")
    hf_model.save_pretrained(tmp_path / "leaf")
    config = json.loads((tmp_path / "leaf" / "config.json").read_text())
    for tower in ("text_config", "vision_config"):
        config[tower] = {k: v for k, v in config[tower].items()
                         if k in ("hidden_size", "intermediate_size", "model_type", "num_attention_heads",
                                  "num_hidden_layers", "patch_size", "image_size")}  # as sparse as LEAF's
    (tmp_path / "leaf" / "config.json").write_text(json.dumps(config))
    install_hf_repo(isolated_caches / "hf", "LEAF-CLIP/CLIP-ViT-L-FARE2", tmp_path / "leaf")
    mark_absent(isolated_caches / "hf", "LEAF-CLIP/CLIP-ViT-L-FARE2", "preprocessor_config.json",
                "processor_config.json")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the absent preprocessor is known, so no warning about it
        model, preprocess = clipag.load("LEAF-FARE2-ViT-L/14", device="cpu")
    assert_same_features(model, hf_model)
    assert list(preprocess.transforms[-1].mean) == list(clipag.registry.OPENAI_MEAN)


def test_offline_repo_whose_preprocessor_is_unknown_warns_and_uses_openai_preprocessing(tmp_path, isolated_caches):
    transformers_clip(seed=7).save_pretrained(tmp_path / "repo")
    install_hf_repo(isolated_caches / "hf", "someone/partial", tmp_path / "repo")
    mark_absent(isolated_caches / "hf", "someone/partial", "open_clip_config.json")
    with pytest.warns(UserWarning, match="image processor config is not in the Hugging Face cache"):
        clipag.load("hf-hub:someone/partial", device="cpu")


def test_not_a_clip_or_no_weights_is_a_clear_error(tmp_path):
    (tmp_path / "siglip").mkdir()
    (tmp_path / "siglip" / "config.json").write_text(json.dumps({"model_type": "siglip"}))
    (tmp_path / "siglip" / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="config.json says model_type='siglip'; clipag reads"):
        clipag.load(str(tmp_path / "siglip"), device="cpu")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(CheckpointError, match="no weights file .*model.safetensors"):
        clipag.load(str(tmp_path / "empty"), device="cpu")


def test_mixed_activations_and_unknown_types_are_refused():
    hf_model = transformers_clip(seed=8)
    config = hf_model.config.to_dict()
    config["text_config"]["hidden_act"] = "gelu"
    with pytest.raises(convert.NotExpressibleError, match="one tower uses QuickGELU and the other GELU"):
        convert.from_transformers_config(config, hf_model.state_dict())
    config["vision_config"]["hidden_act"] = config["text_config"]["hidden_act"] = "relu"
    with pytest.raises(convert.NotExpressibleError, match="hidden_act='relu'"):
        convert.from_transformers_config(config, hf_model.state_dict())


def test_hub_repo_with_neither_layout_says_so(tmp_path, isolated_caches):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "README.md").write_text("hi")
    install_hf_repo(isolated_caches / "hf", "someone/not-a-model", tmp_path / "x")
    mark_absent(isolated_caches / "hf", "someone/not-a-model", "open_clip_config.json", "config.json")
    with pytest.raises(RuntimeError, match="neither open_clip_config.json .* nor config.json"):
        clipag.load("hf-hub:someone/not-a-model", device="cpu")


def test_hf_defaults_match_the_installed_transformers():
    text, vision = transformers.CLIPTextConfig(), transformers.CLIPVisionConfig()
    for key, value in convert.HF_TEXT_DEFAULTS.items():
        assert getattr(text, key) == value, key
    for key, value in convert.HF_VISION_DEFAULTS.items():
        assert getattr(vision, key) == value, key


def test_state_dict_round_trip_is_exact_and_complete():
    hf_model = transformers_clip(seed=9)
    ours = convert.from_transformers_state_dict(hf_model.state_dict())
    back = convert.to_transformers_state_dict(ours)
    expected = {k: v for k, v in hf_model.state_dict().items() if not k.endswith("position_ids")}
    assert set(back) == set(expected)
    assert all(torch.equal(back[k], v) for k, v in expected.items())
    with pytest.raises(convert.NotExpressibleError, match="no counterpart: \\['extra.weight'\\]"):
        convert.from_transformers_state_dict({**hf_model.state_dict(), "extra.weight": torch.zeros(1)})


def test_registry_model_exports_with_its_licence_threat_model_and_source_hash(tmp_path, isolated_caches):
    """A registry entry's card carries what the registry knows: licence as published, threat model, embedding space,
    the Hub revision and the sha256 of the file the weights came from."""
    import hashlib

    from clipag.hf.export import export

    hf_model = transformers_clip(seed=10)
    hf_model.save_pretrained(tmp_path / "leaf")
    snapshot = install_hf_repo(isolated_caches / "hf", "LEAF-CLIP/CLIP-ViT-L-FARE2", tmp_path / "leaf")
    mark_absent(isolated_caches / "hf", "LEAF-CLIP/CLIP-ViT-L-FARE2", "preprocessor_config.json",
                "processor_config.json", "open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                "open_clip_pytorch_model.bin")
    export("LEAF-FARE2-ViT-L/14", tmp_path / "out", log=lambda m: None)
    card = (tmp_path / "out" / "README.md").read_text()
    entry = clipag.registry.REGISTRY["LEAF-FARE2-ViT-L/14"]
    assert "license: mit" in card and f"| licence as published | {entry.license} |" in card
    assert f"| threat model | {entry.threat_model} |" in card and "| embedding space | OpenAI ViT-L/14 |" in card
    assert f"hf-hub:LEAF-CLIP/CLIP-ViT-L-FARE2 (revision {REVISION})" in card
    assert hashlib.sha256((snapshot / "model.safetensors").read_bytes()).hexdigest() in card
    exported = transformers.CLIPModel.from_pretrained(tmp_path / "out").eval()
    assert exported.config.vision_config.hidden_act == "quick_gelu"
    for key, value in hf_model.state_dict().items():  # transformers -> clipag -> transformers: the same tensors
        assert torch.equal(exported.state_dict()[key], value), key
