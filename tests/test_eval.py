"""``python -m clipag.eval``: zero-shot accuracy clean and under PGD on an image folder, JSONL + TensorBoard."""

import json
import subprocess
import sys

import pytest
import torch
from finetune_fixtures import TEST_CONFIG, make_image_folder

from clipag.eval import PixelCLIP, _eps_name, evaluate, load_templates, read_image_folder, zero_shot_weights
from clipag.finetune.export import export_model
from clipag.model import build_model


@pytest.fixture
def tiny_export(tmp_path):
    torch.manual_seed(0)
    return export_model(build_model(TEST_CONFIG), TEST_CONFIG, {"size": 32}, tmp_path / "model")


def test_eval_cli_writes_jsonl_and_tensorboard(tmp_path, tiny_export):
    root = make_image_folder(tmp_path / "val", per_class=3, classes=3)
    (root / "classnames.txt").write_text("red apple\nsail boat\nsports car\n")
    (root / "boat" / "corrupt.png").write_bytes(b"not a png")
    out = tmp_path / "metrics.jsonl"
    proc = subprocess.run([sys.executable, "-m", "clipag.eval", "--model", str(tiny_export), "--data", str(root),
                           "--norm", "l2", "--epsilon", "0.1", "0.5", "--attack-steps", "3", "--workers", "0",
                           "--output", str(out), "--tensorboard", str(tmp_path / "tb"), "--no-progress"],
                          capture_output=True, text=True, check=True)
    assert "clean_acc" in proc.stdout
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["samples"] == 9 and record["skipped"] == 1
    assert 0 <= record["robust_acc/l2_0.5"] <= record["robust_acc/l2_0.1"] <= record["clean_acc"] <= 1
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_attack_breaks_a_classifier_that_is_right_on_clean_images(tiny_export, tmp_path):
    """Make the zero-shot weights the model's own clean image embeddings: 100% clean, then PGD flips them."""
    from clipag.eval import load_pixel_model

    model = load_pixel_model(str(tiny_export), "cpu")
    images = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        weights = torch.nn.functional.normalize(model.encode_image(images), dim=-1)
    batches = [(images, torch.arange(4), 0)]
    result = evaluate(model, batches, weights, "linf", [0.0001, 16 / 255], steps=10, progress=False)
    assert result["clean_acc"] == 1.0
    assert result["attack_success_rate/linf_16/255"] > result["attack_success_rate/linf_0.0001"]
    assert result["robust_acc/linf_16/255"] < 1.0


def test_helpers(tmp_path):
    root = make_image_folder(tmp_path / "f", per_class=1, classes=2)
    samples, names = read_image_folder(root)
    assert names == ["apple", "boat"] and [label for _, label in samples] == [0, 1]
    assert len(load_templates("simple")) == 7 and len(load_templates("openai")) == 80
    assert load_templates("a {} here") == ["a {} here"]
    assert _eps_name(4 / 255) == "4/255" and _eps_name(0.5) == "0.5"
    torch.manual_seed(0)
    model = PixelCLIP(build_model(TEST_CONFIG))
    weights = zero_shot_weights(model, names, ["a {}.", "the {}."], "cpu")
    assert weights.shape == (2, 32) and torch.allclose(weights.norm(dim=-1), torch.ones(2))
