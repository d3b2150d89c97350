"""A plain ``pip install -e .`` (no extras): every command that needs an extra says which one and how to install
it, with no traceback. The missing packages are simulated by a meta-path finder that refuses to import them, in
a subprocess, so the rest of the suite keeps them."""

from __future__ import annotations

import subprocess
import sys

import pytest
from generate_fixtures import cli_env

BLOCK = """
import importlib.abc, runpy, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Block())
sys.argv = {argv!r}
runpy.run_module({module!r}, run_name="__main__", alter_sys=True)
"""


def run_without(blocked: set[str], module: str, *args: str, cwd=None) -> subprocess.CompletedProcess:
    code = BLOCK.format(blocked=blocked, argv=[module, *args], module=module)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), cwd=cwd,
                          timeout=300)


@pytest.mark.parametrize("blocked, module, args, extra", [
    ({"kornia"}, "clipag.cli", ["draw", "a fox", "--steps", "1"], "clipdraw"),
    ({"kornia"}, "clipag.cli", ["style", "photo.png", "fire", "--steps", "1"], "clipstyler"),
    ({"kornia"}, "clipag.cli", ["vqgan", "a castle", "--steps", "1"], "vqgan-clip"),
    ({"webdataset"}, "clipag.demo", ["--quick"], "train"),
    ({"webdataset"}, "clipag.finetune", ["--train-data", "shards/{0..3}.tar", "--steps", "1"], "train"),
    ({"tensorboard"}, "clipag.finetune", ["--steps", "1", "--tensorboard"], "train"),
    ({"webdataset"}, "clipag.eval", ["--model", "ViT-B/32", "--data", "val/{0..3}.tar"], "train"),
    ({"datasets"}, "clipag.cli", ["prior", "build", "Maysee/tiny-imagenet"], "train"),
])
def test_a_missing_extra_names_itself_and_the_install_command(blocked, module, args, extra, tmp_path):
    result = run_without(blocked, module, *args, cwd=tmp_path)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert f"from clipag's [{extra}] extra" in result.stderr and next(iter(blocked)) in result.stderr
    assert f'pip install -e ".[{extra}]"' in result.stderr and f'pip install ".[{extra}]"' in result.stderr
    assert not list(tmp_path.iterdir())  # stopped at start-up: nothing was written


def test_the_help_of_every_command_needs_no_extra():
    for args in (["draw", "--help"], ["vqgan", "--help"], ["style", "--help"]):
        result = run_without({"kornia", "webdataset", "tensorboard", "datasets"}, "clipag.cli", *args)
        assert result.returncode == 0 and "usage: clipag" in result.stdout, result.stderr
    for module in ("clipag.demo", "clipag.finetune", "clipag.eval"):
        result = run_without({"kornia", "webdataset", "tensorboard", "datasets"}, module, "--help")
        assert result.returncode == 0 and "usage: python -m" in result.stdout, result.stderr


def test_the_python_api_says_the_same():
    code = ("import importlib.abc, sys\n"
            "class Block(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'kornia':\n"
            "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "import torch\n"
            "from clipag.augment import random_perspective\n"
            "from clipag.extras import MissingExtra\n"
            "try:\n"
            "    random_perspective(torch.zeros(1, 3, 8, 8))\n"
            "except MissingExtra as e:\n"
            "    print(e)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), timeout=300)
    assert result.returncode == 0, result.stderr
    assert "needs kornia, from clipag's [clipstyler] extra, and it is not installed" in result.stdout
    assert 'pip install -e ".[clipstyler]"' in result.stdout


def test_a_module_missing_where_no_check_was_made_still_gives_the_extra(monkeypatch, capsys):
    """The safety net in `clipag`'s main: any ModuleNotFoundError of an extra's module becomes the message."""
    from clipag import cli

    def fails(args):
        raise ModuleNotFoundError("No module named 'webdataset'", name="webdataset")

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["models"].set_defaults(func=fails)
    assert cli.main(["models"]) == 1
    err = capsys.readouterr().err
    assert "webdataset is missing, from clipag's [train] extra" in err and 'pip install -e ".[train]"' in err
