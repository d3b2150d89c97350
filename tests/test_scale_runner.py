"""The prompt-file runner: the manifest, skipping finished items, refusing changed settings, Ctrl-C, --batch,
and the weights file each record's hash is taken of."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from generate_fixtures import cli_env, interrupt_once_running, one_thread, save_hub_folder
from PIL import Image

import clipag
import clipag.checkpoints as checkpoints
from clipag.cli import main
from clipag.generation import Generator
from clipag.hub import sha256_of
from clipag.scale.jobs import weights_file

REQUIRED = {"prompt", "seed", "model", "weights_sha256", "config", "best_loss", "steps", "seconds", "file", "sha256",
            "rank"}


@pytest.fixture(autouse=True)
def _single_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_hub_folder(tmp_path_factory.mktemp("tiny") / "model")


def generate(model_dir, prompts, out, *extra):
    return main(["generate", "--prompts", str(prompts), "--out", str(out), "--model", str(model_dir), "--steps", "2",
                 "--no-prior", "--views", "3", "--patches", "3", "--device", "cpu", "-q", *extra])


def records(out):
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def stamps(out):
    return {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}


def test_manifest_lists_every_item_with_its_hashes(model_dir, tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red apple\na blue car\n")
    out = tmp_path / "out"
    assert generate(model_dir, prompts, out, "-n", "2", "--seed", "5") == 0
    rows = records(out)
    assert len(rows) == 4 and all(REQUIRED <= set(r) for r in rows)
    assert [(r["prompt"], r["seed"]) for r in rows] == [("a red apple", 5), ("a red apple", 6), ("a blue car", 5),
                                                        ("a blue car", 6)]
    weights = sha256_of(model_dir / "open_clip_model.safetensors")
    for r in rows:
        assert r["model"] == str(model_dir) and r["weights_sha256"] == weights and r["rank"] == 0
        assert r["sha256"] == sha256_of(out / r["file"]) and "/" not in r["file"]
        assert r["config"]["global_views"] == 3 and r["config"]["steps"] == 2 and r["steps"] == 2
        assert isinstance(r["best_loss"], float) and r["seconds"] > 0
        assert Image.open(out / r["file"]).size == (32, 32)
    files = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))  # less the lock files
    assert files == sorted([*(r["file"] for r in rows), "manifest.jsonl", "run.json"])
    assert capsys.readouterr().out.split() == [str(out / r["file"]) for r in rows]


def test_a_rerun_skips_finished_items_and_remakes_missing_or_changed_files(model_dir, tmp_path):
    prompts, out = tmp_path / "p.txt", tmp_path / "out"
    prompts.write_text("a red apple\na blue car\na green tree\n")
    assert generate(model_dir, prompts, out) == 0
    first, before = records(out), stamps(out)
    assert generate(model_dir, prompts, out) == 0  # nothing to do
    assert stamps(out) == before and records(out) == first
    (out / first[0]["file"]).unlink()  # lost
    (out / first[1]["file"]).write_bytes(b"not the image it was")  # replaced
    prompts.write_text("a red apple\na blue car\na green tree\na yellow sun\n")  # and one more line
    assert generate(model_dir, prompts, out) == 0
    after, now = records(out), stamps(out)
    assert len(after) == 4 and len({r["key"] for r in after}) == 4
    assert now[first[2]["file"]] == before[first[2]["file"]]  # untouched
    assert (out / first[0]["file"]).is_file() and sha256_of(out / first[1]["file"]) == first[1]["sha256"]


def test_changed_settings_are_refused_not_mixed(model_dir, tmp_path, capsys):
    prompts, out = tmp_path / "p.txt", tmp_path / "out"
    prompts.write_text("a red apple\n")
    assert generate(model_dir, prompts, out) == 0
    before = stamps(out)
    assert generate(model_dir, prompts, out, "--lr", "0.5") == 2
    err = capsys.readouterr().err
    assert "holds items made with other settings (config.lr: 0.0175 -> 0.5)" in err and "new --out folder" in err
    assert stamps(out) == before and len(records(out)) == 1
    # knobs that do not change the images are not a different run
    assert generate(model_dir, prompts, out, "--max-views-per-batch", "2", "--memory", "64GB") == 0
    other = save_hub_folder(tmp_path / "other", seed=1)
    assert generate(other, prompts, out) == 2 and "weights_sha256" in capsys.readouterr().err


def test_per_item_settings_from_jsonl(model_dir, tmp_path):
    prompts, out = tmp_path / "p.jsonl", tmp_path / "out"
    prompts.write_text('{"prompt": "a red apple", "seed": 9, "steps": 3, "lr": 0.03, "name": "apple"}\n'
                       '{"prompt": "a blue car"}\n')
    assert generate(model_dir, prompts, out) == 0
    apple, car = records(out)
    assert (apple["file"], apple["seed"], apple["steps"], apple["config"]["lr"]) == ("apple.png", 9, 3, 0.03)
    assert (car["seed"], car["steps"], car["config"]["lr"]) == (0, 2, 0.0175)


def test_ctrl_c_keeps_finished_items_and_the_next_run_makes_the_rest(model_dir, tmp_path, monkeypatch, capsys):
    prompts, out = tmp_path / "p.txt", tmp_path / "out"
    prompts.write_text("one\ntwo\nthree\n")
    calls = {"n": 0}
    original = Generator.step_many

    def interrupted(self, sessions):
        calls["n"] += 1
        if calls["n"] == 4:  # the second step of the second item
            raise KeyboardInterrupt
        return original(self, sessions)

    monkeypatch.setattr(Generator, "step_many", interrupted)
    assert generate(model_dir, prompts, out) == 130
    assert "1 item(s) finished by this process are kept" in capsys.readouterr().err
    kept = records(out)  # merged into manifest.jsonl, no part left behind
    assert [r["prompt"] for r in kept] == ["one"] and not list(out.glob("manifest.rank*"))
    assert sorted(p.name for p in out.glob("*.png")) == [kept[0]["file"]]
    before = stamps(out)
    monkeypatch.setattr(Generator, "step_many", original)
    assert generate(model_dir, prompts, out) == 0
    assert [r["prompt"] for r in records(out)] == ["one", "two", "three"]
    assert stamps(out)[kept[0]["file"]] == before[kept[0]["file"]]


def test_batch_makes_the_single_image_results(model_dir, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red apple\na blue car\na green tree\n")
    assert generate(model_dir, prompts, tmp_path / "one") == 0
    assert generate(model_dir, prompts, tmp_path / "two", "--batch", "2", "--max-views-per-batch", "5") == 0
    one, two = records(tmp_path / "one"), records(tmp_path / "two")
    assert [r["batch"] for r in two] == [2, 2, 1] and [r["file"] for r in one] == [r["file"] for r in two]
    for a, b in zip(one, two, strict=True):
        assert b["best_loss"] == pytest.approx(a["best_loss"], rel=1e-5)
        pixels = [np.asarray(Image.open(folder / r["file"]), dtype=np.int16)
                  for folder, r in ((tmp_path / "one", a), (tmp_path / "two", b))]
        assert np.abs(pixels[0] - pixels[1]).max() <= 1  # 8-bit rounding of nearly equal floats


def test_option_mistakes_are_caught_before_any_model_loads(tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("x\n")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "x", "stepz": 3}\n')
    cases = [(["generate", "--prompts", str(prompts)], "needs --out DIR"),
             (["generate", "x", "--prompts", str(prompts), "--out", "o"], "not both"),
             (["generate", "--prompts", str(prompts), "--out", "o", "-o", "a.png"], "-o/--output names one file"),
             (["generate", "--prompts", str(prompts), "--out", "o", "--frames", "a.gif"], "--frames is not available"),
             (["generate", "x", "--batch", "2"], "--batch and --out go with --prompts"),
             (["generate", "--prompts", str(tmp_path / "bad.jsonl"), "--out", "o"], "unknown key 'stepz'"),
             (["generate", "x", "--memory", "lots"], "memory size 'lots'"),
             (["generate"], "give a prompt"),
             (["draw", "--prompts", str(prompts), "--out", "o", "--compare", "m"], "--compare is not available"),
             (["style", "photo.png", "--prompts", str(prompts), "--out", "o"], "content image photo.png not found"),
             (["vqgan", "--prompts", str(prompts)], "needs --out DIR"),
             (["generate", "--prompts", str(prompts), "--out", str(prompts)], "is a file, not a folder")]
    for argv, message in cases:
        assert main([*argv, "--model", str(tmp_path / "no-such-model")]) == 2, argv
        assert message in capsys.readouterr().err, argv


@pytest.mark.filterwarnings("ignore:.*image processor config is not in the Hugging Face cache")
def test_weights_file_is_the_file_the_loader_reads(model_dir, tmp_path, isolated_caches, monkeypatch):
    """Every route clipag.load takes (registry entries are checked in their own tests of the cache layout):
    the file ``weights_file`` names is the safetensors file the load read its weights from."""
    import sys

    from hub_fixtures import TINY_OPEN_CLIP, make_hub_repo, tiny_open_clip_state_dict
    from safetensors.torch import save_file

    sys.path.insert(0, str(Path(__file__).parent / "hf"))
    from hf_fixtures import install_hf_repo, transformers_clip

    opened = []
    read = checkpoints._read_safetensors  # every route reads safetensors through it
    monkeypatch.setattr(checkpoints, "_read_safetensors", lambda path: opened.append(Path(path)) or read(path))
    state = tiny_open_clip_state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    (tmp_path / "ckpt").mkdir()
    torch.save({"state_dict": state}, tmp_path / "ckpt" / "epoch_1.pt")
    make_hub_repo(isolated_caches / "hf", "someone/tiny", {"model_cfg": TINY_OPEN_CLIP}, state)
    make_hub_repo(isolated_caches / "hf", "someone/tiny-bin", {"model_cfg": TINY_OPEN_CLIP}, state,
                  weights_name="open_clip_pytorch_model.bin")
    transformers_clip().save_pretrained(tmp_path / "hf-folder")
    install_hf_repo(isolated_caches / "hf", "someone/tiny-hf", tmp_path / "hf-folder")
    for name in (str(model_dir), str(tmp_path / "w.safetensors"), str(tmp_path / "ckpt" / "epoch_1.pt"),
                 "hf-hub:someone/tiny", "hf-hub:someone/tiny-bin", str(tmp_path / "hf-folder"),
                 "hf-hub:someone/tiny-hf"):
        for _ in range(2):  # the second load reads the cached conversion of a pickle or a transformers model
            opened.clear()
            clipag.load(name, device="cpu")
        expected = weights_file(name)
        assert expected.suffix == ".safetensors" and expected.is_file(), name
        assert opened and os.path.samefile(opened[-1], expected), (name, opened, expected)


def test_draw_writes_svg_and_png_per_item(model_dir, tmp_path):
    prompts, out = tmp_path / "p.txt", tmp_path / "out"
    prompts.write_text("a red circle\n")
    assert main(["draw", "--prompts", str(prompts), "--out", str(out), "--model", str(model_dir), "--steps", "2",
                 "--strokes", "6", "--size", "32", "--augmentations", "2", "--device", "cpu", "-q"]) == 0
    (row,) = records(out)
    assert row["file"].endswith(".svg") and [a["file"] for a in row["also"]] == [row["file"][:-4] + ".png"]
    assert row["also"][0]["sha256"] == sha256_of(out / row["also"][0]["file"])
    (out / row["also"][0]["file"]).unlink()  # a missing side file is an unfinished item too
    assert main(["draw", "--prompts", str(prompts), "--out", str(out), "--model", str(model_dir), "--steps", "2",
                 "--strokes", "6", "--size", "32", "--augmentations", "2", "--device", "cpu", "-q"]) == 0
    assert (out / row["also"][0]["file"]).is_file()


def test_a_real_ctrl_c_leaves_no_partial_file_and_the_rerun_makes_everything(model_dir, tmp_path):
    prompts, out = tmp_path / "p.txt", tmp_path / "out"
    prompts.write_text("one\ntwo\n")
    argv = ["generate", "--prompts", str(prompts), "--out", str(out), "--model", str(model_dir), "--steps", "300",
            "--no-prior", "--views", "3", "--patches", "3", "--device", "cpu"]
    code, _, err = interrupt_once_running(argv, cli_env())  # SIGINT as soon as the bar shows a loss
    assert code == 130 and "run the same command again" in err, err[-2000:]
    assert not list(out.glob("*.png")) and not list(out.glob(".*.tmp"))  # the item in progress is dropped
    assert main([*argv, "-q"]) == 0
    assert [r["prompt"] for r in records(out)] == ["one", "two"] and len(list(out.glob("*.png"))) == 2


def test_a_second_run_into_a_busy_folder_is_refused(model_dir, tmp_path, capsys):
    """A process of another launch still holds its rank lock: nothing is made until it lets go."""
    import multiprocessing

    prompts, out = tmp_path / "p.txt", tmp_path / "out"
    prompts.write_text("one\n")
    out.mkdir()
    context = multiprocessing.get_context("fork")  # filelock is re-entrant within a process: hold it from another
    ready, done = context.Event(), context.Event()
    holder = context.Process(target=_hold, args=(out, ready, done))
    holder.start()
    try:
        assert ready.wait(30)
        assert generate(model_dir, prompts, out) == 2
        assert ".run.rank1.lock is held" in capsys.readouterr().err and not list(out.glob("*.png"))
    finally:
        done.set()
        holder.join(30)
    assert generate(model_dir, prompts, out) == 0  # free again


def _hold(out, ready, done):
    from clipag.scale.manifest import lock

    with lock(out, ".run.rank1.lock", timeout=0):
        ready.set()
        done.wait(60)
