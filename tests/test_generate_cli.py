"""``clipag generate`` end to end: files of the right size, numbering and grid, errors, and Ctrl-C."""

from __future__ import annotations

import subprocess
import sys

import pytest
from generate_fixtures import cli_env, interrupt_once_running, one_thread, save_hub_folder
from PIL import Image

from clipag.cli import main

QUICK = ["--steps", "3", "--views", "2", "--patches", "2", "--no-prior", "-q"]


@pytest.fixture(autouse=True)
def _single_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_hub_folder(tmp_path_factory.mktemp("model") / "tiny64", size=64)


def test_cli_writes_png_and_gif_of_the_model_size(model_dir, tmp_path):
    out, gif = tmp_path / "apple.png", tmp_path / "apple.gif"
    proc = subprocess.run([sys.executable, "-m", "clipag.cli", "generate", "a red apple", "--model", str(model_dir),
                           "--steps", "4", "--views", "2", "--patches", "2", "--seed", "1", "-o", str(out),
                           "--frames", str(gif), "--set", "frame_every=2", "--device", "cpu"],
                          capture_output=True, text=True, env=cli_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert str(out) in proc.stdout and "loss=" in proc.stderr  # tqdm bar shows the loss
    with Image.open(out) as png:
        assert png.format == "PNG" and png.size == (64, 64)
    with Image.open(gif) as anim:
        assert anim.format == "GIF" and anim.size == (64, 64) and anim.n_frames == 4  # steps 0, 2, 3, then the best


def test_cli_several_prompts_and_seeds_are_numbered_with_a_grid(model_dir, tmp_path, capsys):
    out = tmp_path / "run.png"
    assert main(["generate", "a cat", "a dog", "-n", "2", "--model", str(model_dir), "-o", str(out), *QUICK]) == 0
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["run-000.png", "run-001.png", "run-002.png", "run-003.png", "run-grid.png"]
    with Image.open(tmp_path / "run-grid.png") as grid:
        assert grid.size == (2 * 66 + 2, 2 * 66 + 2)  # 2 seeds across, 2 prompts down, 2 px padding
    with Image.open(tmp_path / "run-000.png") as a, Image.open(tmp_path / "run-001.png") as b:
        assert a.tobytes() != b.tobytes()  # seeds 0 and 1 differ


def test_cli_default_name_size_and_set(model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "A Red Apple!", "--model", str(model_dir), "--size", "48",
                 "--set", "threshold=0", "--set", "resize=0.9,1.1", *QUICK]) == 0
    with Image.open(tmp_path / "a-red-apple.png") as image:
        assert image.size == (48, 48)


def test_cli_errors_are_messages_not_tracebacks(model_dir, tmp_path, capsys):
    assert main(["generate", "  ", "--model", str(model_dir), *QUICK]) == 2
    assert "prompt is empty" in capsys.readouterr().err
    assert main(["generate", "x", "--model", str(model_dir), "--size", "1000", *QUICK]) == 2
    assert "size must be an integer" in capsys.readouterr().err
    assert main(["generate", "x", "--model", str(model_dir), "--set", "nope=1", *QUICK]) == 2
    assert "KEY one of" in capsys.readouterr().err
    assert main(["generate", "x", "--model", str(tmp_path / "missing"), *QUICK]) == 1
    assert not list(tmp_path.glob("*.png"))


def test_ctrl_c_writes_the_best_image_so_far_and_exits_cleanly(model_dir, tmp_path):
    out = tmp_path / "long.png"
    code, stdout, err = interrupt_once_running(
        ["generate", "a long wait", "--model", str(model_dir), "--steps", "100000", "--views", "2", "--patches", "2",
         "--no-prior", "-o", str(out)], cli_env())
    assert code == 130
    assert "Traceback" not in err and "interrupted at step" in err
    assert str(out) in stdout
    with Image.open(out) as image:
        assert image.size == (64, 64)
