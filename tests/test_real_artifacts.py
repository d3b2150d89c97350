"""The real files clipag reads, as their real writers wrote them (tests/replicas.py), by every route.

Each test names its replica's writer. The outputs are compared with what the official loader's model computes
from the same file (open_clip with ``weights_only=False``, the way CLIPAG's users load it today).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hub_fixtures import make_hub_repo
from replicas import (
    code_running_checkpoint,
    numpy1_pickle_module,
    open_clip_2023_checkpoint,
    open_clip_hub_bin_repo,
    open_clip_train_checkpoint,
)

import clipag
from clipag import registry
from clipag.checkpoints import CheckpointError, read_checkpoint

# A tiny open_clip config whose head width is OpenAI's 64, so a bare file's architecture is inferred exactly.
TINY = {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 64},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2}}
SCRIPTS = Path(__file__).parent / "scripts"


def official_features(model_cfg: dict, checkpoint: Path, quick_gelu: bool = False) -> dict[str, torch.Tensor]:
    """What open_clip computes from the file, read as CLIPAG's users read it (``weights_only=False``)."""
    import open_clip

    model = open_clip.CLIP(**model_cfg, quick_gelu=quick_gelu).eval()
    open_clip.load_checkpoint(model, str(checkpoint), weights_only=False)
    return features(model)


