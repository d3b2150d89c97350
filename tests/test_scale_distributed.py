"""``clipag generate --prompts`` under torchrun: two CPU processes (gloo) split the items, each made exactly once,
one merged manifest; a second launch resumes, folding in the parts a killed launch left."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import pytest
from generate_fixtures import cli_env, save_hub_folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_hub_folder(tmp_path_factory.mktemp("tiny") / "model")


def torchrun(model_dir, prompts, out):
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "clipag.cli", "generate", "--prompts", str(prompts), "--out", str(out), "--model", str(model_dir),
            "--steps", "2", "--no-prior", "--views", "3", "--patches", "3", "-q"]
    proc = subprocess.run(argv, capture_output=True, text=True, env=cli_env(), timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def manifest(out):
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def test_two_ranks_make_each_item_once_and_a_second_launch_resumes(model_dir, tmp_path):
    prompts, out = tmp_path / "p.txt", tmp_path / "out"
    prompts.write_text("".join(f"prompt {i}\n" for i in range(5)))
    torchrun(model_dir, prompts, out)
    first = manifest(out)
    assert Counter(r["prompt"] for r in first) == {f"prompt {i}": 1 for i in range(5)}
    assert Counter(r["rank"] for r in first) == {0: 3, 1: 2} and {r["world_size"] for r in first} == {2}
    assert [r["prompt"] for r in first] == [f"prompt {i}" for i in range(5)]  # file order, not rank order
    assert [r["item"] for r in first] == list(range(5))
    assert sorted(p.name for p in out.glob("*.png")) == sorted(r["file"] for r in first)
    assert not list(out.glob("manifest.rank*")) and not list(out.glob(".done-*"))  # merged, markers gone

    # a launch killed before its merge leaves its records in a part: fold one back out to act it
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    kept, orphan = first[:-1], first[-1]
    (out / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    (out / f"manifest.rank{orphan['rank']}.jsonl").write_text(json.dumps(orphan) + "\n")
    prompts.write_text("".join(f"prompt {i}\n" for i in range(8)))
    torchrun(model_dir, prompts, out)
    second = manifest(out)
    assert [r["prompt"] for r in second] == [f"prompt {i}" for i in range(8)]
    new = [r for r in second if r["prompt"] in {"prompt 5", "prompt 6", "prompt 7"}]
    assert Counter(r["rank"] for r in new) == {0: 2, 1: 1}
    old = {r["key"]: r for r in second if r["key"] in {f["key"] for f in first}}
    assert old == {r["key"]: r for r in first}  # the first launch's records, untouched
    assert all(out.joinpath(name).stat().st_mtime_ns == stamp for name, stamp in stamps.items())
    assert not list(out.glob("manifest.rank*"))
