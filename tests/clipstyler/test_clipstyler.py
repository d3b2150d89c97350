"""CLIPStyler adapter: each loss term by hand, templates, augmentations, StyleNet, VGG taps and its offline
errors, and the styling loop (the CLI and the upstream-style script: test_clipstyler_cli.py)."""

from __future__ import annotations

import math
import urllib.error

import pytest
import torch
from clipag.adapters.clipstyler import losses as L
from clipag.adapters.clipstyler.stylenet import StyleNet
from clipag.adapters.clipstyler.styler import StyleConfig, StyleInterrupted, Styler, finish
from clipag.adapters.clipstyler.vgg import VGGContent, checkpoint_path, load_vgg_content

from clipag import augment as A
from clipag.hub import DownloadError, OfflineError


# -- loss terms against hand-computed values ------------------------------------------------------------------
def test_total_variation_is_the_sum_of_four_difference_norms():
    x = torch.tensor([[0.0, 1.0], [3.0, 5.0]]).view(1, 1, 2, 2)
    # right: (-1, -2) -> sqrt(5); down: (-3, -4) -> 5; anti-diagonal: 3 - 1 -> 2; diagonal: 0 - 5 -> 5
    assert L.total_variation(x).item() == pytest.approx(math.sqrt(5) + 12)


def test_content_loss_sums_the_per_layer_mse():
    output = {"conv4_2": torch.tensor([1.0, 2.0]), "conv5_2": torch.tensor([[3.0]])}
    content = {"conv4_2": torch.zeros(2), "conv5_2": torch.ones(1, 1)}
    assert L.content_loss(output, content).item() == pytest.approx((1 + 4) / 2 + 4)


def test_directional_loss_by_hand():
    source = torch.tensor([[1.0, 0.0]])
    direction = torch.tensor([[0.0, 1.0]])
    images = torch.tensor([[0.0, 2.0], [-3.0, 0.0]])  # normalised: (0, 1) and (-1, 0)
    # (0,1)-(1,0) = (-1,1): cos with (0,1) = 1/sqrt2.  (-1,0)-(1,0) = (-2,0): cos = 0.
    loss = L.directional_loss(images, source, direction)
    assert loss.tolist() == pytest.approx([1 - 1 / math.sqrt(2), 1.0])
    assert L.directional_loss(images, 5 * source, direction).tolist() == pytest.approx(loss.tolist())


def test_patch_loss_zeroes_crops_below_the_threshold():
    source, direction = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    images = torch.tensor([[0.0, 2.0], [-3.0, 0.0]], requires_grad=True)  # losses 0.293 and 1
    loss = L.patch_loss(images, source, direction, threshold=0.7)
    assert loss.item() == pytest.approx(0.5)  # (0 + 1) / 2: the mean still counts the zeroed crop
    loss.backward()
    assert images.grad[0].abs().sum() == 0 and images.grad[1].abs().sum() > 0  # the zeroed crop gets no gradient
    assert L.patch_loss(images, source, direction, threshold=0.2).item() == pytest.approx(
        (1 - 1 / math.sqrt(2) + 1) / 2)


def test_text_direction_is_the_unit_difference():
    assert L.text_direction(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])).tolist()[0] == pytest.approx(
        [1 / math.sqrt(2), -1 / math.sqrt(2)])


def test_templates_are_clipstylers_79():
    templates = L.IMAGENET_TEMPLATES
    assert len(templates) == 79 == len(set(templates))
    assert templates[0] == "a bad photo of a {}." and templates[-1] == "a tattoo of the {}."
    assert "a photo of many {}." not in templates and all(t.count("{}") == 1 for t in templates)


def test_template_features_average_raw_embeddings_then_normalise():
    seen: list[str] = []

    def tokenize(texts):
        seen.extend(texts)
        return torch.arange(len(texts))[:, None]

    def encode_text(tokens):  # template i -> (i, 1): the norms differ, so mean-then-normalise is testable
        i = tokens[:, 0].float()
        return torch.stack([i, torch.ones_like(i)], dim=1)

    features = L.template_text_features(encode_text, tokenize, "Fire")
    assert seen == [t.format("Fire") for t in L.IMAGENET_TEMPLATES]
    expected = torch.tensor([[39.0, 1.0]])  # mean of 0..78 is 39
    assert torch.allclose(features, expected / expected.norm())


