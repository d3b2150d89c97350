"""What other public CLIP scripts need from `clipag run`: the model-name gate, taming.modules, pydiffvg.prettify."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET

import pytest
import torch
from generate_fixtures import one_thread

from clipag import run, standins

OPENAI = ["RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B/32", "ViT-B/16", "ViT-L/14", "ViT-L/14@336px"]


def _run(args, tmp_path):
    env = {**os.environ, "CLIPAG_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1",
           "HF_HUB_CACHE": str(tmp_path / "hf"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "clipag.cli", "run", *args], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)


GATE = textwrap.dedent("""
    import json, sys
    import clip
    name = sys.argv[1]
    if name not in clip.available_models():  # what many scripts check before clip.load
        sys.exit(f"unknown model {name}")
    model, _ = clip.load(name, device="cpu")
    json.dump({"models": clip.available_models(), "resolution": model.visual.input_resolution},
              open("out.json", "w"))
""")


@pytest.mark.parametrize("name", ["RN50", "ViT-L/14@336px", "ViT-B/16"])
def test_under_model_every_openai_name_passes_the_scripts_gate(name, tmp_path, openai_files):
    (tmp_path / "gate.py").write_text(GATE)
    result = _run(["--model", str(openai_files["state_dict"]), "gate.py", name], tmp_path)
    assert result.returncode == 0, result.stderr
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["models"][:len(OPENAI)] == OPENAI and "FARE2-ViT-L/14" in out["models"]
    assert out["resolution"] == 224 and f"clip.load({name!r}) ->" in result.stderr


def test_without_model_the_registry_is_listed_unchanged():
    from clipag.registry import available_models

    assert run.clip_module().available_models() == available_models()
    assert "RN50" not in run.clip_module().available_models()  # not loadable by that name without --model
    assert run.clip_module("x").available_models()[:len(OPENAI)] == OPENAI


@pytest.fixture
def taming_standin():
    standins.install({"taming": "on"})
    yield
    standins.uninstall()
    for name in [n for n in sys.modules if n == "taming" or n.startswith("taming.")]:
        del sys.modules[name]


def test_taming_modules_resolve_to_the_vqgan_blocks_with_tamings_names(taming_standin):
    from clipag.adapters.vqgan_clip import modules
    from taming.models.vqgan import VQModel
    from taming.modules.diffusionmodules.model import Decoder, Encoder, Normalize, nonlinearity
    from taming.modules.vqvae.quantize import GumbelQuantize, VectorQuantizer2

    assert Encoder is modules.Encoder and Decoder is modules.Decoder
    assert VectorQuantizer2 is modules.VectorQuantizer2 and GumbelQuantize is modules.GumbelQuantize
    params = dict(ch=32, out_ch=3, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), in_channels=3,
                  resolution=32, z_channels=8, double_z=False)
    with one_thread():
        vq = VQModel(ddconfig=params, lossconfig={"target": "taming.modules.losses.vqperceptual.DummyLoss"},
                     n_embed=16, embed_dim=8)
        encoder = Encoder(**params)
        encoder.load_state_dict(vq.encoder.state_dict())  # the script's own Encoder takes the VQGAN's weights
        x = torch.rand(1, 3, 32, 32)
        torch.testing.assert_close(encoder(x), vq.encoder(x))
    norm = Normalize(64)
    assert (norm.num_groups, norm.eps, norm.affine) == (32, 1e-6, True)
    x = torch.linspace(-3, 3, 7)
    torch.testing.assert_close(nonlinearity(x), x * torch.sigmoid(x))


def test_uncovered_taming_modules_say_what_the_standin_covers(taming_standin):
    with pytest.raises(ModuleNotFoundError) as info:
        import taming.modules.losses.lpips  # noqa: F401
    message = str(info.value)
    assert "No module named 'taming.modules.losses'" in message
    assert "taming.models.vqgan (VQModel, GumbelVQ)" in message and "not taming's losses (LPIPS" in message
    assert "--no-standin taming" in message
    with pytest.raises(ImportError, match="VectorQuantizer is not covered by clipag's taming stand-in"):
        from taming.modules.vqvae.quantize import VectorQuantizer  # noqa: F401
    with pytest.raises(ImportError, match="Model is not covered"):
        from taming.modules.diffusionmodules.model import Model  # noqa: F401


def test_uncovered_taming_module_through_clipag_run(tmp_path):
    (tmp_path / "s.py").write_text("from taming.modules.losses.lpips import LPIPS\n")
    result = _run(["s.py"], tmp_path)
    assert result.returncode == 1
    assert "ModuleNotFoundError: No module named 'taming.modules.losses': clipag's stand-in for " \
           "taming-transformers (CompVis/taming-transformers) covers the VQGAN" in result.stderr


def test_pydiffvg_prettify_indents_an_element_tree(tmp_path):
    from clipag.adapters.clipdraw import pydiffvg

    root = ET.Element("svg", {"version": "1.1", "width": "4"})
    group = ET.SubElement(root, "g")
    ET.SubElement(group, "path", {"d": "M 0 0 L 1 1", "stroke-width": "2"})
    ET.SubElement(root, "defs")
    assert pydiffvg.prettify(root) == ('<?xml version="1.0" ?>\n'
                                       '<svg version="1.1" width="4">\n'
                                       '  <g>\n'
                                       '    <path d="M 0 0 L 1 1" stroke-width="2"/>\n'
                                       '  </g>\n'
                                       '  <defs/>\n'
                                       '</svg>\n')
    assert ET.fromstring(pydiffvg.prettify(root).split("\n", 1)[1]).find("g/path").get("d") == "M 0 0 L 1 1"


def test_pydiffvg_prettify_through_clipag_run(tmp_path):
    """The way scripts use it: build an SVG tree themselves and write it with pydiffvg.prettify."""
    (tmp_path / "s.py").write_text(textwrap.dedent("""
        import xml.etree.ElementTree as etree
        import pydiffvg
        root = etree.Element("svg")
        etree.SubElement(root, "circle", r="3")
        open("out.svg", "w").write(pydiffvg.prettify(root))
    """))
    result = _run(["--standin", "pydiffvg", "s.py"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out.svg").read_text() == '<?xml version="1.0" ?>\n<svg>\n  <circle r="3"/>\n</svg>\n'
