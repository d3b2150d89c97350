"""The wheel holds the whole package: discovered subpackages (adapters/* as clipag.adapters.*) and data files."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_a_new_adapter_subpackage_and_its_data_ship_in_the_wheel(tmp_path):
    tree = tmp_path / "src"
    for name in ("clipag", "adapters"):
        shutil.copytree(ROOT / name, tree / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.py", "pyproject.toml", "MANIFEST.in", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    new = tree / "adapters" / "newframework"  # what an adapter helper adds, listed nowhere
    (new / "configs").mkdir(parents=True)
    (new / "__init__.py").write_text('"""A new adapter."""\n')
    (new / "model.py").write_text("VALUE = 1\n")
    (new / "configs" / "default.yaml").write_text("steps: 10\n")
    (new / "templates.json").write_text("[]\n")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path / "dist"), str(tree)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (wheel,) = (tmp_path / "dist").glob("clipag-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in ("clipag/adapters/newframework/__init__.py", "clipag/adapters/newframework/model.py",
                     "clipag/adapters/newframework/configs/default.yaml",
                     "clipag/adapters/newframework/templates.json", "clipag/demo/__main__.py",
                     "clipag/finetune/configs/clipag-tiny-32px.json", "clipag/py.typed"):
        assert expected in names, expected
    assert {n.split("/")[0] for n in names if ".dist-info/" not in n} == {"clipag"}  # no top-level `adapters`
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
