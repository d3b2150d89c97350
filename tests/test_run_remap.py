"""`clipag run --device` and import stand-ins: the mechanisms every adapter's upstream script runs on."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from clipag import device_remap, standins


@pytest.fixture
def remap_to_meta():
    """'meta' is a device no script asks for, so every tensor that lands there was remapped."""
    device_remap.install("meta")
    yield
    device_remap.uninstall()


def test_cuda_requests_go_to_the_target(remap_to_meta):
    assert torch.device("cuda") == torch.device("meta")
    assert torch.device("cuda", 0) == torch.device("meta")
    assert torch.ones(2, device="cuda").device.type == "meta"
    assert torch.tensor([1.0], device=torch.device("cuda:0")).device.type == "meta"
    assert torch.zeros(1).cuda().device.type == "meta"
    assert torch.zeros(1).to("cuda").device.type == "meta"
    assert torch.zeros(1).to("cuda:0", torch.float16).dtype == torch.float16
    layer = torch.nn.Linear(2, 2).cuda()
    assert layer.weight.device.type == "meta"
    assert torch.nn.Linear(2, 2).to(torch.device("cuda")).weight.device.type == "meta"
    assert torch.zeros(1).to("cpu").device.type == "cpu"  # only CUDA moves
    assert not torch.cuda.is_available() and torch.cuda.device_count() == 0
    torch.cuda.synchronize()  # a no-op, not "no CUDA GPUs"
    assert device_remap.remap_device("cuda:1") == torch.device("meta")
    assert device_remap.remap_device("cpu") == "cpu"


def test_uninstall_restores_torch():
    available = torch.cuda.is_available
    device_remap.install("meta")
    device_remap.uninstall()
    assert torch.cuda.is_available is available
    assert torch.device("cuda").type == "cuda" and device_remap.target() is None


@pytest.fixture
def fake_standin(monkeypatch):
    """A stand-in for an imaginary upstream package `fakeupstream`, backed by clipag's own modules."""
    entry = standins.StandIn("fake", "the fakeupstream package",
                             {"fakeupstream": "clipag.images", "fakepkg": "clipag", "fakepkg.sub": "clipag.hub"})
    monkeypatch.setitem(standins.STANDINS, "fake", entry)
    for name in ("fakeupstream", "fakepkg", "fakepkg.sub"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    yield
    standins.uninstall()
    for name in ("fakeupstream", "fakepkg", "fakepkg.sub"):
        sys.modules.pop(name, None)


def test_standin_is_used_when_real_package_is_missing(fake_standin, capsys):
    import clipag.hub
    import clipag.images

    standins.install()
    import fakepkg.sub
    import fakeupstream

    assert fakeupstream is clipag.images and fakepkg.sub is clipag.hub
    assert clipag.hub.__spec__.name == "clipag.hub"  # the real module's identity is kept
    err = capsys.readouterr().err
    assert "stand-in fake: auto, the fakeupstream package not installed" in err
    assert "import fakeupstream -> clipag.images (stand-in)" in err


def test_real_package_wins_in_auto_and_loses_when_forced(fake_standin, tmp_path, monkeypatch):
    (tmp_path / "fakeupstream.py").write_text("REAL = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    standins.install()
    import fakeupstream

    assert fakeupstream.REAL
    del sys.modules["fakeupstream"]
    standins.install({"fake": "on"})
    import fakeupstream as forced

    assert not hasattr(forced, "REAL")


def test_standin_off_and_unknown_names(fake_standin):
    standins.install({"fake": "off"})
    with pytest.raises(ModuleNotFoundError):
        import fakeupstream  # noqa: F401
    with pytest.raises(RuntimeError, match="available stand-ins"):
        standins.install({"nope": "on"})


HELPER = """
import torch
def make():  # an imported module's hard-coded CUDA, as CLIPDraw's drivers import predict.py
    return torch.zeros(3).cuda(), torch.device("cuda")
"""

SCRIPT = """
import json, torch, clip
import helper
tensor, device = helper.make()
model, _ = clip.load("ViT-B/32", device=device, jit=False)
image = torch.rand(1, 3, 224, 224, device="cuda")
features = model.encode_image(image)
json.dump({"tensor": str(tensor.device), "device": str(device), "dtype": str(model.dtype),
           "features": str(features.device), "available": torch.cuda.is_available()}, open("out.json", "w"))
"""


def test_run_device_cpu_remaps_script_and_its_imports(tmp_path, openai_files):
    (tmp_path / "helper.py").write_text(textwrap.dedent(HELPER))
    (tmp_path / "script.py").write_text(textwrap.dedent(SCRIPT))
    result = subprocess.run([sys.executable, "-m", "clipag.cli", "run", "--device", "cpu", "--model",
                             str(openai_files["state_dict"]), "script.py"], cwd=tmp_path, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    out = json.loads((tmp_path / "out.json").read_text())
    assert out == {"tensor": "cpu", "device": "cpu", "dtype": "torch.float32", "features": "cpu",
                   "available": False}
    assert "CUDA requests go to cpu" in result.stderr
