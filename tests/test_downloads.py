"""Downloads against a local HTTP server: resume, verification, atomic writes, the registry cache."""

import dataclasses
import hashlib
import json
import os

import pytest
import torch
from hub_fixtures import TINY_OPEN_CLIP
from replicas import open_clip_2023_checkpoint

import clipag
from clipag import registry
from clipag.checkpoints import CheckpointError
from clipag.hub import DownloadError, OfflineError, download_url

PAYLOAD = os.urandom(300_000)


def test_fresh_download_is_verified(http_server, tmp_path):
    url, served, _ = http_server
    (served / "blob").write_bytes(PAYLOAD)
    sha = download_url(f"{url}/blob", tmp_path / "out", size=len(PAYLOAD),
                       sha256=hashlib.sha256(PAYLOAD).hexdigest(), progress=False)
    assert (tmp_path / "out").read_bytes() == PAYLOAD
    assert sha == hashlib.sha256(PAYLOAD).hexdigest()
    assert not (tmp_path / "out.part").exists()


def test_resume_sends_range_and_appends(http_server, tmp_path):
    url, served, handler = http_server
    (served / "blob").write_bytes(PAYLOAD)
    (tmp_path / "out.part").write_bytes(PAYLOAD[:123_456])
    sha = download_url(f"{url}/blob", tmp_path / "out", size=len(PAYLOAD), progress=False)
    assert handler.requests[-1]["range"] == "bytes=123456-"
    assert (tmp_path / "out").read_bytes() == PAYLOAD
    assert sha == hashlib.sha256(PAYLOAD).hexdigest()  # the hash covers the resumed prefix too


def test_server_without_range_support_restarts(http_server, tmp_path):
    url, served, handler = http_server
    handler.ignore_range = True
    (served / "blob").write_bytes(PAYLOAD)
    (tmp_path / "out.part").write_bytes(b"garbage that must not survive")
    download_url(f"{url}/blob", tmp_path / "out", size=len(PAYLOAD), progress=False)
    assert (tmp_path / "out").read_bytes() == PAYLOAD


def test_already_complete_part_is_finalised(http_server, tmp_path):
    url, served, _ = http_server
    (served / "blob").write_bytes(PAYLOAD)
    (tmp_path / "out.part").write_bytes(PAYLOAD)
    download_url(f"{url}/blob", tmp_path / "out", size=len(PAYLOAD), progress=False)  # server answers 416
    assert (tmp_path / "out").read_bytes() == PAYLOAD


def test_short_file_is_kept_for_resume_and_never_finalised(http_server, tmp_path):
    url, served, _ = http_server
    (served / "blob").write_bytes(PAYLOAD[:1000])
    with pytest.raises(DownloadError, match="expected 300000"):
        download_url(f"{url}/blob", tmp_path / "out", size=len(PAYLOAD), progress=False)
    assert not (tmp_path / "out").exists()
    assert (tmp_path / "out.part").stat().st_size == 1000


def test_oversized_file_is_deleted(http_server, tmp_path):
    url, served, _ = http_server
    (served / "blob").write_bytes(PAYLOAD)
    with pytest.raises(DownloadError, match="deleted"):
        download_url(f"{url}/blob", tmp_path / "out", size=1000, progress=False)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.part").exists()


def test_hash_mismatch_is_deleted(http_server, tmp_path):
    url, served, _ = http_server
    (served / "blob").write_bytes(PAYLOAD)
    with pytest.raises(DownloadError, match="does not match"):
        download_url(f"{url}/blob", tmp_path / "out", sha256="0" * 64, progress=False)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.part").exists()


def test_missing_url_names_it(http_server, tmp_path):
    url, _, _ = http_server
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_url(f"{url}/nope", tmp_path / "out", progress=False)


