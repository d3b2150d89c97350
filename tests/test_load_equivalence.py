"""clipag.load matches the reference `clip` package on the same OpenAI-format weights."""

import warnings

import pytest
import torch
from PIL import Image

import clipag

ATOL = 1e-5


@pytest.fixture(scope="module")
def inputs():
    import clip

    torch.manual_seed(1)
    return torch.randn(3, 3, 224, 224), clip.tokenize(["a cat", "a photo of a dog", "<|endoftext|> x"])


def _assert_same(model, reference, inputs):
    image, text = inputs
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(image), reference.encode_image(image), atol=ATOL, rtol=0)
        torch.testing.assert_close(model.encode_text(text), reference.encode_text(text), atol=ATOL, rtol=0)
        ours, theirs = model(image, text), reference(image, text)
    assert isinstance(ours, tuple) and len(ours) == 2
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)  # logits are scaled by 100


@pytest.mark.parametrize("fmt", ["state_dict", "torchscript", "safetensors"])
def test_formats_match_reference(fmt, openai_files, openai_reference, inputs):
    model, _ = clipag.load(str(openai_files[fmt]), device="cpu")
    assert model.dtype == torch.float32
    _assert_same(model, openai_reference, inputs)


def test_reference_package_load_matches(openai_files, inputs):
    """The reference's own loader on the TorchScript archive (its jit=False path) agrees with ours."""
    import clip

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference, reference_preprocess = clip.load(str(openai_files["torchscript"]), device="cpu", jit=False)
    model, preprocess = clipag.load(str(openai_files["torchscript"]), "cpu")
    _assert_same(model, reference, inputs)
    image = Image.new("RGB", (300, 200))
    image.paste((200, 30, 90), (0, 0, 150, 200))
    image.paste((10, 220, 40), (150, 50, 300, 120))
    torch.testing.assert_close(preprocess(image), reference_preprocess(image), atol=1e-6, rtol=0)
    grey = Image.new("L", (150, 400), 77)  # non-RGB input goes through the RGB conversion
    torch.testing.assert_close(preprocess(grey), reference_preprocess(grey), atol=1e-6, rtol=0)


def test_open_clip_checkpoint_with_module_prefix(openai_reference, openai_files, inputs, tmp_path):
    """CLIPAG's own format: {"state_dict": {"module.*": ...}, "optimizer": ...}."""
    state_dict = {f"module.{k}": v for k, v in openai_reference.state_dict().items()}
    path = tmp_path / "epoch_1.pt"
    torch.save({"epoch": 1, "name": "run", "state_dict": state_dict,
                "optimizer": {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 1e-5}]}}, path)
    model, _ = clipag.load(str(path), device="cpu", quick_gelu=True)
    _assert_same(model, openai_reference, inputs)
    gelu_model, _ = clipag.load(str(path), device="cpu")  # open_clip checkpoints default to GELU, documented
    with torch.no_grad():
        diff = (gelu_model.encode_image(inputs[0]) - openai_reference.encode_image(inputs[0])).abs().max()
    assert diff > 1e-4, "the activation must matter; otherwise this test proves nothing"


def test_openai_surface(openai_files, openai_reference):
    model, _ = clipag.load(str(openai_files["state_dict"]), torch.device("cpu"))
    assert model.visual.input_resolution == 224 and isinstance(model.visual.input_resolution, int)
    assert model.visual.output_dim == 32
    assert model.context_length == 77 and model.vocab_size == 49408
    assert not model.training
    for name in ("token_embedding", "positional_embedding", "ln_final", "text_projection", "transformer",
                 "logit_scale"):
        assert getattr(model, name) is not None
    torch.testing.assert_close(model.logit_scale, openai_reference.logit_scale)
    # encode_image casts its input to model.dtype, like OpenAI's
    assert model.encode_image(torch.zeros(1, 3, 224, 224, dtype=torch.float64)).dtype == torch.float32
    # the facade shares tensors with the model: nothing was copied
    assert model.encode_text.__self__ is model
    assert model.requires_grad_(False) is model and model.float() is model


def test_jit_true_warns_and_returns_eager(openai_files):
    with pytest.warns(UserWarning, match="jit=True is ignored"):
        model, _ = clipag.load(str(openai_files["state_dict"]), device="cpu", jit=True)
    assert isinstance(model, torch.nn.Module) and not isinstance(model, torch.jit.ScriptModule)


def test_fp16_layout_matches_openai(openai_files, openai_reference):
    """Off the CPU OpenAI keeps conv/linear/attention/projections in fp16 and LayerNorm in fp32."""
    import copy

    import clip.model

    reference = copy.deepcopy(openai_reference)
    clip.model.convert_weights(reference)
    model, _ = clipag.load(str(openai_files["state_dict"]), device="cpu", precision="fp16")
    ours = {k: v.dtype for k, v in model.state_dict().items()}
    theirs = {k: v.dtype for k, v in reference.state_dict().items()}
    assert ours == theirs
    assert model.dtype == torch.float16
    kept, _ = clipag.load(str(openai_files["state_dict"]), device="cpu", precision="fp32")
    assert kept.dtype == torch.float32


def test_precision_env_for_unmodified_scripts(openai_files, monkeypatch):
    monkeypatch.setenv("CLIPAG_PRECISION", "fp16")
    model, _ = clipag.load(str(openai_files["state_dict"]), device="cpu")
    assert model.dtype == torch.float16


def test_resnet_state_dict(tmp_path):
    import clip.model

    torch.manual_seed(0)
    reference = clip.model.CLIP(embed_dim=32, image_resolution=64, vision_layers=(1, 1, 1, 1), vision_width=16,
                                vision_patch_size=None, context_length=77, vocab_size=49408,
                                transformer_width=64, transformer_heads=1, transformer_layers=1).eval()
    torch.save(reference.state_dict(), tmp_path / "rn.pt")
    model, _ = clipag.load(str(tmp_path / "rn.pt"), device="cpu")
    assert model.visual.input_resolution == 64
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(image), reference.encode_image(image), atol=ATOL, rtol=0)
