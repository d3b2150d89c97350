"""The start-image prior: fitting from a folder or a dataset, the stored factor, sampling, best match, CLI."""

from __future__ import annotations

import sys

import pytest
import torch
import torchvision.transforms.functional as TF
from generate_fixtures import one_thread, tiny_model
from PIL import Image

from clipag.cli import main
from clipag.generation import GenerateConfig, Generator
from clipag.prior import Prior, build_prior, default_prior_path, fit_gaussians

COLOURS = {"blue": (20, 40, 220), "green": (30, 200, 40), "red": (220, 30, 30)}


@pytest.fixture(autouse=True)
def _single_thread():
    with one_thread():
        yield


def noisy(colour, size, seed, mode="RGB"):
    g = torch.Generator().manual_seed(seed)
    base = torch.tensor(colour, dtype=torch.float32).view(3, 1, 1) / 255
    pixels = (base + 0.15 * torch.randn(3, size[1], size[0], generator=g)).clamp(0, 1)
    return TF.to_pil_image(pixels).convert(mode)


@pytest.fixture
def folder(tmp_path):
    """Three colour classes, 6 images each, in assorted sizes and modes, plus clutter the builder must skip."""
    root = tmp_path / "images"
    for c, (name, colour) in enumerate(COLOURS.items()):
        (root / name).mkdir(parents=True)
        for i in range(6):
            size = [(64, 64), (40, 30), (25, 50)][i % 3]
            noisy(colour, size, seed=10 * c + i, mode="RGBA" if i == 5 else "RGB").save(root / name / f"{i}.png")
    (root / "red" / "notes.txt").write_text("not an image")
    (root / "empty").mkdir()
    return root


def test_folder_prior_fits_each_class(folder):
    with pytest.warns(UserWarning, match="no images"):
        prior = build_prior(folder, resolution=8)
    assert prior.classes == ["blue", "green", "red"] and prior.counts == [6, 6, 6]
    assert prior.mean.shape == (3, 192) and prior.factor.shape[0] == 3 and prior.factor.shape[2] == 192
    red = prior.mean[2].reshape(3, 8, 8).mean((1, 2))
    assert red[0] > 0.5 and red[1] < -0.5  # in the notebook's [-1, 1] space, red is high R, low G
    # the stored factor reproduces the empirical covariance of the shrunk images exactly
    images = []
    for i in range(6):
        with Image.open(folder / "green" / f"{i}.png") as image:
            images.append(TF.to_tensor(TF.center_crop(TF.resize(image.convert("RGB"), 8), [8, 8])))
    x = torch.stack(images).double().flatten(1) * 2 - 1
    centred = x - x.mean(0)
    expected = centred.T @ centred / len(x) + 1e-4 * torch.eye(192, dtype=torch.float64)
    assert torch.allclose(prior.covariance(1), expected, atol=1e-5)
    assert torch.allclose(prior.mean[1].double(), x.mean(0), atol=1e-6)


def test_sampling_draws_from_the_fitted_gaussian_and_cycles_through_classes():
    g = torch.Generator().manual_seed(0)
    data = {"a": torch.rand(40, 3, 2, 2, generator=g) * 0.5 + 0.25, "b": torch.full((3, 3, 2, 2), 0.5)}
    prior = fit_gaussians(data, resolution=2, jitter=1e-4)
    assert prior.factor.shape[1] == 12  # min(n, d) rows: 12 dims here
    samples = prior.sample(20000, torch.Generator().manual_seed(1))
    a = samples[0::2].double().flatten(1) * 2 - 1  # even samples are class a (cycling)
    b = samples[1::2]
    assert torch.allclose(a.mean(0), prior.mean[0].double(), atol=0.01)
    assert torch.allclose(torch.cov(a.T, correction=0), prior.covariance(0), atol=0.004)
    assert (b - 0.5).abs().max() < 0.05  # a constant class: only the 1e-4 jitter remains
    assert samples.min() >= 0 and samples.max() <= 1


def test_all_classes_are_used_unlike_the_notebook():
    means = {f"c{i:03d}": torch.full((2, 3, 1, 1), i / 199) for i in range(200)}
    prior = fit_gaussians(means, resolution=1, jitter=1e-12)
    samples = prior.sample(1000, torch.Generator().manual_seed(0))
    classes = (samples.flatten(1)[:, 0] * 199).round().long()
    assert torch.equal(classes.bincount(minlength=200), torch.full((200,), 5))
    score = lambda images: images.flatten(1)[:, 0]  # noqa: E731 - "brightest" wins
    best = prior.best_match(score, 1000, torch.Generator().manual_seed(0), batch=64)
    assert best.shape == (1, 3, 1, 1) and abs(float(best.flatten()[0]) - 1.0) < 1e-4  # the last class, c199