def test_finish_is_upstreams_contrast_then_stretch():
    import torchvision.transforms.functional as TF

    image = torch.rand(1, 3, 8, 8) * 0.5 + 0.2
    boosted = TF.adjust_contrast(image, 1.5)
    expected = (boosted - boosted.min()) / (boosted.max() - boosted.min())
    assert torch.allclose(finish(image), expected)
    assert finish(image).min() == 0 and finish(image).max() == pytest.approx(1)
    assert torch.equal(finish(image, None), image)


# -- augmentations ------------------------------------------------------------------------------------------
def test_random_windows_are_crops_of_the_image():
    image = torch.arange(2 * 10 * 12, dtype=torch.float32).view(1, 2, 10, 12)
    windows = A.random_windows(image, 6, 4, torch.Generator().manual_seed(0))
    assert windows.shape == (6, 2, 4, 4)
    for window in windows:  # each is a contiguous 4x4 block of the image
        top, left = divmod(int(window[0, 0, 0].item()), 12)
        assert torch.equal(window, image[0, :, top:top + 4, left:left + 4])
    with pytest.raises(ValueError, match="one image"):
        A.random_windows(image.expand(2, -1, -1, -1), 2, 4)


def test_random_perspective_is_kornias_with_our_corners():
    import kornia.augmentation as K

    x = torch.rand(3, 3, 20, 24)
    start, end = A.perspective_corners(3, 20, 24, 0.5, torch.Generator().manual_seed(0))
    assert ((end - start).abs() <= torch.tensor([6.0, 5.0])).all()  # at most scale * side / 2 each way
    aug = K.RandomPerspective(0.5, p=1.0)
    params = {**aug.forward_parameters(x.shape), "start_points": start, "end_points": end}
    reference = aug(x, params=params)
    assert torch.allclose(A.random_perspective(x, 0.5, torch.Generator().manual_seed(0)), reference, atol=1e-6)


# -- networks ------------------------------------------------------------------------------------------------
def test_stylenet_architecture_and_output():
    net = StyleNet()
    assert sum(p.numel() for p in net.parameters()) == 615_267  # upstream's UNet(ngf=16)
    x = torch.rand(1, 3, 40, 24)
    out = net(x)
    assert out.shape == x.shape and 0 < out.min() and out.max() < 1
    assert torch.allclose(net(x, use_sigmoid=False).sigmoid(), out)
    with pytest.raises(ValueError, match="multiples of 8"):
        net(torch.rand(1, 3, 36, 24))


def test_vgg_taps_are_upstreams_post_relu_activations():
    vgg = VGGContent.random()
    x = torch.rand(1, 3, 32, 32)
    normalized = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    features = vgg(x)
    assert len(vgg.features) == 32 and not any(p.requires_grad for p in vgg.parameters())
    # upstream stores layer 21's output, which the in-place ReLU at 22 then overwrites (and 30's, by 31)
    assert torch.allclose(features["conv4_2"], vgg.features[:23](normalized), atol=1e-6)
    assert torch.allclose(features["conv5_2"], vgg.features[:32](normalized), atol=1e-6)
    assert features["conv4_2"].min() >= 0


