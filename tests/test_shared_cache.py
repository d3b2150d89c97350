"""One cache, many processes, and faults: nothing verified is lost, nothing outside the cache is touched.

Real processes (subprocess) against a throttled HTTP server on 127.0.0.1, serving a replica of CLIPAG's file
format (tests/replicas.py) for a tiny registry entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hub_fixtures import TINY_OPEN_CLIP
from replicas import open_clip_2023_checkpoint

import clipag
from clipag import registry
from clipag.cache import DiskFullError

# A child process: the tiny entry in place of CLIPAG's, then whatever the test asks for.
_CHILD = """
import dataclasses, sys, open_clip
from huggingface_hub import constants
constants.HF_HUB_OFFLINE = False
import clipag
from clipag import registry
config_dir, url, size, action = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
open_clip.add_model_config(config_dir)
registry.REGISTRY["ViT-B/32"] = dataclasses.replace(registry.REGISTRY["ViT-B/32"], arch="tiny-test", url=url,
                                                    size=size, filename="tiny.pt")
if action == "hang-in-conversion":  # the real writer starts its temp file, then the process is killed
    import time
    import clipag.checkpoints
    def slow_save(tensors, filename, metadata=None):
        open(filename, "wb").write(b"x" * 1_000_000)
        print("CONVERTING", flush=True)
        time.sleep(600)
    clipag.checkpoints.save_file = slow_save
if action.startswith("download_url"):
    from clipag.hub import download_url
    print("SHA", download_url(url, sys.argv[5], size=size, sha256=sys.argv[6], progress=False), flush=True)
else:
    model, _ = clipag.load("ViT-B/32", device="cpu")
    print("LOADED", float(model.logit_scale), flush=True)
