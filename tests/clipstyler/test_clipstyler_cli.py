"""``clipag style`` end to end (PNG, --compare grid, errors, Ctrl-C) and an upstream-style script through
``clipag run --device cpu``."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import generate_fixtures
from clipstyler_fixtures import save_tiny_224
from generate_fixtures import interrupt_once_running
from PIL import Image

from clipag.cli import main

QUICK = ["--steps", "2", "--size", "64", "64", "--crops", "4", "--crop-size", "32", "-q"]


# -- the CLI -----------------------------------------------------------------------------------------------
def cli_env(torch_home) -> dict[str, str]:
    return generate_fixtures.cli_env(TORCH_HOME=str(torch_home))


def test_cli_two_steps_write_a_png(models, photo, torch_home, tmp_path):
    out = tmp_path / "styled.png"
    proc = subprocess.run([sys.executable, "-m", "clipag.cli", "style", str(photo), "an ink wash painting",
                           "--model", str(models["a"]), "--steps", "2", "--size", "64", "48", "--crops", "4",
                           "--crop-size", "32", "--seed", "1", "--device", "cpu", "-o", str(out)],
                          capture_output=True, text=True, env=cli_env(torch_home), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert str(out) in proc.stdout and "loss=" in proc.stderr  # the progress bar shows the loss
    with Image.open(out) as png:
        assert png.format == "PNG" and png.size == (64, 48)


def test_cli_prompt_file_crosses_content_images_and_texts(models, photo, vgg_cache, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.open(photo).save(folder / "one.png")
    Image.open(photo).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / "two.png")
    texts = tmp_path / "styles.jsonl"
    texts.write_text('{"text": "an oil painting"}\n{"text": "fire"}\n'
                     '{"text": "ice", "content": "photos/two.png", "crops": 3, "seed": 4}\n')
    out = tmp_path / "out"
    assert main(["style", str(folder), "--prompts", str(texts), "--out", str(out), "--model", str(models["a"]),
                 "--device", "cpu", "--batch", "2", *QUICK]) == 0
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [(r["prompt"], r["content"].rsplit("/", 1)[-1]) for r in rows] == [
        ("an oil painting", "one.png"), ("an oil painting", "two.png"), ("fire", "one.png"), ("fire", "two.png"),
        ("ice", "two.png")]
    assert [(r["config"]["crops"], r["seed"], r["batch"]) for r in rows] == [(4, 0, 2)] * 4 + [(3, 4, 1)]
    assert len({r["content_sha256"] for r in rows}) == 2 and all(r["file"].endswith(".png") for r in rows)
    assert all(Image.open(out / r["file"]).size == (64, 64) for r in rows)


def test_cli_compare_writes_both_and_a_labelled_grid(models, photo, vgg_cache, tmp_path, capsys):
    out = tmp_path / "cmp.png"
    assert main(["style", str(photo), "fire", "--model", str(models["a"]), "--compare", str(models["b"]),
                 "-o", str(out), *QUICK]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cmp-000-compare.png", "cmp-000.png", "cmp-grid.png"]
    with Image.open(tmp_path / "cmp-grid.png") as grid:
        assert grid.size == (120 + 3 * 64 + 2 * 12, 20 + 64)  # label, content | model a | model b
    with Image.open(tmp_path / "cmp-000.png") as a, Image.open(tmp_path / "cmp-000-compare.png") as b:
        assert a.tobytes() != b.tobytes()


def test_cli_errors_are_messages(models, photo, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("CLIPAG_OFFLINE", "1")
    assert main(["style", str(photo), "fire", "--model", str(models["a"]), "--size", "60", "64", "-q"]) == 2
    assert "multiple of 8" in capsys.readouterr().err
    assert main(["style", str(photo), "fire", "--model", str(models["a"]), *QUICK]) == 1
    assert "vgg19-dcbb9e9d.pth" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.png"))


def test_ctrl_c_writes_the_current_result_and_exits_130(models, photo, torch_home, tmp_path):
    out = tmp_path / "long.png"
    code, stdout, err = interrupt_once_running(
        ["style", str(photo), "a long wait", "--model", str(models["a"]), "--steps", "100000", "--size", "64", "64",
         "--crops", "2", "--crop-size", "32", "-o", str(out)], cli_env(torch_home), start_timeout=300,
        exit_timeout=120)
    assert code == 130
    assert "Traceback" not in err and "interrupted at step" in err
    assert str(out) in stdout
    with Image.open(out) as image:
        assert image.size == (64, 64)


# -- upstream compatibility ---------------------------------------------------------------------------------
# The calls train_CLIPstyler.py makes that touch devices, models and files (DESIGN §6b), in a script of our own.
UPSTREAM_STYLE = """
import argparse, json
import torch, torch.nn.functional as F
from torchvision import models, transforms, utils as vutils
from torchvision.transforms.functional import adjust_contrast
import clip

