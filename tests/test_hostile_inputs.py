"""Small inputs that ask for big work, and mistakes: each is refused early, naming the file and the field."""

from __future__ import annotations

import json
import resource
import socket
import subprocess
import sys
import time
import zipfile

import pytest
import torch
from hub_fixtures import TINY_OPEN_CLIP, make_hub_repo, tiny_open_clip_state_dict
from safetensors.torch import save_file

import clipag
from clipag.checkpoints import CheckpointError
from clipag.hub import DownloadError
from clipag.model_config import ModelConfigError


def _folder(tmp_path, config: dict):
    folder = tmp_path / "model"
    folder.mkdir()
    save_file(tiny_open_clip_state_dict(), str(folder / "open_clip_model.safetensors"))
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": config}))
    return folder


def test_a_million_layers_is_refused_before_building(tmp_path):
    config = json.loads(json.dumps(TINY_OPEN_CLIP))
    config["vision_cfg"]["layers"] = 1_000_000
    folder = _folder(tmp_path, config)
    start = time.perf_counter()
    with pytest.raises(ModelConfigError, match=r"model/open_clip_model\.safetensors: vision_cfg\.layers = 1,000,000 "
                                               r"is outside the sane range"):
        clipag.load(str(folder), device="cpu")
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize(("width", "message"), [(10**9, r"vision_cfg\.width = 1,000,000,000 is outside"),
                                                ("64", r"vision_cfg\.width = '64' must be an integer")])
def test_bad_widths_name_the_file_and_field(tmp_path, width, message):
    config = json.loads(json.dumps(TINY_OPEN_CLIP))
    config["vision_cfg"]["width"] = width
    with pytest.raises(ModelConfigError, match=message):
        clipag.load(str(_folder(tmp_path, config)), device="cpu")


def test_a_config_that_does_not_fit_its_weights_is_refused(tmp_path):
    config = json.loads(json.dumps(TINY_OPEN_CLIP))
    config["vision_cfg"].update(layers=48, width=1024)  # a plausible model, but not the one in the file
    with pytest.raises(ModelConfigError, match=r"describes a model of about [\d,]+ parameters, but the weights "
                                               r"hold 3,571,329 values"):
        clipag.load(str(_folder(tmp_path, config)), device="cpu")


def test_hub_config_is_checked_too(isolated_caches):
    from huggingface_hub import constants

    config = json.loads(json.dumps(TINY_OPEN_CLIP))
    config["text_cfg"]["layers"] = 10**7
    make_hub_repo(constants.HF_HUB_CACHE, "evil/layers", {"model_cfg": config}, tiny_open_clip_state_dict())
    with pytest.raises(ModelConfigError, match=r"hf-hub:evil/layers \(open_clip_config\.json\): text_cfg\.layers"):
        clipag.load("hf-hub:evil/layers", device="cpu")


def test_torchscript_zip_bomb_is_refused_before_decompressing(openai_files, tmp_path, isolated_caches):
    """A 2 MB-class archive whose tensor member claims to expand to 1 GiB: refused, nothing decompressed or cached."""
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(openai_files["torchscript"]) as source, \
            zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as out:
        first_data = next(i.filename for i in source.infolist() if "/data/" in i.filename)
        for info in source.infolist():
            if info.filename != first_data:
                out.writestr(info, source.read(info.filename))
                continue
            with out.open(info.filename, "w", force_zip64=True) as member:  # streamed: the test never holds 1 GiB
                zeros = bytes(1 << 24)
                for _ in range(64):
                    member.write(zeros)
    bomb_zip = zipfile.ZipFile(bomb)
    assert any(i.file_size >= 1 << 30 and i.compress_size < 10 << 20 for i in bomb_zip.infolist())
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CheckpointError, match=r"bomb\.pt: member .*/data/.* is compressed .* Nothing was "
                                              r"decompressed"):
        clipag.load(str(bomb), device="cpu")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB: nothing near 1 GiB
    converted = isolated_caches / "clipag" / "converted"
    assert not converted.exists() or not list(converted.glob("*.safetensors"))


def test_torchscript_storage_size_must_match_its_tensor(openai_files, tmp_path):
    """A stored member shorter or longer than its tensor needs is corrupt, found before it is read."""
    bad = tmp_path / "short.pt"
    with zipfile.ZipFile(openai_files["torchscript"]) as source, zipfile.ZipFile(bad, "w") as out:
        for info in source.infolist():
            data = source.read(info.filename)
            if info.filename.endswith("/data/0"):
                data = data + bytes(1 << 20)
            out.writestr(info, data)
    with pytest.raises(CheckpointError, match=r"short\.pt: truncated or corrupt TorchScript archive .*declares"):
        clipag.load(str(bad), device="cpu")


def _cli(*args, env_extra=None, tmp_path):
    env = {"PATH": "/usr/bin:/bin", "CLIPAG_CACHE": str(tmp_path / "cache"), "HF_HUB_CACHE": str(tmp_path / "hf"),
           **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "clipag.cli", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def test_invalid_hub_ids_are_clear_errors(tmp_path):
    result = _cli("download", "hf-hub:../../x", tmp_path=tmp_path, env_extra={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "hf-hub:../../x is not a valid Hugging Face repo id" in result.stderr
    folder = tmp_path / "export"
    folder.mkdir()
    save_file(tiny_open_clip_state_dict(), str(folder / "open_clip_model.safetensors"))
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_OPEN_CLIP}))
    result = _cli("import", "hf-hub:../../evil", str(folder), tmp_path=tmp_path)
    assert result.returncode == 1 and "not a valid Hugging Face repo id" in result.stderr
    assert not (tmp_path / "hf").exists() or not list((tmp_path / "hf").rglob("*evil*"))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_download_says_what_to_do(tmp_path, monkeypatch):
    """No `.part` is claimed when none exists; the size, `clipag import`, a local model and the demo are named."""
    import dataclasses

    from huggingface_hub import constants

    from clipag import registry

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    url = f"http://127.0.0.1:{_closed_port()}/CLIPAG_ViTB32.pt"
    monkeypatch.setitem(registry.REGISTRY, "ViT-B/32", dataclasses.replace(registry.REGISTRY["ViT-B/32"], url=url))
    with pytest.raises(DownloadError) as error:
        clipag.load("ViT-B/32", device="cpu")
    message = str(error.value)
    assert "(1.3 GB)" in message and "clipag import ViT-B/32 CLIPAG_ViTB32.pt" in message
    assert "local model folder or file" in message and "python -m clipag.demo --quick" in message
    assert ".part" not in message  # nothing was downloaded, so nothing is kept


def test_unreachable_hub_fails_at_once(tmp_path, monkeypatch):
    """No network: one quick look at the Hub, not huggingface_hub's half-minute of retries per file."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    start = time.perf_counter()
    with pytest.raises(DownloadError, match=r"cannot reach 127\.0\.0\.1.*HF_HUB_OFFLINE=1"):
        clipag.load("hf-hub:chs20/fare2-clip", device="cpu")
    assert time.perf_counter() - start < 10


def test_path_mistakes_are_reported_as_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"\./nope\.pt: no such file or folder \(looked for .*nope\.pt\)"):
        clipag.load("./nope.pt", device="cpu")
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "cross.png")
    with pytest.raises(CheckpointError, match=r"cross\.png: not a weights file \(it is a PNG image\)"):
        clipag.load("cross.png", device="cpu")
    with pytest.raises(RuntimeError, match=r"Model ViT-Q/99 not found; available models"):
        clipag.load("ViT-Q/99", device="cpu")  # a name, not a path: OpenAI's message stays
    torch.manual_seed(0)