"""


@pytest.fixture
def served_entry(http_server, tmp_path, monkeypatch):
    """``(child args, served file, handler, cache)``: the tiny entry served slowly, and a fresh shared cache."""
    import open_clip

    url, served, handler = http_server
    config_dir = tmp_path / "configs"
    config_dir.mkdir()
    (config_dir / "tiny-test.json").write_text(json.dumps(TINY_OPEN_CLIP))
    open_clip.add_model_config(config_dir)
    state_dict = open_clip_2023_checkpoint(served / "tiny.pt", TINY_OPEN_CLIP, seed=3)
    size = (served / "tiny.pt").stat().st_size
    cache = tmp_path / "shared-cache"
    monkeypatch.setenv("CLIPAG_CACHE", str(cache))
    entry = registry.REGISTRY["ViT-B/32"].__class__(**{**registry.REGISTRY["ViT-B/32"].__dict__, "arch": "tiny-test",
                                                       "url": f"{url}/tiny.pt", "size": size, "filename": "tiny.pt"})
    monkeypatch.setitem(registry.REGISTRY, "ViT-B/32", entry)
    return {"args": [str(config_dir), f"{url}/tiny.pt", str(size)], "file": served / "tiny.pt", "handler": handler,
            "cache": cache, "state_dict": state_dict}


def _start(served_entry, action="load", *extra):
    env = {**os.environ, "CLIPAG_CACHE": str(served_entry["cache"]), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", _CHILD, *served_entry["args"], action, *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _full_downloads(handler) -> int:
    return sum(1 for r in handler.requests if r["path"].startswith("/tiny.pt") and not r["range"])


def test_concurrent_first_loads_download_once_and_all_succeed(served_entry):
    served_entry["handler"].seconds_per_mb = 0.15  # ~2.5 s for the 16 MB file: the four processes overlap
    children = [_start(served_entry) for _ in range(4)]
    results = [child.communicate(timeout=300) for child in children]
    for child, (out, err) in zip(children, results, strict=True):
        assert child.returncode == 0, err[-2000:]
        assert "LOADED" in out
    assert _full_downloads(served_entry["handler"]) == 1
    assert any("waiting for another process" in err for _, err in results)
    folder = served_entry["cache"] / "ViT-B-32"
    assert sorted(p.name for p in folder.iterdir()) == ["open_clip_config.json", "open_clip_model.safetensors",
                                                      "source.json"]


def test_two_download_url_calls_one_file_on_disk_verified(served_entry, tmp_path):
    served_entry["handler"].seconds_per_mb = 0.15
    data = served_entry["file"].read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    dest = tmp_path / "shared" / "tiny.pt"
    first = _start(served_entry, "download_url", str(dest), sha)
    time.sleep(1.5)
    second = _start(served_entry, "download_url", str(dest), sha)
    for child in (first, second):
        out, err = child.communicate(timeout=300)
        assert child.returncode == 0, err[-2000:]
        assert f"SHA {sha}" in out
    assert dest.read_bytes() == data  # the file on disk, not the bytes one process received
    assert _full_downloads(served_entry["handler"]) == 1
    assert not dest.with_name("tiny.pt.part").exists()


def test_partial_file_symlinked_outside_is_never_written_through(served_entry, tmp_path):
    from clipag.hub import download_url

    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"precious" * 100)
    folder = tmp_path / "cache-folder"
    folder.mkdir()
    (folder / "tiny.pt.part").symlink_to(outside)
    (folder / "dangling.pt.part").symlink_to(tmp_path / "created-outside")
    url = served_entry["args"][1]
    with pytest.warns(UserWarning, match="symbolic link"):
        download_url(url, folder / "tiny.pt", progress=False)
    with pytest.warns(UserWarning, match="symbolic link"):
        download_url(url, folder / "dangling.pt", progress=False)
    assert outside.read_bytes() == b"precious" * 100  # untouched: no Range request appended to it
    assert not (tmp_path / "created-outside").exists()
    assert (folder / "tiny.pt").read_bytes() == served_entry["file"].read_bytes()
    assert not (folder / "tiny.pt").is_symlink()


def test_full_disk_during_conversion_keeps_the_verified_download(served_entry, monkeypatch):
    from huggingface_hub import constants
    from safetensors import SafetensorError

    import clipag.checkpoints

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    real_save = clipag.checkpoints.save_file

    def disk_full(tensors, filename, metadata=None):  # what safetensors raises when the disk fills up
        Path(filename).write_bytes(b"x" * 1000)
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                              "message: \"No space left on device\" })")

    monkeypatch.setattr(clipag.checkpoints, "save_file", disk_full)
    folder = served_entry["cache"] / "ViT-B-32"
    with pytest.raises(DiskFullError) as error:
        clipag.load("ViT-B/32", device="cpu")
    message = str(error.value)
    assert str(folder / "open_clip_model.safetensors") in message and "MB" in message
    assert "tiny.pt is kept" in message and "without downloading" in message
    assert (folder / "tiny.pt").read_bytes() == served_entry["file"].read_bytes()
    assert not list(folder.glob(".*.tmp"))
    monkeypatch.setattr(clipag.checkpoints, "save_file", real_save)
    requests = len(served_entry["handler"].requests)
    model, _ = clipag.load("ViT-B/32", device="cpu")  # converts the kept file
    assert len(served_entry["handler"].requests) == requests  # no second download
    assert torch.equal(model.token_embedding.weight, served_entry["state_dict"]["token_embedding.weight"])
    assert not (folder / "tiny.pt").exists()


def test_too_little_space_is_said_before_writing(served_entry, monkeypatch):
    import shutil as shutil_module
    from collections import namedtuple

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil_module, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(DiskFullError, match=r"tiny\.pt\.part: it needs about 1\d\.\d MB, 1\.0 KB are free"):
        clipag.load("ViT-B/32", device="cpu")
    assert not any(r["path"].startswith("/tiny.pt") for r in served_entry["handler"].requests)


def test_local_checkpoint_loads_when_the_cache_is_full(served_entry, monkeypatch):
    import shutil as shutil_module
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil_module, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    with pytest.warns(UserWarning, match="could not cache the safetensors conversion"):
        model, _ = clipag.load(str(served_entry["file"]), device="cpu")
    assert torch.equal(model.token_embedding.weight, served_entry["state_dict"]["token_embedding.weight"])


def test_killed_conversion_resumes_from_the_download_and_cleans_up(served_entry):
    child = _start(served_entry, "hang-in-conversion")
    assert child.stdout.readline().strip() == "CONVERTING"
    folder = served_entry["cache"] / "ViT-B-32"
    temps = list(folder.glob(".open_clip_model.safetensors.*.tmp"))
    assert temps and (folder / "tiny.pt").is_file()  # downloaded, mid-conversion
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    requests = len(served_entry["handler"].requests)
    again = _start(served_entry)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0 and "LOADED" in out, err[-2000:]
    assert "a verified download is already here" in err
    assert len(served_entry["handler"].requests) == requests  # not downloaded again
    assert not list(folder.glob(".*.tmp"))  # the killed writer's temp file is gone
    assert sorted(p.name for p in folder.iterdir()) == ["open_clip_config.json", "open_clip_model.safetensors",
                                                      "source.json"]


def test_replaced_file_with_restored_mtime_is_converted_again(tmp_path):
    import open_clip

    from clipag.checkpoints import read_checkpoint

    path, other = tmp_path / "model.pt", tmp_path / "other.pt"
    first = open_clip_2023_checkpoint(path, TINY_OPEN_CLIP, seed=1)
    second = open_clip_2023_checkpoint(other, TINY_OPEN_CLIP, seed=2)
    assert path.stat().st_size == other.stat().st_size
    model, _ = clipag.load(str(path), device="cpu")
    assert torch.equal(model.visual.conv1.weight, first["visual.conv1.weight"])
    stat = path.stat()
    path.write_bytes(other.read_bytes())  # different weights, same size ...
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # ... and the old mtime
    model, _ = clipag.load(str(path), device="cpu")
    assert torch.equal(model.visual.conv1.weight, second["visual.conv1.weight"])
    del open_clip, read_checkpoint