parser = argparse.ArgumentParser()
parser.add_argument("--content_path")
parser.add_argument("--text")
parser.add_argument("--max_step", type=int)
args = parser.parse_args()
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
VGG = models.vgg19(pretrained=True).features
VGG.to(device)
for parameter in VGG.parameters():
    parameter.requires_grad_(False)
from PIL import Image
content = transforms.ToTensor()(Image.open(args.content_path).resize((64, 64)))[:3].unsqueeze(0).to(device)
net = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), torch.nn.Sigmoid())
net.to(device)
optimizer = torch.optim.Adam(net.parameters(), lr=5e-4)
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=100, gamma=0.5)
device = 'cuda'
clip_model, preprocess = clip.load('ViT-B/32', device, jit=False)
with torch.no_grad():
    tokens = clip.tokenize([t.format(args.text) for t in ("a photo of a {}.", "a drawing of a {}.")]).to(device)
    text_features = clip_model.encode_text(tokens).detach().mean(axis=0, keepdim=True)
    source = clip_model.encode_image(F.interpolate(content, size=224, mode='bicubic'))
augment = transforms.Compose([transforms.RandomPerspective(fill=0, p=1, distortion_scale=0.5),
                              transforms.Resize(224)])
for epoch in range(0, args.max_step + 1):
    scheduler.step()
    target = net(content).to(device)
    crops = torch.cat([augment(transforms.RandomCrop(32)(target)) for _ in range(4)], dim=0)
    features = clip_model.encode_image(crops)
    loss = (1 - torch.cosine_similarity(features - source, text_features, dim=1)).mean()
    loss = loss + F.mse_loss(VGG[:23](target), VGG[:23](content))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
vutils.save_image(adjust_contrast(target.clamp(0, 1), 1.5), './outputs/out.jpg', nrow=1, normalize=True)
json.dump({"clip_dtype": str(clip_model.dtype), "clip_device": str(next(clip_model.parameters()).device),
           "vgg_device": str(next(VGG.parameters()).device), "target": str(target.device),
           "loss": loss.item(), "cuda": torch.cuda.is_available()}, open("out.json", "w"))
"""


def test_upstream_style_script_runs_through_clipag_run_on_cpu(torch_home, photo, tmp_path):
    tiny = save_tiny_224(tmp_path / "tiny224")
    (tmp_path / "train.py").write_text(textwrap.dedent(UPSTREAM_STYLE))
    (tmp_path / "outputs").mkdir()
    proc = subprocess.run([sys.executable, "-m", "clipag.cli", "run", "--device", "cpu", "--model", str(tiny),
                           "train.py", "--content_path", str(photo), "--text", "Fire", "--max_step", "2"],
                          cwd=tmp_path, capture_output=True, text=True, env=cli_env(torch_home), timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["clip_dtype"] == "torch.float32"  # clip.load(name, 'cuda') under --device cpu: the fp32 CPU model
    assert out["clip_device"] == out["vgg_device"] == out["target"] == "cpu" and not out["cuda"]
    assert math.isfinite(out["loss"])
    assert (tmp_path / "outputs" / "out.jpg").stat().st_size > 0
    assert "CUDA requests go to cpu" in proc.stderr
