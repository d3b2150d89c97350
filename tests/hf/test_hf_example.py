"""examples/hf_export_and_use.py runs, and prints what transformers and clipag compute on the same image."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest
import torch
from hf_fixtures import save_clipag_folder, tiny_config

import clipag
from clipag.hf.measure import synthetic_photo

transformers = pytest.importorskip("transformers")
EXAMPLE = Path(__file__).resolve().parent.parent.parent / "examples" / "hf_export_and_use.py"


def test_example_exports_then_agrees_with_clipag(tmp_path, capsys, monkeypatch):
    tiny = save_clipag_folder(tmp_path / "tiny", tiny_config(True), seed=21)
    photo = tmp_path / "photo.jpg"
    synthetic_photo(400, 300, seed=2).save(photo)
    labels = ["cat", "dog", "landscape"]
    argv = [str(EXAMPLE), str(photo), "--model", str(tiny), "--out", str(tmp_path / "hf"), "--labels", *labels]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    lines = capsys.readouterr().out.splitlines()
    assert (tmp_path / "hf" / "config.json").is_file() and (tmp_path / "hf" / "README.md").is_file()
    assert lines[0] == "label\ttransformers\tclipag"
    rows = [line.split("\t") for line in lines[1:4]]
    assert [r[0] for r in rows] == labels

    model, preprocess = clipag.load(str(tiny), device="cpu")
    prompts = [f"a photo of a {label}" for label in labels]
    from PIL import Image

    with Image.open(photo) as image, torch.no_grad():
        expected = model(preprocess(image.convert("RGB")).unsqueeze(0), clipag.tokenize(prompts))[0].softmax(-1)[0]
    for row, value in zip(rows, expected.tolist(), strict=True):
        assert float(row[2]) == pytest.approx(value, abs=6e-5)  # printed to 4 places
        assert float(row[1]) == pytest.approx(value, abs=2e-3)  # transformers' processor resamples slightly differently
    assert lines[4].startswith("max |difference|: ") and float(lines[4].split(": ")[1]) < 2e-3
    assert lines[5].startswith("gradient norm towards 'a photo of a cat': ") and float(lines[5].split(": ")[1]) > 0

    monkeypatch.setattr(sys, "argv", argv)  # a second run reuses the export
    stamp = (tmp_path / "hf" / "model.safetensors").stat().st_mtime_ns
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    assert (tmp_path / "hf" / "model.safetensors").stat().st_mtime_ns == stamp
