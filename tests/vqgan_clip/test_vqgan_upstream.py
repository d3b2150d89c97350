"""VQGAN-CLIP-style scripts under ``clipag run --device cpu``: the taming stand-in, and what wins when."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from clipag.adapters.vqgan_clip.vqgan import build_from_config
from vqgan_fixtures import fill_like_fixture, tiny_config, write_lightning_ckpt, write_yaml

SCRIPT = Path(__file__).parents[1] / "data" / "upstream_style_vqgan_clip.py"


def make_vqgan(folder: Path, target: str = "taming.models.vqgan.VQModel") -> tuple[Path, Path]:
    config = tiny_config(target)
    model = build_from_config(config["model"])
    fill_like_fixture(model)
    return write_yaml(folder / "vqgan.yaml", config), write_lightning_ckpt(folder / "vqgan.ckpt", model.state_dict())


def clipag_run(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "clipag.cli", "run", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("target", ["taming.models.vqgan.VQModel", "taming.models.vqgan.GumbelVQ"])
def test_upstream_style_script_runs_with_the_stand_in(tmp_path, openai_files, target):
    conf, ckpt = make_vqgan(tmp_path, target)
    proc = clipag_run(tmp_path, "--device", "cpu", "--model", str(openai_files["state_dict"]), str(SCRIPT),
                      "-conf", str(conf), "-ckpt", str(ckpt), "-o", "out.png")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["device"] == "cpu" and result["cut_size"] == 224 and result["factor"] == 2
    assert result["taming"] == "clipag.adapters.vqgan_clip.taming.models.vqgan" and result["shape"] == [1, 3, 32, 32]
    assert all(step["moved"] for step in result["steps"].values())  # Adam, DiffGrad and AdamP all stepped
    assert "stand-in taming: auto" in proc.stderr
    assert "import taming -> clipag.adapters.vqgan_clip.taming" in proc.stderr
    assert "not imported: pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint" in proc.stderr
    assert (tmp_path / "out.png").stat().st_size > 0


def _broken_taming(root: Path) -> None:
    """A taming package that fails as the real clone does on torch >= 2."""
    package = root / "taming" / "models"
    package.mkdir(parents=True)
    (root / "taming" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "vqgan.py").write_text("from torch._six import string_classes\n")
    (package / "cond_transformer.py").write_text("")


def test_a_clone_the_script_appends_does_not_displace_the_stand_in(tmp_path, openai_files):
    """generate.py appends taming-transformers/ to sys.path; that clone cannot import on torch >= 2."""
    _broken_taming(tmp_path / "taming-transformers")
    conf, ckpt = make_vqgan(tmp_path)
    args = ["--model", str(openai_files["state_dict"]), str(SCRIPT), "-conf", str(conf), "-ckpt", str(ckpt),
            "-o", "out.png"]
    proc = clipag_run(tmp_path, "--device", "cpu", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "also over a copy the script puts on sys.path" in proc.stderr
    forced = clipag_run(tmp_path, "--device", "cpu", "--no-standin", "taming", *args)
    assert forced.returncode != 0 and "torch._six" in forced.stderr


def test_a_broken_installed_taming_says_how_to_use_the_stand_in(tmp_path, openai_files):
    site = tmp_path / "site"
    _broken_taming(site)
    conf, ckpt = make_vqgan(tmp_path)
    args = ["--model", str(openai_files["state_dict"]), str(SCRIPT), "-conf", str(conf), "-ckpt", str(ckpt),
            "-o", "out.png"]
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    proc = clipag_run(tmp_path, "--device", "cpu", *args, env=env)
    assert proc.returncode != 0
    assert "installed: the real one is used" in proc.stderr
    assert "run with --standin taming to use clipag's stand-in instead" in proc.stderr
    forced = clipag_run(tmp_path, "--device", "cpu", "--standin", "taming", *args, env=env)
    assert forced.returncode == 0, forced.stderr[-3000:]