def test_vgg_loads_from_the_torch_hub_cache(vgg_cache):
    loaded = load_vgg_content(progress=False)
    assert checkpoint_path() == vgg_cache / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth"
    for a, b in zip(loaded.state_dict().values(), VGGContent.random().state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_vgg_offline_error_says_which_file_to_put_where(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("CLIPAG_OFFLINE", "1")
    with pytest.raises(OfflineError) as error:
        load_vgg_content()
    message = str(error.value)
    assert "vgg19-dcbb9e9d.pth" in message and str(tmp_path / "hub" / "checkpoints") in message
    assert "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth" in message


def test_vgg_failed_download_gives_the_same_advice(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr("clipag.hub.is_offline", lambda: False)  # the suite is offline by default
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(DownloadError, match="no route to host.*hub/checkpoints"):
        load_vgg_content()


def test_vgg_corrupt_or_foreign_cache_file_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = checkpoint_path()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(RuntimeError, match="truncated or corrupt") as error:
        load_vgg_content()
    assert str(path) in str(error.value)
    torch.save({"features.0.weight": torch.zeros(1)}, path)
    with pytest.raises(RuntimeError, match="not torchvision's VGG19"):
        load_vgg_content()


# -- the styling loop ---------------------------------------------------------------------------------------
def small_config(**overrides) -> StyleConfig:
    return StyleConfig(**{"steps": 2, "size": (64, 64), "crops": 4, "crop_size": 32, **overrides})


def test_two_steps_train_the_stylenet_reproducibly(models, photo):
    vgg = VGGContent.random()
    styler = Styler(str(models["a"]), device="cpu", vgg=vgg, config=small_config())
    first = styler.run(photo, "an oil painting", seed=3)
    assert first.steps_done == 2 and first.image.size == (64, 64)
    assert set(first.losses[0]) == {"loss", "patch", "content", "tv", "directional"}
    assert all(math.isfinite(v) for step in first.losses for v in step.values())
    again = styler.run(photo, "an oil painting", seed=3)
    assert torch.equal(first.raw, again.raw)  # same seed, same machine: the same image
    assert not torch.equal(first.raw, styler.run(photo, "an oil painting", seed=4).raw)
    untrained = Styler(str(models["a"]), device="cpu", vgg=vgg, config=small_config(steps=0)).run(photo, "x", seed=3)
    assert not torch.equal(first.raw, untrained.raw)  # the two steps changed the network


def test_total_loss_weights_upstreams_terms(models, photo):
    styler = Styler(str(models["a"]), device="cpu", vgg=VGGContent.random(), config=small_config())
    record = styler.run(photo, "fire", seed=0).losses[0]
    assert record["loss"] == pytest.approx(9000 * record["patch"] + 150 * record["content"] + 2e-3 * record["tv"]
                                           + 500 * record["directional"], rel=1e-5)


def test_fast_paths_do_not_change_the_losses(models, photo):
    vgg = VGGContent.random()
    runs = [Styler(str(models["a"]), device="cpu", vgg=vgg, config=small_config(fast=fast)).run(photo, "ice", seed=1)
            for fast in (True, False)]
    for fast, plain in zip(runs[0].losses, runs[1].losses, strict=True):
        assert fast == pytest.approx(plain, rel=1e-4, abs=1e-6)


def test_learning_rate_schedule_is_step_lr(models, photo):
    styler = Styler(str(models["a"]), device="cpu", vgg=VGGContent.random(), config=small_config(lr_step=1))
    session = styler.session(photo, "fire")
    session.step()
    session.step()
    assert session.optimizer.param_groups[0]["lr"] == pytest.approx(5e-4 / 4)


def test_source_text_and_templates_are_knobs(models, photo):
    import torch.nn.functional as F

    from clipag.tokenizer import tokenize

    styler = Styler(str(models["a"]), device="cpu", vgg=VGGContent.random(), config=small_config(templates=("{}",)))
    session = styler.session(photo, "fire", source="a red ring")
    with torch.no_grad():
        fire, ring = F.normalize(styler.model.encode_text(tokenize(["fire", "a red ring"])), dim=-1)
    assert torch.allclose(session.direction[0], F.normalize(fire - ring, dim=-1), atol=1e-6)
    with pytest.raises(ValueError, match="needs a"):
        StyleConfig(templates=("no slot",)).validate()


def test_callback_interrupt_keeps_the_current_result(models, photo):
    styler = Styler(str(models["a"]), device="cpu", vgg=VGGContent.random(), config=small_config(steps=10))

    def stop(step):
        if step.step == 1:
            raise KeyboardInterrupt

    with pytest.raises(StyleInterrupted) as stopped:
        styler.run(photo, "fire", callback=stop)
    assert stopped.value.result.interrupted and stopped.value.result.steps_done == 2


def test_bad_input_is_a_clear_error(models, photo):
    with pytest.raises(ValueError, match="multiple of 8"):
        StyleConfig(size=(60, 64)).validate()
    with pytest.raises(ValueError, match="preprocess="):
        Styler(torch.nn.Linear(1, 1), vgg=VGGContent.random())
    styler = Styler(str(models["a"]), device="cpu", vgg=VGGContent.random(), config=small_config())
    with pytest.raises(ValueError, match="style text is empty"):
        styler.session(photo, " ")
    with pytest.raises(FileNotFoundError, match="not found"):
        styler.session(photo.with_name("missing.png"), "fire")
