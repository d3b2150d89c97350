"""clipag.generate: the loop's maths, determinism, sizes, errors and Ctrl-C, on a tiny 32 px model."""

from __future__ import annotations

import signal

import pytest
import torch
from generate_fixtures import one_thread, save_hub_folder, tiny_model
from PIL import Image

import clipag
from clipag.generation import (
    GenerateConfig,
    GenerationInterrupted,
    Generator,
    dynamic_threshold,
    generate_result,
)

FAST = dict(global_views=4, patch_views=4, prior=None)


@pytest.fixture(autouse=True)
def _single_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def test_dynamic_threshold_maths():
    inside = torch.rand(2, 3, 10, 10)
    assert torch.allclose(dynamic_threshold(inside, 0.95), inside, atol=1e-6)  # s = max(1, q) = 1: identity
    x = torch.linspace(-1.0, 2.0, 3 * 10 * 10).reshape(1, 3, 10, 10)  # 2x-1 spans [-3, 3]
    s = torch.quantile((x * 2 - 1).abs().flatten(), 0.95)
    expected = ((x * 2 - 1).clamp(-s, s) / s + 1) / 2
    out = dynamic_threshold(x, 0.95)
    assert torch.allclose(out, expected, atol=1e-6)
    assert out.min() >= 0 and out.max() <= 1 and ((out == 0) | (out == 1)).sum() >= 14  # top 5% of |.| saturate
    both = dynamic_threshold(torch.cat([inside[:1], x]), 0.95)  # the quantile is per image
    assert torch.allclose(both[0], inside[0], atol=1e-6) and torch.allclose(both[1], out[0], atol=1e-6)


def test_defaults_are_the_notebooks():
    c = GenerateConfig()
    assert (c.steps, c.lr, c.weight_decay, c.grad_clip, c.threshold) == (100, 0.0175, 0.01, 0.001, 0.95)
    assert (c.global_views, c.patch_views, c.global_weight, c.patch_weight, c.noise) == (32, 32, 1.0, 5.0, 0.01)
    assert round(c.patch_fraction * 224) == 128 and c.policy == "color,translation,resize,cutout"


def test_same_seed_same_image_other_seed_other_image(model):
    a = generate_result("a red apple", model=model, steps=4, seed=3, **FAST)
    b = generate_result("a red apple", model=model, steps=4, seed=3, **FAST)
    c = generate_result("a red apple", model=model, steps=4, seed=4, **FAST)
    assert torch.equal(a.tensor, b.tensor) and a.losses == b.losses
    assert not torch.equal(a.tensor, c.tensor)


def test_result_tracks_the_lowest_global_loss_and_frames(model):
    r = generate_result("a blue square", model=model, steps=12, seed=0, frame_every=5, **FAST)
    globals_ = [step["global"] for step in r.losses]
    assert r.steps_done == 12 and r.best_loss == min(globals_) and r.best_step == globals_.index(min(globals_))
    assert all(abs(s["loss"] - (s["global"] + 5 * s["patch"])) < 1e-4 for s in r.losses)
    assert len(r.frames) == 4  # steps 0, 5, 10 and the last
    assert r.image.size == (32, 32) and r.tensor.shape == (1, 3, 32, 32)
    assert 0 <= r.tensor.min() and r.tensor.max() <= 1
    assert r.image.tobytes() != r.start.tobytes()  # the pixels moved


def test_optimization_lowers_the_loss(model):
    r = generate_result("a green tree", model=model, steps=30, seed=0, global_views=8, patch_views=0, prior=None,
                        lr=0.05)
    first, last = r.losses[0]["global"], min(s["global"] for s in r.losses[-5:])
    assert last < first - 0.01


def test_model_is_left_as_the_caller_had_it(model):
    model.train()
    generate_result("a cat", model=model, steps=2, **FAST)
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert type(model.visual.conv1).__name__ == "Conv2d"
    assert all(type(b).__name__ == "ResidualAttentionBlock" for b in model.visual.transformer.resblocks)
    assert all(p.grad is None for p in model.parameters())  # no weight gradients were computed
    model.eval()


def test_canvas_size_defaults_to_the_model_and_other_sizes_work(model):
    assert Generator(model, prior=None).canvas_size() == 32
    big = generate_result("a dog", model=model, steps=2, size=48, **FAST)
    assert big.image.size == (48, 48)
    with pytest.raises(ValueError, match="size must be an integer from 16 to 128"):
        generate_result("a dog", model=model, steps=1, size=129, **FAST)


def test_bad_inputs_fail_clearly(model):
    for prompt in ("", "   "):
        with pytest.raises(ValueError, match="prompt is empty"):
            clipag.generate(prompt, model=model, steps=1, prior=None)
    with pytest.raises(TypeError, match="unknown generation option"):
        clipag.generate("x", model=model, steps=1, prior=None, views=3)
    with pytest.raises(TypeError, match="clipag.load or a CLIP model"):
        clipag.generate("x", model=object(), steps=1)
    with pytest.raises(ValueError, match="policy"):
        clipag.generate("x", model=model, steps=1, prior=None, policy="blur")
    with pytest.raises(FileNotFoundError, match="clipag prior build"):
        clipag.generate("x", model=model, steps=1, prior="/nonexistent/prior.safetensors")


def test_public_generate_returns_an_image_and_takes_a_model_folder(tmp_path):
    folder = save_hub_folder(tmp_path / "tiny")
    image = clipag.generate("a lighthouse", model=str(folder), steps=2, device="cpu", global_views=2,
                            patch_views=2)
    assert isinstance(image, Image.Image) and image.size == (32, 32)
    assert "generate" in clipag.__all__


