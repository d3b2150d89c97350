"""Outputs are checked before any work, and a result whose target vanished during the run is saved elsewhere."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from generate_fixtures import cli_env, one_thread, save_hub_folder
from PIL import Image

from clipag.cli import main
from clipag.images import OutputError, atomic_write, check_output, check_output_folder, save_png


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_hub_folder(tmp_path_factory.mktemp("tiny") / "model", size=32)


def test_check_output_accepts_what_can_be_written_and_leaves_nothing(tmp_path):
    check_output(tmp_path / "a.png", "-o")
    check_output(tmp_path / "new" / "deeper" / "a.PNG", "-o")  # folders the write will create
    check_output(None, "--frames")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("path, suffixes, message", [
    ("/proc/out.svg", (".svg",), "cannot create files in /proc"),  # the case: it failed after 36 s of work
    ("{file}/out.png", (".png",), "is a file, not a folder"),  # -o cross.png/out.png: [Errno 17] File exists
    ("{file}/sub/out.png", (".png",), "is a file, not a folder"),
    ("{dir}", (".png",), "is a folder; give a file name"),
    ("{dir}/out.jpg", (".png",), "writes PNG (.png); give a file name ending in .png, e.g. out.png"),
    ("{dir}/out", (".gif",), "writes GIF (.gif)"),
])
def test_check_output_refuses_bad_paths_naming_the_option(tmp_path, path, suffixes, message):
    (tmp_path / "cross.png").write_bytes(b"a file")
    path = path.format(file=tmp_path / "cross.png", dir=tmp_path)
    with pytest.raises(ValueError, match="^--opt ") as info:
        check_output(path, "--opt", suffixes)
    assert message in str(info.value)


@pytest.mark.parametrize("command, options", [
    ("generate", ["-o", "/proc/out.png"]),
    ("generate", ["--frames", "{file}/x.gif"]),
    ("draw", ["-o", "/proc/out.svg"]),
    ("draw", ["--png", "{file}/out.png"]),
    ("draw", ["--frames", "frames.png"]),
    ("draw", ["--grid", "grid.svg"]),
    ("vqgan", ["-o", "/proc/out.png"]),
    ("style", ["--frames", "/proc/x.gif"]),
])
def test_every_generator_checks_its_outputs_before_loading_anything(command, options, tmp_path, capsys):
    """A model that does not exist would fail the run at load time: the output's error comes first."""
    (tmp_path / "cross.png").write_bytes(b"a file")
    options = [o.format(file=tmp_path / "cross.png") for o in options]
    inputs = [str(tmp_path / "cross.png"), "fire"] if command == "style" else ["a red apple"]
    assert main([command, *inputs, "--model", str(tmp_path / "no-such-model"), *options]) == 2
    err = capsys.readouterr().err
    option = "-o/--output" if options[-2] == "-o" else options[-2]
    assert err.startswith(f"clipag {command}: error: {option} {options[-1]}: ") and "no-such-model" not in err, err


def test_atomic_write_saves_the_result_elsewhere_when_the_folder_vanished(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out.png").write_bytes(b"an older file, kept")
    with pytest.raises(OutputError) as info:
        atomic_write("/proc/out.png", lambda tmp: tmp.write_bytes(b"result"))
    error = info.value
    assert str(error.path) == "/proc/out.png" and error.rescued == tmp_path / "out-1.png"
    assert "could not write /proc/out.png" in str(error) and f"saved to {tmp_path / 'out-1.png'} instead" in str(error)
    assert (tmp_path / "out-1.png").read_bytes() == b"result"
    assert (tmp_path / "out.png").read_bytes() == b"an older file, kept"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_atomic_write_falls_back_to_the_temporary_folder(tmp_path, monkeypatch):
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(temp))
    monkeypatch.chdir("/proc")  # no file can be created in the current folder either
    with pytest.raises(OutputError, match=f"saved to {temp / 'x.png'} instead"):
        save_png(Image.new("RGB", (4, 4), "red"), "/proc/self/x.png")
    with Image.open(temp / "x.png") as image:
        assert image.getpixel((0, 0)) == (255, 0, 0)