@pytest.fixture
def tiny_entry(http_server, tmp_path, monkeypatch):
    """A URL-sourced registry entry like CLIPAG's, but tiny and served from 127.0.0.1."""
    import open_clip

    config_dir = tmp_path / "configs"
    config_dir.mkdir()
    (config_dir / "tiny-test.json").write_text(json.dumps(TINY_OPEN_CLIP))
    open_clip.add_model_config(config_dir)
    url, served, handler = http_server
    # written as open_clip's 2023 training loop wrote CLIPAG's file (numpy learning rates, optimizer, scaler)
    state_dict = open_clip_2023_checkpoint(served / "tiny.pt", TINY_OPEN_CLIP, seed=7, batch=2)
    entry = dataclasses.replace(registry.REGISTRY["ViT-B/32"], name="Tiny/32", arch="tiny-test", filename="tiny.pt",
                                url=f"{url}/tiny.pt", size=(served / "tiny.pt").stat().st_size)
    monkeypatch.setitem(registry.REGISTRY, entry.name, entry)
    return entry, state_dict, served, handler


def test_registry_download_converts_and_caches(tiny_entry, isolated_caches, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    entry, state_dict, _, handler = tiny_entry
    model, _ = clipag.load(entry.name, device="cpu")
    for key, value in state_dict.items():
        assert torch.equal(model.state_dict()[key], value), key
    folder = isolated_caches / "clipag" / "Tiny-32"
    assert sorted(p.name for p in folder.iterdir()) == ["open_clip_config.json", "open_clip_model.safetensors",
                                                      "source.json"]  # the pickle is gone
    source = json.loads((folder / "source.json").read_text())
    assert source["sha256"] == hashlib.sha256((tiny_entry[2] / "tiny.pt").read_bytes()).hexdigest()
    assert source["sha256_pinned"] is False  # recorded on first use
    requests = len(handler.requests)
    clipag.load(entry.name, device="cpu")
    assert len(handler.requests) == requests  # served from the cache
    # the cache folder is itself a Hub-layout model folder
    same, _ = clipag.load(str(folder), device="cpu")
    assert torch.equal(same.visual.conv1.weight, model.visual.conv1.weight)


def test_corrupt_cache_file_is_refetched(tiny_entry, isolated_caches, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    entry, state_dict, _, handler = tiny_entry
    clipag.load(entry.name, device="cpu")
    weights = isolated_caches / "clipag" / "Tiny-32" / "open_clip_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    requests = len(handler.requests)
    with pytest.warns(UserWarning, match="fetching it again"):
        model, _ = clipag.load(entry.name, device="cpu")
    assert len(handler.requests) == requests + 1
    assert torch.equal(model.logit_scale.detach(), state_dict["logit_scale"])
    # offline, the same corruption is an error that names the file and says what to do
    weights.write_bytes(weights.read_bytes()[:100])
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(CheckpointError, match=r"open_clip_model\.safetensors.*clipag import Tiny/32"):
        clipag.load(entry.name, device="cpu")


def test_changed_upstream_file_fails_recorded_hash(tiny_entry, isolated_caches, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    entry, _, served, _ = tiny_entry
    clipag.load(entry.name, device="cpu")
    (isolated_caches / "clipag" / "Tiny-32" / "open_clip_model.safetensors").unlink()
    data = bytearray((served / "tiny.pt").read_bytes())
    data[-30] ^= 0xFF  # same size, different content
    (served / "tiny.pt").write_bytes(bytes(data))
    with pytest.raises(DownloadError, match="does not match"):
        clipag.load(entry.name, device="cpu")


def test_offline_registry_miss_is_actionable(tiny_entry):
    entry = tiny_entry[0]
    with pytest.raises(OfflineError,
                       match=r"clipag download Tiny/32.*clipag import Tiny/32 tiny\.pt.*clipag\.demo --quick"):
        clipag.load(entry.name, device="cpu")


def test_import_rejects_wrong_size(tiny_entry, tmp_path):
    from clipag.weights import import_checkpoint

    entry = tiny_entry[0]
    (tmp_path / "other.pt").write_bytes(b"x" * 10)
    with pytest.raises(CheckpointError, match="other.pt: 10 bytes"):
        import_checkpoint(entry, tmp_path / "other.pt")


def test_import_offline_then_load(tiny_entry, tmp_path):
    """`clipag import`: a file downloaded by hand becomes a cached model, offline."""
    from clipag.weights import import_checkpoint

    entry, state_dict, served, _ = tiny_entry
    import_checkpoint(entry, served / "tiny.pt")
    model, _ = clipag.load(entry.name, device="cpu")
    assert torch.equal(model.token_embedding.weight, state_dict["token_embedding.weight"])
    assert (served / "tiny.pt").exists()  # the user's own file is left alone
