"""`clipag run` for transformers scripts: from_pretrained of transformers' CLIP classes loads clipag's model."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hf_fixtures import install_hf_repo, save_clipag_folder, tiny_config

import clipag
from clipag.hf import measure, run_hooks

transformers = pytest.importorskip("transformers")
SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "transformers_clip_calls.py"
SWAPPED = ("CLIPModel", "CLIPProcessor", "CLIPVisionModelWithProjection", "CLIPTextModelWithProjection",
           "CLIPVisionModel", "CLIPTokenizer", "CLIPImageProcessor")


def clipag_run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "CLIPAG_CACHE": str(tmp_path / "cache"), "HF_HUB_CACHE": str(tmp_path / "hf"),
           "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "clipag.cli", "run", "--device", "cpu", *args], cwd=tmp_path,
                          capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.jpg"
    measure.synthetic_photo(320, 240, seed=5).save(path)
    return path


def check_against_clipag(out: dict, model: torch.nn.Module, preprocess, photo: Path) -> None:
    """What the script computed equals what clipag computes on the same inputs."""
    from PIL import Image

    pixels = torch.tensor(out["pixel_values"])
    with Image.open(photo) as image:
        assert (pixels[0] - preprocess(image)).abs().max() < 0.02  # the processor's documented bound
    texts = ["a photo of a cat", "a photo of a dog"]
    ids = clipag.tokenize(texts)
    assert out["input_ids"] == ids[:, :len(out["input_ids"][0])].tolist()  # padded to the longest, with 0
    pixels.requires_grad_(True)
    image_features = model.encode_image(pixels)
    text_features = model.encode_text(ids)
    torch.testing.assert_close(torch.tensor(out["image_features"]), image_features.detach(), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor(out["text_features"]), text_features.detach(), atol=1e-5, rtol=0)
    torch.nn.functional.cosine_similarity(image_features, text_features[:1].detach()).sum().backward()
    assert out["grad_norm"] > 0
    torch.testing.assert_close(torch.tensor(out["pixel_grad"]), pixels.grad, atol=1e-6, rtol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(torch.tensor(out["logits"]), model(pixels, ids)[0], atol=1e-4, rtol=0)
        torch.testing.assert_close(torch.tensor(out["image_embeds"]), model.encode_image(pixels), atol=1e-5, rtol=0)
        torch.testing.assert_close(torch.tensor(out["text_embeds"]), model.encode_text(ids), atol=1e-5, rtol=0)
    vanilla = transformers.CLIPModel(transformers.CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 1},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 1,
                       "image_size": 32, "patch_size": 16}))
    assert out["image_output_type"] == type(vanilla.get_image_features(torch.zeros(1, 3, 32, 32))).__name__
    assert out["device"] == "cpu" and out["model_class"] == "CLIPModel"


def test_model_flag_swaps_every_hub_clip_id_but_not_subfolder_loads(tmp_path, photo):
    tiny = save_clipag_folder(tmp_path / "tiny", tiny_config(False), seed=11)
    sd = tmp_path / "sd"  # a Stable Diffusion repo's text encoder, in the offline Hub cache
    transformers.CLIPTextModel(transformers.CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                                           num_attention_heads=1)).save_pretrained(sd / "text_encoder")
    install_hf_repo(tmp_path / "hf", "someone/stable-diffusion", sd)
    hub_id = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
    args = ["--model", str(tiny), str(SCRIPT), hub_id, str(photo), "out.json", "someone/stable-diffusion"]
    result = clipag_run(args, tmp_path)
    assert result.returncode == 0, result.stderr
    for name in SWAPPED:
        assert f"[clipag] {name}.from_pretrained('{hub_id}') -> clipag '{tiny}'" in result.stderr, name
    assert ("[clipag] CLIPTextModel.from_pretrained('someone/stable-diffusion', subfolder='text_encoder') loads "
            "unchanged: a subfolder load") in result.stderr
    assert f"converting {tiny} to a transformers CLIPModel once" in result.stderr
    assert "a local folder" not in result.stderr  # the conversion's own loads are not reported as the script's
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["sd_text_encoder_layers"] == 3 and out["config_hidden_act"] == "gelu"
    model, preprocess = clipag.load(str(tiny), device="cpu")
    check_against_clipag(out, model, preprocess, photo)

    exports = list((tmp_path / "cache" / "transformers").iterdir())
    assert len(exports) == 1
    stamp = (exports[0] / "model.safetensors").stat().st_mtime_ns
    again = clipag_run(args, tmp_path)
    assert again.returncode == 0, again.stderr
    assert "converting" not in again.stderr and f"-> clipag '{tiny}'" in again.stderr  # cached, still said
    assert (exports[0] / "model.safetensors").stat().st_mtime_ns == stamp
    assert json.loads((tmp_path / "out.json").read_text())["image_features"] == out["image_features"]


def test_openai_hub_ids_map_like_clip_load_names(tmp_path, photo):
    """openai/clip-vit-base-patch32 is clip.load's ViT-B/32, which is CLIPAG: the registry entry (a tiny stand-in
    for the 1.3 GB CLIPAG file, placed in clipag's cache as `clipag download ViT-B/32` leaves it)."""
    from clipag.checkpoints import save_safetensors
    from clipag.hub import WEIGHTS_NAME, model_dir, write_json_atomic
    from clipag.model import build_model
    from clipag.weights import CONFIG_METADATA_KEY

    config = tiny_config(False)
    torch.manual_seed(12)
    weights = model_dir("ViT-B/32", tmp_path / "cache") / WEIGHTS_NAME
    save_safetensors(build_model(config).state_dict(), weights, {CONFIG_METADATA_KEY: config})
    write_json_atomic(weights.parent / "source.json", {"safetensors_size": weights.stat().st_size})
    result = clipag_run([str(SCRIPT), "openai/clip-vit-base-patch32", str(photo), "out.json"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "[clipag] CLIPModel.from_pretrained('openai/clip-vit-base-patch32') -> clipag 'ViT-B/32'" in result.stderr
    model, preprocess = clipag.load("ViT-B/32", device="cpu", download_root=str(tmp_path / "cache"))
    check_against_clipag(json.loads((tmp_path / "out.json").read_text()), model, preprocess, photo)


@pytest.mark.parametrize("hub_id, reason", [
    ("openai/clip-vit-base-patch16", "OpenAI's ViT-B/16 has no robust counterpart in its embedding space"),
    ("openai/clip-vit-large-patch14-336", "OpenAI's ViT-L/14@336px has no robust counterpart"),
    ("laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "no robust counterpart is known for this id"),
])
def test_ids_without_a_counterpart_load_unchanged_and_say_so(hub_id, reason):
    said = []
    swapper = run_hooks.Swapper(say=said.append)
    assert swapper.target("CLIPModel", hub_id, {}) == hub_id
    assert len(said) == 1 and said[0].startswith(f"CLIPModel.from_pretrained({hub_id!r}) loads unchanged: {reason}")
    assert "--model" in said[0]


def test_model_flag_leaves_local_folders_alone(tmp_path):
    said = []
    swapper = run_hooks.Swapper(model="ViT-B/32", say=said.append)
    assert swapper.target("CLIPModel", str(tmp_path), {}) == str(tmp_path)
    assert swapper.target("CLIPTokenizer", "org/sd", {"subfolder": "tokenizer"}) == "org/sd"
    assert said == [f"CLIPModel.from_pretrained({str(tmp_path)!r}) loads unchanged: a local folder (clipag swaps "
                    "CLIP ids from the Hub only)",
                    "CLIPTokenizer.from_pretrained('org/sd', subfolder='tokenizer') loads unchanged: a subfolder "
                    "load (clipag swaps CLIP ids from the Hub only)"]


def test_without_transformers_nothing_changes(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "transformers" else real_find_spec(name, *a))
    before = list(sys.meta_path)
    assert run_hooks.install("ViT-B/32") is False
    assert sys.meta_path == before


def test_install_patches_imported_classes_and_uninstall_restores_them():
    original = transformers.CLIPModel.from_pretrained.__func__
    try:
        assert run_hooks.install("some-model") is True
        assert transformers.CLIPModel.from_pretrained.__func__ is not original
        assert transformers.CLIPModel.from_pretrained.__func__.__wrapped__ is original
    finally:
        run_hooks.uninstall()
    assert transformers.CLIPModel.from_pretrained.__func__ is original
    assert not any(isinstance(f, run_hooks._PatchOnImport) for f in sys.meta_path)


AUTO_SCRIPT = """
import json, sys, torch
from transformers import AutoModel
model = AutoModel.from_pretrained("openai/clip-vit-base-patch32")
pixels = torch.zeros(1, 3, model.config.vision_config.image_size, model.config.vision_config.image_size)
features = model.get_image_features(pixel_values=pixels)
features = features if torch.is_tensor(features) else features.pooler_output
json.dump({"act": model.config.vision_config.hidden_act, "size": model.config.vision_config.hidden_size,
           "features": features.tolist()}, open("auto.json", "w"))
"""


def test_auto_model_gets_the_swapped_model_with_its_own_config(tmp_path):
    """AutoModel is swapped before it reads OpenAI's config from the Hub (here the cache): clipag's weights must
    not be built with OpenAI's config (QuickGELU, other sizes)."""
    tiny = save_clipag_folder(tmp_path / "tiny", tiny_config(False), seed=13)
    openai = tmp_path / "openai-config"
    transformers.CLIPConfig(text_config={"hidden_size": 128, "num_attention_heads": 2},
                            vision_config={"hidden_size": 128, "num_attention_heads": 2, "image_size": 64,
                                           "patch_size": 16}).save_pretrained(openai)  # quick_gelu, as OpenAI's
    install_hf_repo(tmp_path / "hf", "openai/clip-vit-base-patch32", openai)
    (tmp_path / "auto.py").write_text(AUTO_SCRIPT)
    result = clipag_run(["--model", str(tiny), "auto.py"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"AutoModel.from_pretrained('openai/clip-vit-base-patch32') -> clipag '{tiny}'" in result.stderr
    out = json.loads((tmp_path / "auto.json").read_text())
    assert out["act"] == "gelu" and out["size"] == 64
    model, _ = clipag.load(str(tiny), device="cpu")
    with torch.no_grad():
        expected = model.encode_image(torch.zeros(1, 3, 64, 64))
    torch.testing.assert_close(torch.tensor(out["features"]), expected, atol=1e-5, rtol=0)


def test_auto_classes_and_pipeline_get_the_swapped_model_and_its_preprocessing(tmp_path, photo):
    """AutoProcessor, AutoTokenizer, AutoImageProcessor and pipeline() read the original id's files before any CLIP
    class is called, and AutoImageProcessor never calls one: without their own swap they need the network, and
    hand clipag's model OpenAI's 224 px preprocessing. Here the Hub cache holds OpenAI's config and image processor
    (as the real repo does) and a non-CLIP model, which --model must leave alone."""
    tiny = save_clipag_folder(tmp_path / "tiny", tiny_config(False), seed=17)  # 64 px, its own mean/std
    openai = tmp_path / "openai-files"
    transformers.CLIPConfig(text_config={"hidden_size": 128, "num_attention_heads": 2},
                            vision_config={"hidden_size": 128, "num_attention_heads": 2, "image_size": 224,
                                           "patch_size": 32}).save_pretrained(openai)
    transformers.CLIPImageProcessor().save_pretrained(openai)  # its defaults are OpenAI's: 224 px
    install_hf_repo(tmp_path / "hf", "openai/clip-vit-base-patch32", openai)
    transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=1,
                            intermediate_size=64).save_pretrained(tmp_path / "bert")
    install_hf_repo(tmp_path / "hf", "someone/bert-like", tmp_path / "bert")
    script = Path(__file__).resolve().parent.parent / "scripts" / "transformers_auto_calls.py"
    result = clipag_run(["--model", str(tiny), str(script), "openai/clip-vit-base-patch32", str(photo),
                         "someone/bert-like", "out.json"], tmp_path)
    assert result.returncode == 0, result.stderr
    for name in ("AutoProcessor", "AutoTokenizer", "AutoImageProcessor", "AutoConfig",
                 "AutoModelForZeroShotImageClassification"):
        assert f"[clipag] {name}.from_pretrained('openai/clip-vit-base-patch32') -> clipag '{tiny}'" in result.stderr
    assert ("[clipag] AutoConfig.from_pretrained('someone/bert-like') loads unchanged: its config.json is not a "
            "CLIP's") in result.stderr
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["other_model_type"] == "bert" and out["pipeline_model_class"] == "CLIPModel"
    assert out["processor_class"] == "CLIPProcessor" and out["processor_pixels_equal"]
    model, preprocess = clipag.load(str(tiny), device="cpu")
    from PIL import Image

    pixels = torch.tensor(out["pixel_values"])
    with Image.open(photo) as image:
        assert pixels.shape == (1, 3, 64, 64) and (pixels[0] - preprocess(image)).abs().max() < 0.02
    assert out["input_ids"] == clipag.tokenize(["a cat", "a dog"])[:, :len(out["input_ids"][0])].tolist()
    texts = clipag.tokenize([f"This is a photo of {label}." for label in ("a cat", "a dog")])  # pipeline's template
    with torch.no_grad():
        expected = model(pixels, texts)[0].softmax(dim=-1)[0]
    torch.testing.assert_close(torch.tensor(out["scores"]), expected, atol=1e-4, rtol=0)
