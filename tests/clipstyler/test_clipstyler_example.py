"""The CLIPStyler examples run offline with tiny models and write what they promise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from clipstyler_fixtures import content_image, write_random_vgg19
from generate_fixtures import save_hub_folder
from PIL import Image

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("example")
    write_random_vgg19(root / "torch_home")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TORCH_HOME": str(root / "torch_home")}
    return {"env": env, "a": save_hub_folder(root / "a", size=32), "b": save_hub_folder(root / "b", size=32, seed=1),
            "photo": content_image(root / "photo.png")}


def test_progress_example_writes_images_gifs_and_a_grid(setup, tmp_path):
    proc = subprocess.run([sys.executable, str(EXAMPLES / "clipstyler_progress.py"), str(setup["photo"]), "fire",
                           "a pencil sketch", "--model", str(setup["a"]), "--steps", "2", "--every", "1",
                           "--size", "64", "64", "--crops", "2", "--crop-size", "32", "--device", "cpu",
                           "-o", str(tmp_path)], capture_output=True, text=True, env=setup["env"], timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-pencil-sketch.gif", "a-pencil-sketch.png", "fire.gif",
                                                          "fire.png", "grid.png"]
    with Image.open(tmp_path / "fire.gif") as gif:
        assert gif.n_frames == 3 and gif.size == (64, 64)  # the start, then after steps 1 and 2


def test_pag_demo_example_judges_every_model(setup, tmp_path):
    out = tmp_path / "pag.png"
    proc = subprocess.run([sys.executable, str(EXAMPLES / "clipstyler_pag_demo.py"), "--model", f"x={setup['a']}",
                           "--model", f"y={setup['b']}", "--steps", "1", "--crops", "2", "--backgrounds", "black",
                           "--judge-steps", "5", "-o", str(out)], capture_output=True, text=True, env=setup["env"],
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.with_suffix(".json").read_text())
    table = report["results"]
    assert set(report["final_losses"]) == {"x", "y"} and "directional" in report["final_losses"]["x"]
    assert list(table) == ["content (unstyled)", "x", "y"]
    assert all(0 <= v <= 100 for row in table.values() for v in row.values())
    with Image.open(out) as grid:
        assert grid.size == (72 + 3 * 128 + 2 * 12, 20 + 12 * 128)  # content | x | y, one row per class