def test_callback_sees_every_step_and_can_stop(model):
    seen = []
    r = generate_result("a boat", model=model, steps=10, callback=lambda s: seen.append(s.step) or s.step == 3,
                        **FAST)
    assert seen == [0, 1, 2, 3] and r.steps_done == 4 and not r.interrupted


def test_sigint_returns_the_best_image_so_far(model):
    def interrupt(step):
        if step.step == 2:
            signal.raise_signal(signal.SIGINT)  # a real Ctrl-C, delivered to this (main) thread

    with pytest.raises(GenerationInterrupted) as caught:
        generate_result("a house", model=model, steps=50, callback=interrupt, **FAST)
    result = caught.value.result
    assert isinstance(caught.value, KeyboardInterrupt)
    assert result.interrupted and result.steps_done == 3 and result.image.size == (32, 32)
    assert result.best_loss == min(s["global"] for s in result.losses)
    assert all(p.requires_grad for p in model.parameters())  # restored on the way out


def test_init_options(model, tmp_path):
    gray = generate_result("x", model=model, steps=0, init="gray", **FAST)
    assert gray.start.getpixel((5, 5)) == (127, 127, 127)
    dark = generate_result("x", model=model, steps=0, init="dark", **FAST)
    assert max(dark.start.getextrema()[0]) <= 13
    Image.new("RGB", (40, 60), (200, 10, 10)).save(tmp_path / "start.png")
    red = generate_result("x", model=model, steps=0, init=str(tmp_path / "start.png"), **FAST)
    assert red.start.getpixel((16, 16)) == (200, 10, 10)
    with pytest.raises(ValueError, match="init must be one of"):
        generate_result("x", model=model, steps=0, init="sparkles", **FAST)


def test_an_openai_clip_model_object_works(openai_reference):
    """The reference package's model (OpenAI layout: LND transformer, no open_clip blocks) is used as is."""
    before = {k: v.clone() for k, v in openai_reference.state_dict().items()}
    r = generate_result("a red apple", model=openai_reference, steps=2, global_views=2, patch_views=2, prior=None)
    assert r.image.size == (224, 224) and r.steps_done == 2 and r.best_loss < 2
    assert all(torch.equal(v, openai_reference.state_dict()[k]) for k, v in before.items())


def test_a_plain_open_clip_model_object_works():
    import open_clip
    from generate_fixtures import TINY_32

    plain = open_clip.CLIP(**TINY_32).eval()  # no clipag facade: no visual.input_resolution
    r = generate_result("a red apple", model=plain, steps=2, **FAST)
    assert r.image.size == (32, 32) and r.steps_done == 2


def test_views_are_normalised_with_the_models_own_mean_and_std(tmp_path):
    """A model whose preprocess config is not OpenAI's: generation, the preprocess transform and eval all use it."""
    import torch.nn.functional as F

    from clipag.eval import load_pixel_model
    from clipag.model import image_normalization
    from clipag.registry import OPENAI_MEAN, OPENAI_STD

    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    folder = save_hub_folder(tmp_path / "model", preprocess_cfg={"mean": mean, "std": std})
    loaded, preprocess = clipag.load(str(folder), device="cpu")
    views = torch.rand(3, 3, 32, 32)

    def encode(m, s):
        with torch.no_grad():
            return F.normalize(loaded.encode_image((views - torch.tensor(m).view(1, 3, 1, 1)) /
                                                   torch.tensor(s).view(1, 3, 1, 1)), dim=-1)

    for source in (loaded, str(folder)):  # a loaded model, or a name generation loads itself
        with torch.no_grad():
            ours = Generator(source, prior=None)._encode(views)
        assert torch.allclose(ours, encode(mean, std), atol=1e-5)
        assert not torch.allclose(ours, encode(OPENAI_MEAN, OPENAI_STD), atol=1e-2)  # the constant matters
    for source in (loaded, preprocess, {"mean": mean, "std": std}, load_pixel_model(str(folder), "cpu").model):
        got_mean, got_std = image_normalization(source)
        assert got_mean.shape == (1, 3, 1, 1) and torch.allclose(got_mean.flatten(), torch.tensor(mean))
        assert torch.allclose(got_std.flatten(), torch.tensor(std))
    openai_mean, _ = image_normalization(tiny_model())  # a model with no preprocess record: OpenAI's, as its transform
    assert torch.allclose(openai_mean.flatten(), torch.tensor(OPENAI_MEAN))
    with pytest.raises(ValueError, match="no Normalize transform"):
        image_normalization(object())


def test_a_long_prompt_is_cut_with_a_warning(model):
    with pytest.warns(UserWarning, match="longer than 77 tokens"):
        r = generate_result("a very long prompt " * 30, model=model, steps=1, **FAST)
    assert r.steps_done == 1


def test_compile_traces_the_encoder_and_keeps_the_maths(model, monkeypatch):
    """``compile=True`` routes the encoder through torch.compile. The test swaps inductor (a C++ build per
    graph) for the aot_eager backend: the same Dynamo + AOTAutograd tracing of forward and backward, in seconds."""
    import clipag.generation as G

    compiled = []

    def traced(encode, device):
        compiled.append(device)
        return G.torch.compile(encode, dynamic=False, backend="aot_eager")

    monkeypatch.setattr(G, "_compiled", traced)
    torch._dynamo.reset()
    eager = generate_result("a red apple", model=model, steps=3, seed=2, **FAST)
    fast = generate_result("a red apple", model=model, steps=3, seed=2, compile=True, **FAST)
    assert compiled == [torch.device("cpu")]
    assert torch.allclose(fast.tensor, eager.tensor, atol=1e-4)
    assert all(abs(a["loss"] - b["loss"]) < 1e-4 for a, b in zip(fast.losses, eager.losses, strict=True))
    assert all(p.requires_grad for p in model.parameters())
