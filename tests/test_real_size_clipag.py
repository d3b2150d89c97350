"""CLIPAG's file at its real size and architecture: open_clip ``ViT-B-32`` (GELU), 2023 training checkpoint.

The replica (tests/replicas.py, ``open_clip_2023_checkpoint``) has random weights and AdamW state over the image
tower, about 1.3 GB like the real 1,310,567,621-byte file. It exercises the registry entry's own configuration on
every route: ``clipag download``/``load("ViT-B/32")``, ``clipag import``, ``load(path)`` and the official
open_clip call under ``clipag run``. Slow (a minute or two, 1.3 GB of disk): run with ``python -m pytest -m slow``.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from replicas import open_clip_2023_checkpoint

import clipag
from clipag import registry

pytestmark = pytest.mark.slow
SCRIPTS = Path(__file__).parent / "scripts"


@pytest.fixture(scope="module")
def real_size(tmp_path_factory):
    import open_clip

    path = tmp_path_factory.mktemp("real-size") / "CLIPAG_ViTB32.pt"
    config = open_clip.get_model_config("ViT-B-32")
    open_clip_2023_checkpoint(path, config, steps=2, batch=2)
    model = open_clip.create_model("ViT-B-32").eval()  # the official loader's model: open_clip ViT-B-32, GELU
    open_clip.load_checkpoint(model, str(path), weights_only=False)
    torch.manual_seed(0)
    image = torch.rand(2, 3, 224, 224)
    text = clipag.tokenize(["a photo of a cat", "a diagram"])
    with torch.no_grad():
        expected = {"image": model.encode_image(image), "text": model.encode_text(text)}
    return path, (image, text), expected


def _assert_matches(model, inputs, expected):
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(inputs[0]), expected["image"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.encode_text(inputs[1]), expected["text"], atol=1e-5, rtol=1e-5)


def test_real_size_replica_by_every_route(real_size, http_server, isolated_caches, monkeypatch):
    from huggingface_hub import constants

    from clipag.cli import main

    path, inputs, expected = real_size
    assert path.stat().st_size > 1_200_000_000  # like the real file: most of it is optimizer state
    model, _ = clipag.load(str(path), device="cpu")  # load(path)
    _assert_matches(model, inputs, expected)

    # The registry entry itself (its architecture and activation), with only the size set to the replica's.
    url, served, _ = http_server
    (served / "CLIPAG_ViTB32.pt").symlink_to(path)
    entry = dataclasses.replace(registry.REGISTRY["ViT-B/32"], url=f"{url}/CLIPAG_ViTB32.pt", size=path.stat().st_size)
    monkeypatch.setitem(registry.REGISTRY, "ViT-B/32", entry)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert main(["download", "ViT-B/32"]) == 0  # clipag download
    model, _ = clipag.load("ViT-B/32", device="cpu")
    _assert_matches(model, inputs, expected)
    folder = isolated_caches / "clipag" / "ViT-B-32"
    assert sorted(p.name for p in folder.iterdir()) == ["open_clip_config.json", "open_clip_model.safetensors",
                                                      "source.json"]
    assert (folder / "open_clip_model.safetensors").stat().st_size < 700_000_000  # weights only, no optimizer

    (folder / "open_clip_model.safetensors").unlink()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert main(["import", "ViT-B/32", str(path)]) == 0  # clipag import, offline
    model, _ = clipag.load("ViT-B/32", device="cpu")
    _assert_matches(model, inputs, expected)


def test_real_size_official_open_clip_call_under_clipag_run(real_size, tmp_path):
    path, inputs, expected = real_size
    env = {"PATH": "/usr/bin:/bin", "CLIPAG_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-m", "clipag.cli", "run", str(SCRIPTS / "open_clip_official_load.py"),
                          "ViT-B/32", str(path), str(tmp_path / "out.pt")], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    got = torch.load(tmp_path / "out.pt")
    import open_clip

    model = open_clip.create_model("ViT-B-32").eval()
    open_clip.load_checkpoint(model, str(path), weights_only=False)
    torch.manual_seed(0)
    image = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(got["image"], model.encode_image(image), atol=1e-5, rtol=1e-5)
        text = open_clip.tokenize(["a photo of a cat", "a diagram"])
        torch.testing.assert_close(got["text"], model.encode_text(text), atol=1e-5, rtol=1e-5)