def test_save_load_roundtrip_and_compact_storage(folder, tmp_path):
    with pytest.warns(UserWarning, match="no images"):
        prior = build_prior(folder, resolution=16)
    path = prior.save(tmp_path / "p.safetensors")
    loaded = Prior.load(path)
    assert loaded.classes == prior.classes and loaded.counts == prior.counts and loaded.jitter == 1e-4
    assert torch.equal(loaded.factor, prior.factor) and torch.equal(loaded.mean, prior.mean)
    assert prior.factor.shape == (3, 5, 768)  # 6 images per class: rank 5, not a 768x768 Cholesky factor
    assert path.stat().st_size < 60_000
    (tmp_path / "bad.safetensors").write_bytes(path.read_bytes()[:100])
    with pytest.raises(Exception):  # noqa: B017 - any clear failure, never a silent bad prior
        Prior.load(tmp_path / "bad.safetensors")


def test_hf_dataset_source(monkeypatch):
    datasets = pytest.importorskip("datasets")
    images = [noisy(COLOURS["red" if i % 2 else "blue"], (64, 64), seed=i) for i in range(8)]
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["n01", "n02"])})
    table = datasets.Dataset.from_dict({"img": images, "label": [i % 2 for i in range(8)]}, features=features)
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda name, split: calls.append((name, split)) or table)
    prior = build_prior("Maysee/tiny-imagenet", split="valid", resolution=4)
    assert calls == [("Maysee/tiny-imagenet", "valid")]
    assert prior.classes == ["n01", "n02"] and prior.counts == [4, 4]
    assert prior.mean[1].reshape(3, 4, 4).mean((1, 2))[0] > 0.5  # class n02 (odd rows) is red


def test_missing_datasets_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ImportError, match=r"needs datasets, from clipag's \[train\] extra") as info:
        build_prior("Maysee/tiny-imagenet")
    assert 'pip install -e ".[train]"' in str(info.value)


def test_generation_starts_from_the_prior(tmp_path):
    constant = {"only": torch.tensor([0.9, 0.2, 0.1]).view(1, 3, 1, 1).expand(4, 3, 16, 16).clone()}
    prior = fit_gaussians(constant, resolution=16, jitter=1e-12)
    generator = Generator(tiny_model(), prior=prior, config=GenerateConfig(steps=0, prior_samples=10))
    start = generator.session("anything").start
    assert start.size == (32, 32)
    assert all(abs(a - b) <= 1 for a, b in zip(start.getpixel((7, 20)), (229, 51, 25), strict=True))
    no_prior = Generator(tiny_model(), prior=prior, config=GenerateConfig(init="gray"))
    assert no_prior.session("anything").start.getpixel((7, 20)) == (127, 127, 127)  # an explicit init wins


def test_cli_prior_build_then_generate_with_it(folder, tmp_path, capsys):
    out = tmp_path / "colours.safetensors"
    with pytest.warns(UserWarning):
        assert main(["prior", "build", str(folder), "-o", str(out), "--resolution", "16"]) == 0
    assert Prior.load(out).classes == ["blue", "green", "red"]
    assert "3 classes, 18 images" in capsys.readouterr().err
    model_out = tmp_path / "img.png"
    from generate_fixtures import save_hub_folder

    model = save_hub_folder(tmp_path / "m")
    assert main(["generate", "red", "--model", str(model), "--prior", str(out), "--steps", "1", "--views", "1",
                 "--patches", "1", "--set", "prior_samples=6", "-o", str(model_out)]) == 0
    assert "start: prior" in capsys.readouterr().err and model_out.exists()
    assert main(["prior", "build", str(tmp_path / "img.png")]) == 2  # a file is not a source


def test_default_prior_location_is_used_automatically(folder, capsys):
    with pytest.warns(UserWarning):
        assert main(["prior", "build", str(folder)]) == 0
    assert default_prior_path().exists()
    assert Generator(tiny_model()).prior is not None  # prior="auto" picks it up
    assert Generator(tiny_model(), prior=None).prior is None
