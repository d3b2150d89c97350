"""The VQGAN+CLIP examples run offline with tiny models and write what they say."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from clipag.adapters.vqgan_clip.vqgan import build_from_config
from PIL import Image
from vqgan_fixtures import fill_like_fixture, tiny_config, write_lightning_ckpt, write_yaml

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_compare_writes_a_labelled_grid(tmp_path, openai_files):
    config = tiny_config()
    model = build_from_config(config["model"])
    fill_like_fixture(model)
    conf = write_yaml(tmp_path / "v.yaml", config)
    ckpt = write_lightning_ckpt(tmp_path / "v.ckpt", model.state_dict())
    clip = str(openai_files["state_dict"])
    out = tmp_path / "grid.png"
    rc = load_example("vqgan_clip_compare").main([
        "--model", clip, "--label", "A", "--model", str(openai_files["safetensors"]), "--label", "B",
        "--prompt", "a red apple", "--prompt", "a blue sky:0.5", "--seeds", "0", "1", "--vqgan-config", str(conf),
        "--vqgan-checkpoint", str(ckpt), "--steps", "1", "-s", "16", "16", "--cutn", "2", "--device", "cpu",
        "-o", str(out)])
    assert rc == 0
    grid = Image.open(out)
    assert grid.height == 2 * 16 + 20 and grid.width == 120 + 4 * 16 + 12  # 2 rows; 2 groups of 2 seeds
    losses = json.loads(out.with_suffix(".json").read_text())["final_loss"]
    assert set(losses) == {clip, str(openai_files["safetensors"])}
    # the same weights in two formats: the same images, the same losses
    assert losses[clip] == losses[str(openai_files["safetensors"])]


def test_pag_demo_example_trains_a_vqgan_and_judges(tmp_path, openai_files):
    rc = load_example("vqgan_clip_pag_demo").main([
        "--model", str(openai_files["state_dict"]), "--label", "tiny", "--out", str(tmp_path), "--vqgan-steps", "2",
        "--steps", "1", "--seeds", "0", "--classes", "2", "--judge-steps", "2", "--threads", "1"])
    assert rc == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["images_per_model"] == 2 and 0 <= results["models"]["tiny"]["judge_accuracy"] <= 1
    assert (tmp_path / "vqgan.yaml").is_file() and Image.open(tmp_path / "grid.png").width > 0
