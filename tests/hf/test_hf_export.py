"""`clipag export --format transformers|open_clip`: what transformers and open_clip read back is clipag's model.

Equivalence is measured here independently of what the export itself measured for its card.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch
from hf_fixtures import install_hf_repo, save_clipag_folder, stand_in_hub, tiny_config

import clipag
from clipag.hf import measure
from clipag.hf.convert import NotExpressibleError
from clipag.hf.export import ExportError, export, save_transformers_model

transformers = pytest.importorskip("transformers")
MAJOR = int(transformers.__version__.split(".")[0])

# Measured on the awkward strings (docs/huggingface.md): what differs from clipag.tokenize, per tokenizer.
# transformers' tokenizers-backed CLIP tokenizer has no ftfy and no html.unescape (only NFC, whitespace, lowercase).
WITHOUT_FTFY = {"&amp;amp; escaped twice", "<b>bold</b> &amp; tags", "caf\u00c3\u00a9 au lait",
                "don\u2019t you\u2019re", "fish &amp; chips &lt;3 &#39;quoted&#39;", "\ufb01ne \ufb02owers",
                "\uff21\uff22\uff23 fullwidth"}
EXPECTED_TOKENIZER_DIFFERENCES = {
    (4, "CLIPTokenizer"): {"<b>bold</b> &amp; tags"},  # the Python one runs ftfy, which unescapes unless tags appear
    (4, "CLIPTokenizerFast"): WITHOUT_FTFY,
    (5, "CLIPTokenizer"): WITHOUT_FTFY | {"<|ENDOFTEXT|> in capitals"},  # 5 matches special tokens case-sensitively
}


def features(output):
    return output if isinstance(output, torch.Tensor) else output.pooler_output


@pytest.fixture(scope="module", params=[False, True], ids=["gelu", "quick_gelu"])
def exported(request, tmp_path_factory):
    """A tiny random clipag model (GELU / QuickGELU) and its transformers export."""
    root = tmp_path_factory.mktemp("export")
    source = save_clipag_folder(root / "source", tiny_config(request.param), seed=int(request.param))
    out = root / "out"
    result = export(str(source), out, "transformers", download_root=str(root / "cache"), log=lambda m: None)
    model, preprocess = clipag.load(str(source), device="cpu", download_root=str(root / "cache"))
    return {"source": source, "out": out, "result": result, "model": model, "preprocess": preprocess,
            "quick_gelu": request.param}


def test_export_writes_what_transformers_loads_with_the_right_config(exported):
    out = exported["out"]
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "tokenizer_config.json",
                 "tokenizer.json", "vocab.json", "merges.txt", "README.md"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    act = "quick_gelu" if exported["quick_gelu"] else "gelu"
    assert config["model_type"] == "clip" and config["projection_dim"] == 32
    for tower in ("text_config", "vision_config"):
        assert config[tower]["hidden_act"] == act and config[tower]["layer_norm_eps"] == 1e-5
        assert config[tower]["hidden_size"] == 64 and config[tower]["intermediate_size"] == 256
        assert config[tower]["num_hidden_layers"] == 2 and config[tower]["num_attention_heads"] == 2
    assert config["vision_config"]["image_size"] == 64 and config["vision_config"]["patch_size"] == 16
    assert config["text_config"]["max_position_embeddings"] == 77
    processor = json.loads((out / "preprocessor_config.json").read_text())
    assert processor["image_mean"] == list(clipag.registry.OPENAI_MEAN) and processor["resample"] == 3
    assert processor["size"] == {"shortest_edge": 64} and processor["crop_size"] == {"height": 64, "width": 64}
    assert oct((out / "model.safetensors").stat().st_mode & 0o777) != "0o600"  # shareable, not safetensors' 0600


@torch.no_grad()
def test_transformers_features_equal_clipag_encode_within_1e_5(exported):
    hf_model = transformers.CLIPModel.from_pretrained(exported["out"]).eval()
    model = exported["model"]
    pixels = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    texts = list(measure.AWKWARD_TEXTS)
    ids = clipag.tokenize(texts, truncate=True)
    torch.testing.assert_close(features(hf_model.get_image_features(pixel_values=pixels)), model.encode_image(pixels),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(features(hf_model.get_text_features(input_ids=ids.long())), model.encode_text(ids),
                               atol=1e-5, rtol=0)
    # the export's own tokenizer and its attention mask (padding to the longest) give the same text features
    tokenizer = transformers.CLIPTokenizer.from_pretrained(exported["out"])
    batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    theirs = features(hf_model.get_text_features(**batch))
    same = [i for i, t in enumerate(texts) if t not in EXPECTED_TOKENIZER_DIFFERENCES[(MAJOR, "CLIPTokenizer")]]
    torch.testing.assert_close(theirs[same], model.encode_text(ids)[same], atol=1e-5, rtol=0)
    logits = hf_model(input_ids=ids.long(), pixel_values=pixels).logits_per_image
    torch.testing.assert_close(logits, model(pixels, ids)[0], atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["CLIPTokenizer", "CLIPTokenizerFast"])
def test_tokenizer_ids_equal_clipag_tokenize_except_where_documented(exported, name):
    if (MAJOR, name) not in EXPECTED_TOKENIZER_DIFFERENCES:
        pytest.skip(f"transformers {MAJOR}: {name} is the same class as CLIPTokenizer")
    tokenizer = getattr(transformers, name).from_pretrained(exported["out"])
    differences = measure.tokenizer_differences(tokenizer)
    assert set(differences) == EXPECTED_TOKENIZER_DIFFERENCES[(MAJOR, name)]
    ours = clipag.tokenize(["", " ".join(["word"] * 100)], truncate=True).tolist()
    theirs = tokenizer(["", " ".join(["word"] * 100)], padding="max_length", max_length=77, truncation=True)
    assert theirs["input_ids"] == ours  # the padding is 0 and the cut keeps EOT last, as clip.tokenize does
    assert ours[0][:3] == [49406, 49407, 0] and ours[1][-1] == 49407
    assert exported["result"].measured["tokenizers"][name] == sorted(differences)  # what the card states


def test_image_processor_matches_clipag_preprocess_within_the_documented_bound(exported):
    photos = [measure.synthetic_photo(w, h, seed=i) for i, (w, h) in enumerate(measure.PHOTO_SIZES)]
    for name in measure.image_processor_classes():
        processor = getattr(transformers, name).from_pretrained(exported["out"])
        difference = measure.processor_difference(processor, exported["preprocess"], photos)
        pil_based = (MAJOR, name) in ((4, "CLIPImageProcessor"), (5, "CLIPImageProcessorPil"))
        if pil_based:  # PIL's bicubic resize, the same as torchvision's on a PIL image: identical pixels
            assert difference["max_abs"] == 0, (name, difference)
        else:  # torchvision's tensor resize: at most about one 8-bit grey level, on few pixels
            assert difference["max_abs"] < 0.02 and difference["mean_abs"] < 1e-3, (name, difference)
    pixel_values = transformers.CLIPProcessor.from_pretrained(exported["out"])(
        images=photos[0], return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (1, 3, 64, 64)


def test_round_trip_through_clipag_load_is_exact(exported, tmp_path):
    back, preprocess = clipag.load(str(exported["out"]), device="cpu", download_root=str(tmp_path))
    original = exported["model"]
    assert list(back.state_dict()) == list(original.state_dict())
    for key, value in original.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
    pixels, ids = torch.randn(2, 3, 64, 64), clipag.tokenize(["a cat", "a dog"])
    with torch.no_grad():
        assert torch.equal(back.encode_image(pixels), original.encode_image(pixels))
        assert torch.equal(back.encode_text(ids), original.encode_text(ids))
    photo = measure.synthetic_photo(300, 200)
    assert torch.equal(preprocess(photo), exported["preprocess"](photo))


def test_model_card_states_source_sha256_licence_and_measurements(exported):
    card = (exported["out"] / "README.md").read_text()
    weights = exported["source"] / "open_clip_model.safetensors"
    assert hashlib.sha256(weights.read_bytes()).hexdigest() in card
    assert "library_name: transformers" in card and "license: unknown" in card
    features_measured = exported["result"].measured["features"]
    assert features_measured["image_max_abs"] < 1e-5 and features_measured["text_max_abs"] < 1e-5
    assert f"max |Δ| = {features_measured['image_max_abs']:.1e}" in card
    assert f"transformers {transformers.__version__}" in card
    assert "QuickGELU" in card if exported["quick_gelu"] else ", GELU" in card


@pytest.mark.parametrize("quick_gelu", [False, True], ids=["gelu", "quick_gelu"])
def test_real_vit_b_32_architecture_features_equal(quick_gelu, tmp_path):
    """open_clip's own ViT-B-32 config with random weights: transformers' reload equals clipag within 1e-5."""
    import open_clip

    from clipag.model import build_model

    config = open_clip.get_model_config("ViT-B-32")
    config["quick_gelu"] = quick_gelu
    torch.manual_seed(0)
    model = build_model(config).eval()
    save_transformers_model(config, model.state_dict(), tmp_path)
    hf_model = transformers.CLIPModel.from_pretrained(tmp_path).eval()
    hidden_act = json.loads((tmp_path / "config.json").read_text())["vision_config"]["hidden_act"]
    assert hidden_act == ("quick_gelu" if quick_gelu else "gelu")
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    ids = clipag.tokenize(list(measure.AWKWARD_TEXTS), truncate=True)
    with torch.no_grad():
        torch.testing.assert_close(features(hf_model.get_image_features(pixel_values=pixels)),
                                   model.encode_image(pixels), atol=1e-5, rtol=0)
        torch.testing.assert_close(features(hf_model.get_text_features(input_ids=ids.long())),
                                   model.encode_text(ids), atol=1e-5, rtol=0)


def test_other_preprocessing_is_carried_into_the_processor(tmp_path):
    source = save_clipag_folder(tmp_path / "src", tiny_config(False), preprocess_cfg={
        "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bilinear", "resize_mode": "squash"})
    export(str(source), tmp_path / "out", download_root=str(tmp_path / "cache"), log=lambda m: None)
    processor = json.loads((tmp_path / "out" / "preprocessor_config.json").read_text())
    assert processor["image_mean"] == [0.5] * 3 and processor["image_std"] == [0.25] * 3
    assert processor["resample"] == 2 and processor["size"] == {"height": 64, "width": 64}
    assert processor["do_center_crop"] is False
    _, preprocess = clipag.load(str(source), device="cpu", download_root=str(tmp_path / "cache"))
    photo = measure.synthetic_photo(300, 120)
    for name in measure.image_processor_classes():
        theirs = getattr(transformers, name).from_pretrained(tmp_path / "out")(images=photo, return_tensors="pt")
        assert (theirs["pixel_values"][0] - preprocess(photo)).abs().mean() < 0.01, name  # squashed, not cropped


@pytest.mark.parametrize("change, reason", [
    (lambda c: c["vision_cfg"].update(pool_type="avg"), "vision_cfg.pool_type='avg'"),
    (lambda c: c["vision_cfg"].update(no_ln_pre=True), "vision_cfg.no_ln_pre=True"),
    (lambda c: c["vision_cfg"].update(attentional_pool=True), "vision_cfg.attentional_pool=True"),
    (lambda c: c["text_cfg"].update(pool_type="last", no_causal_mask=True), "text_cfg.no_causal_mask=True"),
    (lambda c: c["vision_cfg"].update(layers=[1, 1, 1, 1], width=64), "ModifiedResNet"),
    (lambda c: c.update(init_logit_bias=-10), "SigLIP logit bias"),
])
def test_architectures_transformers_cannot_express_are_refused_with_the_reason(change, reason, tmp_path):
    from clipag.hf.convert import to_transformers_config

    config = tiny_config(False)
    change(config)
    with pytest.raises(NotExpressibleError, match=reason.replace("[", r"\[").replace("(", r"\(")):
        to_transformers_config(config)


def test_cli_refuses_an_inexpressible_model_and_writes_nothing(tmp_path):
    config = tiny_config(False)
    config["vision_cfg"]["pool_type"] = "avg"
    source = save_clipag_folder(tmp_path / "avgpool", config)
    result = subprocess.run([sys.executable, "-m", "clipag.cli", "export", str(source), str(tmp_path / "out")],
                            capture_output=True, text=True, env={**os.environ, "CLIPAG_CACHE": str(tmp_path / "c"),
                                                                 "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert result.returncode == 1
    assert "cannot express vision_cfg.pool_type='avg'" in result.stderr
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_a_non_empty_output_folder_is_refused(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="not an empty folder"):
        export("unused", tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_open_clip_export_is_what_open_clip_and_clipag_read_from_the_hub(tmp_path, isolated_caches):
    import open_clip

    source = save_clipag_folder(tmp_path / "src", tiny_config(True), seed=3,
                                preprocess_cfg={"mean": [0.5] * 3, "std": [0.5] * 3})
    result = export(str(source), tmp_path / "out", "open_clip", download_root=str(tmp_path / "c"), log=lambda m: None)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["README.md", "open_clip_config.json",
                                                                    "open_clip_model.safetensors"]
    assert result.measured["open_clip"]["image_max_abs"] == 0 and result.measured["open_clip"]["text_max_abs"] == 0
    install_hf_repo(isolated_caches / "hf", "someone/exported", tmp_path / "out")
    reference, _, preprocess = open_clip.create_model_and_transforms("hf-hub:someone/exported")
    ours, our_preprocess = clipag.load("hf-hub:someone/exported", device="cpu")
    original, _ = clipag.load(str(source), device="cpu", download_root=str(tmp_path / "c"))
    pixels, ids = torch.randn(2, 3, 64, 64), clipag.tokenize(["a red cube", ""])
    with torch.no_grad():
        for model in (reference.eval(), ours):
            assert torch.equal(model.encode_image(pixels), original.encode_image(pixels))
            assert torch.equal(model.encode_text(ids), original.encode_text(ids))
    photo = measure.synthetic_photo(200, 150)
    assert torch.equal(preprocess(photo), our_preprocess(photo))
    assert "library_name: open_clip" in (tmp_path / "out" / "README.md").read_text()
    # the folder itself: its weights carry their config in the safetensors metadata, the preprocessing is the
    # sidecar's (it was dropped when the metadata held the model config, so mean/std silently became OpenAI's)
    _, folder_preprocess = clipag.load(str(tmp_path / "out"), device="cpu", download_root=str(tmp_path / "c"))
    assert list(folder_preprocess.transforms[-1].mean) == [0.5] * 3
    assert torch.equal(folder_preprocess(photo), preprocess(photo))


@pytest.mark.parametrize("fmt", ["transformers", "open_clip"])
def test_push_to_hub_uploads_the_folder_through_huggingface_hub(fmt, tmp_path):
    source = save_clipag_folder(tmp_path / "src", tiny_config(False))
    with stand_in_hub() as (endpoint, repos, requests):
        env = {**os.environ, "CLIPAG_CACHE": str(tmp_path / "c"), "HF_HUB_CACHE": str(tmp_path / "hf"),
               "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": endpoint, "HF_TOKEN": "hf_test_token_not_real"}
        result = subprocess.run([sys.executable, "-m", "clipag.cli", "export", str(source), str(tmp_path / "out"),
                                 "--format", fmt, "--push-to-hub", "me/tiny-robust-clip"],
                                capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    assert f"pushed to {endpoint}/me/tiny-robust-clip" in result.stdout
    assert "POST /api/repos/create" in requests
    uploaded = repos["me/tiny-robust-clip"]
    written = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    assert uploaded == written  # every file, byte for byte


def test_an_export_that_measures_nan_is_refused_not_written(tmp_path, monkeypatch):
    """NaN compares False with every bound; a NaN model must not slip through as 'within tolerance'."""
    from clipag.hf import export as export_module
    from clipag.hf.measure import Equivalence

    nan = {"image_max_abs": 1e-6, "text_max_abs": float("nan"), "images": 4, "texts": 20}  # max() would say 1e-6
    monkeypatch.setattr("clipag.hf.measure.measure_export", lambda *a: Equivalence(nan, {}, {}, {}))
    source = save_clipag_folder(tmp_path / "src", tiny_config(False))
    with pytest.raises(export_module.ExportError, match="differs from clipag's model by nan"):
        export(str(source), tmp_path / "out", download_root=str(tmp_path / "c"), log=lambda m: None)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_export_leaves_torch_init_functions_as_it_found_them(tmp_path):
    """transformers 4 keeps the torch.nn.init functions it sees when modeling_utils is first imported; importing it
    inside clipag's skip_init (which makes them no-ops) left every later model uninitialised (NaN weights)."""
    source = save_clipag_folder(tmp_path / "src", tiny_config(False))
    code = ("import sys, torch\n"
            "before = {n: getattr(torch.nn.init, n) for n in ('normal_', 'uniform_', 'trunc_normal_')}\n"
            "from clipag.hf.export import export\n"
            f"export({str(source)!r}, {str(tmp_path / 'out')!r}, download_root={str(tmp_path / 'c')!r}, "
            "log=lambda m: None)\n"
            "changed = [n for n, f in before.items() if getattr(torch.nn.init, n) is not f]\n"
            "t = torch.full((4,), 5.0); torch.nn.init.normal_(t)\n"
            "print('CHANGED', changed, bool((t == 5).all()))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("CHANGED [] False")
