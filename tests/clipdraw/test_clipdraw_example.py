"""examples/clipdraw_compare.py runs offline with tiny models and writes its grid and SVGs."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from generate_fixtures import save_hub_folder
from PIL import Image

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "clipdraw_compare.py"


def test_compare_example_writes_a_grid_and_svgs(tmp_path):
    a, b = save_hub_folder(tmp_path / "a", size=32), save_hub_folder(tmp_path / "b", size=32, seed=1)
    out = tmp_path / "grid.png"
    result = subprocess.run([sys.executable, str(EXAMPLE), "a red ring", "--model", str(a), "--compare", str(b),
                             "--steps", "2", "--strokes", "8", "--seeds", "1", "--size", "64", "--device", "cpu",
                             "--out", str(out)], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    grid = Image.open(out)
    assert grid.width >= 2 * 64
    svgs = sorted(tmp_path.glob("grid-*.svg"))
    assert [p.name for p in svgs] == ["grid-a-0.svg", "grid-b-0.svg"]
    assert len(ET.parse(svgs[0]).getroot().findall("{http://www.w3.org/2000/svg}path")) == 8
