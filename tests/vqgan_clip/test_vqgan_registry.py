"""Released VQGANs by name: verified download, conversion once, trust on first use, offline, clipag import."""

from __future__ import annotations

import pytest
import torch
from clipag.adapters.vqgan_clip import registry
from clipag.adapters.vqgan_clip.loop import VQGANCLIP, VQGANCLIPConfig
from clipag.adapters.vqgan_clip.vqgan import build_from_config, load_vqgan
from huggingface_hub import constants
from vqgan_fixtures import fill_like_fixture, tiny_config, write_lightning_ckpt, write_yaml

from clipag.cli import main
from clipag.hub import DownloadError, OfflineError, sha256_of


@pytest.fixture
def served_vqgan(http_server, monkeypatch):
    """A registry entry 'tiny' served over HTTP as taming publishes its files (yaml + Lightning .ckpt)."""
    base, folder, _ = http_server
    config = tiny_config()
    model = build_from_config(config["model"])
    fill_like_fixture(model)
    write_yaml(folder / "model.yaml", config)
    write_lightning_ckpt(folder / "last.ckpt", model.state_dict())
    entry = registry.VQGANEntry("tiny", "a tiny test VQGAN", f"{base}/model.yaml", f"{base}/last.ckpt", "3 MB")
    monkeypatch.setitem(registry.VQGANS, "tiny", entry)
    return folder, model


def test_download_converts_once_and_records_the_sha256(served_vqgan, monkeypatch):
    folder, model = served_vqgan
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    config, weights = registry.fetch_vqgan("tiny", progress=False)
    cache = registry.vqgan_dir("tiny")
    assert (config, weights) == (cache / "config.yaml", cache / "model.safetensors")
    assert not (cache / "last.ckpt").exists()  # converted; the pickle is gone
    source = registry.read_json(cache / "source.json")
    assert source["sha256"] == sha256_of(folder / "last.ckpt") and not source["sha256_pinned"]
    assert "loss.discriminator.*" in source["ignored"]
    loaded = load_vqgan(config, weights)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert registry.fetch_vqgan("tiny") == (config, weights)  # offline from the cache


def test_a_changed_file_fails_the_recorded_sha256(served_vqgan, monkeypatch):
    folder, model = served_vqgan
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    _, weights = registry.fetch_vqgan("tiny", progress=False)
    weights.unlink()
    write_lightning_ckpt(folder / "last.ckpt", {k: v + 1 for k, v in model.state_dict().items()})
    with pytest.raises(DownloadError, match="does not match the expected"):
        registry.fetch_vqgan("tiny", progress=False)


def test_offline_and_not_cached_says_how_to_get_it(served_vqgan):
    with pytest.raises(OfflineError, match=r"clipag download tiny.*clipag import tiny last.ckpt --config"):
        registry.fetch_vqgan("tiny")
    with pytest.raises(RuntimeError, match=r"VQGAN nope not found; available VQGANs = \[.*vqgan_gumbel_f8_8192"):
        registry.fetch_vqgan("nope")


def test_every_released_name_is_registered():
    assert {"vqgan_imagenet_f16_1024", "vqgan_imagenet_f16_16384", "vqgan_gumbel_f8_8192", "coco", "faceshq",
            "wikiart_16384", "sflckr"} <= set(registry.VQGANS)
    for entry in registry.VQGANS.values():
        assert entry.config_url.startswith("http") and entry.checkpoint_url.startswith("http")


def test_clipag_import_and_download_by_name(served_vqgan, openai_files, capsys):
    folder, model = served_vqgan
    assert main(["import", "tiny", str(folder / "last.ckpt"), "--config", str(folder / "model.yaml")]) == 0
    assert capsys.readouterr().out.strip() == str(registry.vqgan_dir("tiny"))
    assert main(["download", "tiny"]) == 0  # cached: no network (the tests are offline)
    settings = VQGANCLIPConfig(steps=1, size=(16, 16), cutn=2)
    gen = VQGANCLIP(load_clip(openai_files), "tiny", device="cpu", settings=settings)
    assert torch.equal(gen.vqgan.decoder.conv_out.weight, model.decoder.conv_out.weight)
    assert main(["import", "tiny", str(folder / "model.yaml")]) == 1  # not a checkpoint: an error, nothing cached
    assert "model.yaml" in capsys.readouterr().err


def load_clip(openai_files):
    from clipag.loader import load

    return load(str(openai_files["state_dict"]), device="cpu")
