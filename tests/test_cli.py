"""The `clipag` command, run as users run it (subprocesses)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest


def _run(args, tmp_path, **env):
    environment = {**os.environ, "CLIPAG_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1",
                   "HF_HUB_CACHE": str(tmp_path / "hf"), **env}
    return subprocess.run([sys.executable, "-m", "clipag.cli", *args], capture_output=True, text=True,
                          env=environment, cwd=tmp_path, timeout=300)


def test_models_lists_registry_and_cache(tmp_path):
    result = _run(["models", "-v"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "ViT-B/32" in result.stdout and "zenodo.org/records/10446026" in result.stdout
    assert "chs20/fare2-clip" in result.stdout and "QuickGELU" in result.stdout
    assert "hf-hub:LEAF-CLIP/CLIP-ViT-L-FARE2" in result.stdout and "licence: MIT (Hub model card)" in result.stdout
    assert "threat model: image tower: FARE, L-inf eps=2/255" in result.stdout
    assert "format: transformers" in result.stdout
    assert str(tmp_path / "cache") in result.stdout
    assert "RN50" in result.stdout  # OpenAI names with no counterpart are listed as such
    assert "vqgan_imagenet_f16_16384" in result.stdout and "vqgan_gumbel_f8_8192" in result.stdout  # VQGANs too


def test_console_script_is_installed():
    result = subprocess.run(["clipag", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "download" in result.stdout


def test_help_lists_every_command_without_importing_torch():
    """`clipag --help` builds every sub-command's parser; the adapters must keep theirs torch-free."""
    code = ("import sys, contextlib, io\n"
            "from clipag import cli\n"
            "out = io.StringIO()\n"
            "with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):\n"
            "    cli.main(['--help'])\n"
            "print(out.getvalue())\n"
            "print('TORCH' if 'torch' in sys.modules or 'transformers' in sys.modules else 'NO-TORCH')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for command in ("generate", "draw", "vqgan", "style", "run", "download", "export"):
        assert command in result.stdout
    assert result.stdout.strip().endswith("NO-TORCH")


def test_download_offline_is_actionable(tmp_path):
    result = _run(["download", "ViT-B/32"], tmp_path, CLIPAG_OFFLINE="1")
    assert result.returncode == 1
    assert "offline mode is on" in result.stderr and "clipag import ViT-B/32 CLIPAG_ViTB32.pt" in result.stderr


def test_import_rejects_wrong_file(tmp_path):
    (tmp_path / "CLIPAG_ViTB32.pt").write_bytes(b"not the file")
    result = _run(["import", "ViT-B/32", "CLIPAG_ViTB32.pt"], tmp_path)
    assert result.returncode == 1
    assert "CLIPAG_ViTB32.pt: 12 bytes, but ViT-B/32" in result.stderr


def test_unknown_model_lists_available(tmp_path):
    result = _run(["download", "nope"], tmp_path)
    assert result.returncode == 1 and "Model nope not found; available models = ['ViT-B/32'" in result.stderr


@pytest.mark.parametrize("args", [["download", "vqgan_imagenet_f16_1638"], ["import", "vqgan_imagenet_f16_1638", "x"]])
def test_a_typo_lists_the_vqgans_too_and_the_closest_names(tmp_path, args):
    """download and import take VQGAN names as well as CLIP names: a typo lists both and suggests the closest."""
    result = _run(args, tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "available models = ['ViT-B/32'" in result.stderr and "VQGANs (for clipag vqgan) = [" in result.stderr
    assert "did you mean vqgan_imagenet_f16_16384" in result.stderr


SCRIPT = textwrap.dedent("""
    import json, sys
    import clip
    from CLIP import clip as vqgan_style_clip
    import clip.clip
    assert vqgan_style_clip is clip and clip.clip is clip
    model, preprocess = clip.load("ViT-B/32", device="cpu", jit=False)
    tokens = clip.tokenize(["a red cube"])
    with open("result.json", "w") as f:
        json.dump({"name": __name__, "argv": sys.argv, "file": __file__,
                   "resolution": model.visual.input_resolution, "dtype": str(tokens.dtype),
                   "features": list(model.encode_text(tokens).shape)}, f)
""")


@pytest.mark.parametrize("precision", [None, "fp16"])
def test_run_resolves_clip_to_clipag(tmp_path, openai_files, precision):
    (tmp_path / "script.py").write_text(SCRIPT)
    extra = ["--precision", precision] if precision else []
    result = _run(["run", "--model", str(openai_files["state_dict"]), *extra, "script.py", "--steps", "3", "x"],
                  tmp_path)
    assert result.returncode == 0, result.stderr
    assert "clip.load('ViT-B/32') ->" in result.stderr
    out = json.loads((tmp_path / "result.json").read_text())
    assert out["name"] == "__main__"
    assert out["argv"] == ["script.py", "--steps", "3", "x"]
    assert out["file"].endswith("script.py")
    assert out["resolution"] == 224 and out["dtype"] == "torch.int32" and out["features"] == [1, 32]


def test_run_propagates_script_exit_code(tmp_path):
    (tmp_path / "fail.py").write_text("import sys, clip\nsys.exit(3)\n")
    assert _run(["run", "fail.py"], tmp_path).returncode == 3