def features(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    size = model.visual.image_size
    size = size[0] if isinstance(size, tuple | list) else size
    image = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    text = clipag.tokenize(["a photo of a cat", "a diagram"])
    with torch.no_grad():
        return {"image": model.encode_image(image), "text": model.encode_text(text)}


def assert_same_features(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    got = features(model)
    for key in ("image", "text"):
        torch.testing.assert_close(got[key], expected[key], atol=1e-5, rtol=1e-5, msg=key)


@pytest.fixture(scope="module")
def checkpoint_2023(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("replica2023") / "CLIPAG_ViTB32.pt"
    open_clip_2023_checkpoint(path, TINY)
    return path


def test_2023_replica_reproduces_the_refusal(checkpoint_2023):
    """The replica is what CLIPAG's file is: plain weights-only loading refuses its numpy learning rates."""
    with zipfile.ZipFile(checkpoint_2023) as archive:
        pickled = archive.read(next(n for n in archive.namelist() if n.endswith("/data.pkl")))
    assert b"numpy.core.multiarray\nscalar" in pickled  # numpy 1.x's spelling, as in 2023
    with pytest.raises(Exception, match="numpy.core.multiarray.scalar"):
        torch.load(checkpoint_2023, weights_only=True)
    full = torch.load(checkpoint_2023, weights_only=False)
    assert sorted(full) == ["epoch", "name", "optimizer", "scaler", "state_dict"]
    assert all(k.startswith("module.") for k in full["state_dict"])
    assert len(full["optimizer"]["state"]) > 0 and "scale" in full["scaler"]
    assert all(type(g["lr"]) is np.float64 for g in full["optimizer"]["param_groups"])


def test_2023_checkpoint_loads_by_path(checkpoint_2023, isolated_caches):
    model, _ = clipag.load(str(checkpoint_2023), device="cpu")
    assert_same_features(model, official_features(TINY, checkpoint_2023))
    converted = [p for p in (isolated_caches / "clipag" / "converted").iterdir() if p.name != ".locks"]
    assert [p.suffix for p in converted] == [".safetensors"]  # the cache holds weights only (and lock files)
    assert not any("exp_avg" in k for k in read_checkpoint(converted[0]).state_dict)


@pytest.fixture
def clipag_like_entry(http_server, checkpoint_2023, tmp_path, monkeypatch):
    """CLIPAG's registry entry with this replica in place of the 1.3 GB file, served from 127.0.0.1."""
    import open_clip

    url, served, handler = http_server
    (served / "CLIPAG_ViTB32.pt").write_bytes(checkpoint_2023.read_bytes())
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "replica-tiny.json").write_text(json.dumps(TINY))
    open_clip.add_model_config(tmp_path / "configs")
    entry = dataclasses.replace(registry.REGISTRY["ViT-B/32"], arch="replica-tiny", url=f"{url}/CLIPAG_ViTB32.pt",
                                size=checkpoint_2023.stat().st_size)
    monkeypatch.setitem(registry.REGISTRY, "ViT-B/32", entry)
    return entry


def test_2023_checkpoint_by_download(clipag_like_entry, checkpoint_2023, isolated_caches, monkeypatch, capsys):
    """`clipag download ViT-B/32`, then `clip.load("ViT-B/32")` from the cache."""
    from huggingface_hub import constants

    from clipag.cli import main

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert main(["download", "ViT-B/32"]) == 0
    folder = isolated_caches / "clipag" / "ViT-B-32"
    assert sorted(p.name for p in folder.iterdir()) == ["open_clip_config.json", "open_clip_model.safetensors",
                                                      "source.json"]  # the pickle and its optimizer are gone
    model, _ = clipag.load("ViT-B/32", device="cpu")
    assert_same_features(model, official_features(TINY, checkpoint_2023))


def test_2023_checkpoint_by_import(clipag_like_entry, checkpoint_2023, isolated_caches):
    """`clipag import ViT-B/32 CLIPAG_ViTB32.pt`, offline."""
    from clipag.cli import main

    assert main(["import", "ViT-B/32", str(checkpoint_2023)]) == 0
    model, _ = clipag.load("ViT-B/32", device="cpu")
    assert_same_features(model, official_features(TINY, checkpoint_2023))


def test_code_deep_in_optimizer_state_is_refused_by_every_route(clipag_like_entry, tmp_path, isolated_caches):
    from clipag.weights import import_checkpoint

    marker = tmp_path / "code-ran"
    state_dict = _tiny_state_dict()
    evil = tmp_path / "evil.pt"
    code_running_checkpoint(evil, state_dict, marker)
    with pytest.raises(CheckpointError, match=r"evil\.pt: refused to unpickle: it names posix\.system \(it can run"):
        clipag.load(str(evil), device="cpu")
    with pytest.raises(CheckpointError, match=r"posix\.system \(it can run code\)"):
        import_checkpoint(dataclasses.replace(clipag_like_entry, size=None), evil)
    assert not marker.exists()
    assert not (isolated_caches / "clipag" / "ViT-B-32" / "open_clip_model.safetensors").exists()


def _tiny_state_dict() -> dict[str, torch.Tensor]:
    import open_clip

    torch.manual_seed(1)
    return open_clip.CLIP(**TINY).state_dict()


def test_refusal_names_a_global_that_is_data_but_not_allowed(tmp_path):
    """A numpy RandomState is data, not code, yet outside the allow-list: named, and said not to run code."""
    torch.save({"state_dict": _tiny_state_dict(), "rng": np.random.RandomState(0)}, tmp_path / "rng.pt")
    with pytest.raises(CheckpointError) as error:
        read_checkpoint(tmp_path / "rng.pt")
    message = str(error.value)
    assert "numpy.random._pickle.__randomstate_ctor (not known to run code" in message
    assert "rng.pt" in message and "safetensors" in message


def test_numpy_dtype_and_array_spellings_of_both_numpy_majors_load(tmp_path):
    """numpy scalars of every common dtype, dtypes and arrays, in numpy 1.x's and 2.x's spellings."""
    extras = {"f64": np.float64(0.5), "f32": np.float32(0.25), "i64": np.int64(3), "b": np.bool_(True),
              "dtype": np.dtype("float16"), "array": np.arange(3.0)}
    for writer in (None, numpy1_pickle_module()):
        path = tmp_path / f"numbers-{writer is None}.pt"
        kwargs = {} if writer is None else {"pickle_module": writer}
        torch.save({"state_dict": _tiny_state_dict(), "optimizer": extras}, path, **kwargs)
        assert read_checkpoint(path).format == "open_clip"


def test_open_clip_train_checkpoint_loads(tmp_path_factory, isolated_caches):
    """open_clip >= 2.30's own training entry point wrote this (math.cos: Python-float learning rates)."""
    checkpoint = open_clip_train_checkpoint(tmp_path_factory.mktemp("octrain"), TINY)
    full = torch.load(checkpoint, weights_only=True)  # no numpy left in new checkpoints
    assert {"epoch", "name", "state_dict", "optimizer", "scaler"} <= set(full)
    model, _ = clipag.load(str(checkpoint), device="cpu")
    assert_same_features(model, official_features(TINY, checkpoint))


def test_hub_repo_with_only_a_pickled_bin(isolated_caches):
    """A repo as chs20's and timm's CLIP repos are: open_clip_config.json + open_clip_pytorch_model.bin, written
    by open_clip's push_to_hf_hub.save_for_hf, in the offline Hub cache."""
    from huggingface_hub import constants

    snapshot = make_hub_repo(constants.HF_HUB_CACHE, "replica/robust-clip", None, None)
    preprocess = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bicubic",
                  "resize_mode": "shortest"}
    open_clip_hub_bin_repo(snapshot, TINY, preprocess)
    assert sorted(p.name for p in snapshot.iterdir()) == ["open_clip_config.json", "open_clip_pytorch_model.bin"]
    model, preprocess_fn = clipag.load("hf-hub:replica/robust-clip", device="cpu")
    assert_same_features(model, official_features(TINY, snapshot / "open_clip_pytorch_model.bin"))
    assert model.visual.preprocess_cfg["mean"] == (0.5, 0.5, 0.5)


def test_official_open_clip_call_runs_under_clipag_run(checkpoint_2023, tmp_path):
    """`open_clip.create_model_and_transforms(NAME, pretrained=FILE)`, CLIPAG's official loading code, fails on
    torch >= 2.6 as plain Python, and runs unmodified under `clipag run`, reading the file safely."""
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "replica-tiny.json").write_text(json.dumps(TINY))
    script = SCRIPTS / "open_clip_official_load.py"
    args = ["replica-tiny", str(checkpoint_2023), str(tmp_path / "out.pt"), str(tmp_path / "configs")]
    env = {"PATH": "/usr/bin:/bin", "CLIPAG_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    plain = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env)
    assert plain.returncode != 0 and "Weights only load failed" in plain.stderr
    run = subprocess.run([sys.executable, "-m", "clipag.cli", "run", str(script), *args], capture_output=True,
                         text=True, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "through clipag's safe reader" in run.stderr
    got = torch.load(tmp_path / "out.pt")
    import open_clip

    model = open_clip.CLIP(**TINY).eval()
    open_clip.load_checkpoint(model, str(checkpoint_2023), weights_only=False)
    torch.manual_seed(0)
    image = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected_image = model.encode_image(image)
        expected_text = model.encode_text(open_clip.tokenize(["a photo of a cat", "a diagram"]))
    torch.testing.assert_close(got["image"], expected_image, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got["text"], expected_text, atol=1e-5, rtol=1e-5)


def test_legacy_torch_format_is_read(tmp_path):
    """torch.save before PyTorch 1.6 (and torchvision's 2017 VGG19 file) wrote a non-zip pickle."""
    state_dict = _tiny_state_dict()
    torch.save({"state_dict": state_dict, "epoch": 3}, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(tmp_path / "old.pt")
    read = read_checkpoint(tmp_path / "old.pt").state_dict
    assert read.keys() == state_dict.keys() and all(torch.equal(read[k], v) for k, v in state_dict.items())