def test_a_run_whose_folder_vanishes_keeps_every_result_and_exits_1(model_dir, tmp_path, monkeypatch, capsys):
    """The folder is deleted while the images are being made: both images and the grid are saved in the current
    folder, each error names the path the user gave, the exit code is 1."""
    from clipag.generation import Generator

    out = tmp_path / "out" / "apple.png"
    original = Generator.run

    def run_then_delete(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        if out.parent.is_dir():
            out.parent.rmdir()
            out.parent.with_name("out").write_bytes(b"")  # a file where the folder was: it cannot come back
        return result

    monkeypatch.setattr(Generator, "run", run_then_delete)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    with one_thread():
        status = main(["generate", "a red apple", "-n", "2", "--model", str(model_dir), "--steps", "1", "--views",
                       "2", "--patches", "2", "-o", str(out), "--device", "cpu", "-q"])
    captured = capsys.readouterr()
    assert status == 1
    for name in ("apple-000.png", "apple-001.png", "apple-grid.png"):
        assert f"could not write {out.parent / name}" in captured.err and f"saved to {tmp_path / name}" in captured.err
        assert str(tmp_path / name) in captured.out.split()
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG"


def test_draw_keeps_the_drawing_when_its_folder_vanished(model_dir, tmp_path):
    """The issue's case end to end, as a user runs it: the folder is replaced while drawing, so the drawing is saved
    in the current folder; the error names the path the user typed (not a temporary name) and where it is."""
    code = ("import os, sys, shutil\n"
            "from clipag.adapters.clipdraw.drawer import Drawer\n"
            "original = Drawer.run\n"
            "def run(self, *a, **k):\n"
            "    result = original(self, *a, **k)\n"
            "    shutil.rmtree('target')\n"
            "    open('target', 'w').close()  # a file where the folder was: the write cannot recreate it\n"
            "    return result\n"
            "Drawer.run = run\n"
            "from clipag.cli import main\n"
            f"sys.exit(main(['draw', 'a fox', '--model', {str(model_dir)!r}, '--steps', '2', '--strokes', '4',\n"
            "                '--size', '32', '--device', 'cpu', '-q', '-o', 'target/fox.svg',\n"
            "                '--png', 'target/fox.png']))\n")
    (tmp_path / "target").mkdir()
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=cli_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert f"could not write {os.path.join('target', 'fox.svg')} (target is a file, not a folder); the drawing was " \
           f"saved to {tmp_path / 'fox.svg'} instead" in proc.stderr
    assert "Traceback" not in proc.stderr and ".tmp" not in proc.stderr
    assert (tmp_path / "fox.svg").read_text().startswith("<svg") and (tmp_path / "fox.png").is_file()


def test_check_output_folder_accepts_new_and_empty_folders_and_leaves_nothing(tmp_path):
    check_output_folder(tmp_path, "--out")
    check_output_folder(tmp_path / "new" / "deeper", "--out")
    check_output_folder(None, "--out")
    assert list(tmp_path.iterdir()) == []


def test_check_output_appending_needs_a_writable_file(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text("{}\n")
    log.chmod(0o444)
    check_output(log, "--output", (".jsonl",))  # replaced atomically: the folder's permission is what counts
    if os.access(log, os.W_OK):  # root ignores the mode: nothing to test
        pytest.skip("running as root")
    with pytest.raises(ValueError, match="^--output .*metrics.jsonl: the file is not writable"):
        check_output(log, "--output", (".jsonl",), append=True)


def _finetune(argv):
    from clipag.finetune import main as finetune_main

    return finetune_main(["--dataset-type", "synthetic", "--model", "no-such-arch", *argv])


@pytest.mark.parametrize("name, option, value, message", [
    ("prior build", "-o/--output", "/proc/prior.safetensors", "cannot create files in /proc"),
    ("prior build", "-o/--output", "{file}/prior.safetensors", "is a file, not a folder"),
    ("prior build", "-o/--output", "prior.png", "writes .safetensors"),
    ("eval", "--output", "/proc/eval.jsonl", "cannot create files in /proc"),
    ("eval", "--output", "{dir}", "is a folder; give a file name"),
    ("eval", "--tensorboard", "{file}", "is a file; give a folder"),
    ("demo", "--out", "/proc/demo", "cannot create files in /proc"),
    ("demo", "--out", "{file}", "is a file; give a folder"),
    ("export", "OUT", "/proc/export", "cannot create files in /proc"),
    ("export", "OUT", "{file}/export", "is a file, not a folder"),
    ("finetune", "--output-dir", "{file}/run", "is a file, not a folder"),
])
def test_other_commands_check_their_outputs_before_any_work(name, option, value, message, tmp_path, capsys):
    """Each input is missing too (a model, a data folder): the output's error must come first, with no traceback,
    where it used to come after loading, building or training, or as a raw OSError."""
    from clipag.demo.__main__ import main as demo_main
    from clipag.eval import main as eval_main

    (tmp_path / "cross.png").write_bytes(b"a file")
    value = value.format(file=tmp_path / "cross.png", dir=tmp_path)
    missing = str(tmp_path / "no-such-model")
    calls = {
        "prior build": lambda: main(["prior", "build", missing, "-o", value]),
        "eval": lambda: eval_main(["--model", missing, "--data", "synthetic", option, value]),
        "demo": lambda: demo_main(["--out", value, "--quick"]),
        "export": lambda: main(["export", missing, value, "--format", "open_clip"]),
        "finetune": lambda: _finetune(["--output-dir", value]),
    }
    try:
        status = calls[name]()
    except SystemExit as e:
        status = e.code
    err = capsys.readouterr().err + (status if isinstance(status, str) else "")
    assert status not in (0, None), err
    assert f"{option} {value}: " in err and message in err, err
    assert "no-such" not in err.replace(value, ""), err
    assert list(tmp_path.iterdir()) == [tmp_path / "cross.png"]
