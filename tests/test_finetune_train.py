"""End-to-end finetuning on CPU: learning, robustness, every objective and data type, export, push, resume, DDP."""

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
from finetune_fixtures import make_csv, make_image_folder, make_shards, write_config
from generate_fixtures import one_thread
from safetensors.torch import load_file

import clipag
from clipag.eval import eval_batches, evaluate, load_pixel_model, zero_shot_weights
from clipag.finetune import train
from clipag.finetune.checkpoint import find_latest

FAST = ["--workers", "0", "--no-progress", "--log-every", "10", "--save-every", "1000", "--warmup", "5"]


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny CLIP pretrained from scratch on the synthetic source (ε=0, text unlocked): ~10 s."""
    folder = tmp_path_factory.mktemp("pretrain")
    result = train(["--model", write_config(folder), "--unlock-text", "--epsilon", "0", "--batch-size", "64",
                    "--steps", "80", "--lr", "2e-3", "--output-dir", str(folder / "run"), "--eval-data", "synthetic",
                    "--eval-samples", "256", "--eval-epsilon", "0", *FAST])
    return result


def _attack_success(model_path: str) -> tuple[float, float]:
    model = load_pixel_model(model_path, "cpu")
    batches, names, total = eval_batches("synthetic", 32, 128, samples=256)
    weights = zero_shot_weights(model, names, ["a photo of a {}."], "cpu")
    result = evaluate(model, batches, weights, "l2", [0.5], steps=5, total=total, progress=False)
    return result["clean_acc"], result["attack_success_rate/l2_0.5"]


def test_pretraining_from_scratch_learns(pretrained):
    losses = [record["loss"] for record in pretrained.history]
    assert losses[-1] < 0.2 * losses[0]
    assert pretrained.eval["eval/clean_acc"] > 0.9
    records = [json.loads(line) for line in (pretrained.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(10, 81, 10))
    assert records[-1]["event"] == "done" and records[-1]["replicas_identical"]
    # a healthy run: the collapse watch stays quiet, and its signals show the embeddings spreading out
    assert pretrained.not_learning is None and records[-1]["not_learning"] is None
    assert all(r["not_learning"] == 0 for r in records if "loss" in r)
    logged = [r for r in records if "loss" in r]
    assert logged[-1]["image_similarity"] < 0.5 < logged[0]["image_similarity"]
    log = (pretrained.output_dir / "train.log").read_text()
    assert "objective contrastive, clean training: no attack (ε = 0)" in log and "NOT LEARNING" not in log


def test_adversarial_finetuning_lowers_attack_success(pretrained, tmp_path):
    start_clean, start_success = _attack_success(str(pretrained.export_dir))
    result = train(["--pretrained", str(pretrained.export_dir), "--epsilon", "1", "--attack-steps", "3",
                    "--batch-size", "64", "--steps", "60", "--lr", "1e-3", "--output-dir", str(tmp_path / "adv"),
                    *FAST])
    clean, success = _attack_success(str(result.export_dir))
    assert start_success > 0.3  # the clean model is easy to fool ...
    assert success < start_success - 0.2  # ... the finetuned one much less
    assert clean > 0.85
    assert result.not_learning is None
    assert ("adversarial training: 3-step l2 PGD at ε=1, ε ramped from 0 over the first 50% of steps"
            in (tmp_path / "adv" / "train.log").read_text())
    epsilons = [r["epsilon"] for r in result.history]
    assert epsilons[0] < 0.5 and epsilons[-1] == 1.0  # the ramp
    frozen = load_file(str(pretrained.export_dir / "open_clip_model.safetensors"))
    tuned = load_file(str(result.export_dir / "open_clip_model.safetensors"))
    assert torch.equal(frozen["token_embedding.weight"], tuned["token_embedding.weight"])  # text tower frozen
    assert torch.equal(frozen["logit_scale"], tuned["logit_scale"])
    assert not torch.equal(frozen["visual.proj"], tuned["visual.proj"])


def test_export_loads_through_clipag_load_and_the_hub_cache(pretrained, monkeypatch):
    from clipag.finetune.export import push_to_hub
    from clipag.weights import install_in_hub_cache

    folder = pretrained.export_dir
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "open_clip_config.json",
                                                        "open_clip_model.safetensors"]
    assert (folder / "open_clip_model.safetensors").stat().st_mode & 0o044  # readable by others, like the JSON
    card = (folder / "README.md").read_text()
    assert "python -m clipag.finetune" in card and "](https://github.com/)" not in card  # no placeholder link
    config = json.loads((folder / "open_clip_config.json").read_text())
    assert config["model_cfg"]["vision_cfg"]["image_size"] == 32 and config["preprocess_cfg"]["size"] == 32
    model, preprocess = clipag.load(str(folder), device="cpu")
    assert model.visual.input_resolution == 32
    saved = load_file(str(folder / "open_clip_model.safetensors"))
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    install_in_hub_cache(folder, "me/tiny-clipag")  # into the test's offline Hugging Face cache
    hub_model, _ = clipag.load("hf-hub:me/tiny-clipag", device="cpu")
    assert torch.equal(hub_model.visual.proj, model.visual.proj)

    calls = []

    class FakeApi:
        def create_repo(self, repo, private, exist_ok):
            calls.append(("create", repo, private))

        def upload_folder(self, repo_id, folder_path, commit_message):
            calls.append(("upload", repo_id, sorted(os.listdir(folder_path))))
            return type("Info", (), {"commit_url": f"https://hf.co/{repo_id}/commit/1"})()

    monkeypatch.setattr("huggingface_hub.HfApi", FakeApi)
    assert push_to_hub(folder, "me/tiny-clipag", private=True).endswith("/commit/1")
    files = ["README.md", "open_clip_config.json", "open_clip_model.safetensors"]
    assert calls == [("create", "me/tiny-clipag", True), ("upload", "me/tiny-clipag", files)]


@pytest.mark.parametrize("objective", ["tecoa", "fare"])
def test_objectives_on_folder_and_csv_data(pretrained, tmp_path, objective):
    """TeCoA on an image folder (CE over class prompts); FARE on a CSV (L2 to the frozen original)."""
    if objective == "tecoa":
        data = ["--train-data", str(make_image_folder(tmp_path / "folder", per_class=8, classes=10)),
                "--templates", "simple"]
    else:
        data = ["--train-data", str(make_csv(tmp_path / "csv", rows=16))]
    result = train(["--pretrained", str(pretrained.export_dir), "--objective", objective, "--norm", "linf",
                    "--epsilon", "8/255", "--attack-steps", "2", "--batch-size", "16", "--steps", "10", "--lr", "1e-3",
                    "--output-dir", str(tmp_path / "run"), "--eval-data", str(tmp_path / "folder") if objective ==
                    "tecoa" else "synthetic", "--eval-samples", "32", "--eval-attack-steps", "2", *data, *FAST])
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in result.history)
    assert result.eval["eval/samples"] == 32 and "eval/robust_acc/linf_8/255" in result.eval
    if objective == "fare":  # FARE starts at zero distance and the attack pushes it up
        assert result.history[0]["loss"] > 0
    else:
        assert result.eval["eval/clean_acc"] > 0.5


def test_webdataset_training_counts_corrupt_samples(pretrained, tmp_path):
    urls = make_shards(tmp_path / "shards", shards=2, per_shard=12, corrupt=("000000005",))
    result = train(["--pretrained", str(pretrained.export_dir), "--train-data", urls, "--epsilon", "0.5",
                    "--attack-steps", "1", "--batch-size", "8", "--steps", "4", "--log-every", "2",
                    "--output-dir", str(tmp_path / "run"), "--workers", "0", "--no-progress", "--no-export"])
    assert result.history[-1]["skipped_samples"] == 1 and result.export_dir is None


def test_more_workers_than_shards_trains_with_fewer_workers(pretrained, tmp_path):
    urls = make_shards(tmp_path / "shards", shards=2, per_shard=6)
    out = tmp_path / "run"
    train(["--pretrained", str(pretrained.export_dir), "--train-data", urls, "--epsilon", "0.5", "--attack-steps", "1",
           "--batch-size", "4", "--steps", "2", "--output-dir", str(out), "--workers", "4", "--no-progress",
           "--no-export"])
    assert "2 shards cannot feed 1 rank(s) × 4 workers" in (out / "train.log").read_text()
    _, state = find_latest(out)
    assert state["data"]["workers"] == 2  # what resuming compares against


def _digest(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(state[key].float().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _run_args(cfg: str, data: str, out: Path) -> list[str]:
    return [sys.executable, "-m", "clipag.finetune", "--model", cfg, "--train-data", data, "--unlock-text",
            "--epsilon", "0.5", "--attack-steps", "2", "--batch-size", "8", "--steps", "30", "--lr", "1e-3",
            "--warmup", "3", "--workers", "2", "--shuffle-window", "5", "--save-every", "5", "--keep-checkpoints", "1",
            "--output-dir", str(out), "--no-progress", "--log-every", "5"]


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    cfg = write_config(tmp_path)
    data = make_shards(tmp_path / "shards", shards=4, per_shard=10)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_run_args(cfg, data, tmp_path / "full"), check=True, env=env, capture_output=True)

    victim = subprocess.Popen(_run_args(cfg, data, tmp_path / "killed"), env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    checkpoints = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 120
    while not (checkpoints.is_dir() and any(p.suffix == ".pt" for p in checkpoints.iterdir())):
        assert victim.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    assert not (tmp_path / "killed" / "export").exists()  # it really died mid-run

    resumed = subprocess.run([*_run_args(cfg, data, tmp_path / "killed"), "--resume", "latest"], env=env,
                             capture_output=True, text=True, check=True)
    start = int(resumed.stderr.split("at step ")[1].split()[0])
    assert 5 <= start < 30
    full = load_file(str(tmp_path / "full" / "export" / "open_clip_model.safetensors"))
    again = load_file(str(tmp_path / "killed" / "export" / "open_clip_model.safetensors"))
    assert full.keys() == again.keys()
    for key in full:
        torch.testing.assert_close(again[key], full[key], rtol=0, atol=1e-6, msg=key)
    steps = [json.loads(line)["step"] for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 30  # one timeline: what the killed run logged later moved aside
    checkpoint = torch.load(checkpoints / "step_00000030.pt", weights_only=True)  # no pickled objects
    assert {"model", "optimizer", "scaler", "scheduler", "step", "data", "rng"} <= checkpoint.keys()


def test_torchrun_two_ranks_hold_identical_weights(tmp_path):
    cfg = write_config(tmp_path)
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "clipag.finetune", "--model", cfg, "--unlock-text", "--epsilon", "0.5", "--attack-steps", "1",
           "--batch-size", "8", "--accum-steps", "2", "--gather-features", "--steps", "6", "--lr", "1e-3",
           "--warmup", "2", "--output-dir", str(out), "--workers", "0", "--no-progress", "--log-every", "2"]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    done = records[-1]
    assert done["event"] == "done" and done["world_size"] == 2 and done["replicas_identical"]
    assert len(set(done["weight_digests"])) == 1
    exported = load_file(str(out / "export" / "open_clip_model.safetensors"))
    assert done["weight_digests"][0] == _digest(exported)
    assert records[0]["samples_seen"] == 2 * 8 * 2 * 2  # ranks × batch × accumulation × steps
    # rank 0 plans the output folder and every rank follows: its refusal stops both ranks, none waits forever
    again = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode != 0 and f"{out} already holds a run" in again.stderr
