"""The "not learning" watch: its signals, its verdicts, and runs that are stuck (it warns) or fine (it stays quiet)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from finetune_fixtures import write_config
from generate_fixtures import one_thread
from PIL import Image

from clipag.finetune import train
from clipag.finetune.losses import chance_level, contrastive_loss
from clipag.finetune.watch import LearningWatch, mean_pairwise_cosine

FAST = ["--workers", "0", "--no-progress", "--log-every", "5", "--save-every", "1000", "--warmup", "0",
        "--unlock-text", "--epsilon", "0", "--batch-size", "16", "--collapse-window", "10", "--no-export"]


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    with one_thread():
        yield


def test_mean_pairwise_cosine():
    assert mean_pairwise_cosine(torch.ones(5, 3) * torch.arange(1, 6)[:, None]).item() == pytest.approx(1.0)
    assert mean_pairwise_cosine(torch.eye(4)).item() == pytest.approx(0.0, abs=1e-7)
    features = torch.randn(7, 5)
    unit = torch.nn.functional.normalize(features, dim=-1)
    pairs = [float(unit[i] @ unit[j]) for i in range(7) for j in range(7) if i != j]
    assert mean_pairwise_cosine(features).item() == pytest.approx(sum(pairs) / len(pairs), abs=1e-6)
    assert math.isnan(mean_pairwise_cosine(torch.ones(1, 3)).item())


def test_chance_level_is_what_an_image_blind_model_scores():
    index = torch.tensor([0, 0, 1, 2, 2, 2, 2, 1])  # text shares 1/4, 1/4, 1/2
    entropy = -sum(p * math.log(p) for p in (0.25, 0.25, 0.5))
    per_text = (math.log(8 / 2) + math.log(8 / 2) + math.log(8 / 4)) / 3  # text→image: ln(B / n_u), whatever the logits
    # image→text: the best image-blind logits are the log shares, and their cross-entropy is the entropy
    blind = torch.tensor([0.25, 0.25, 0.5]).log().expand(8, 3)
    loss, acc = chance_level(index, 3, symmetric=False)
    assert F.cross_entropy(blind, index).item() == pytest.approx(loss.item(), abs=1e-6) == pytest.approx(entropy)
    assert acc.item() == 0.5  # always answering the most frequent text
    # contrastive: a fully collapsed model (every embedding the same) scores ln 3 and ln(B / n_u), just above chance
    collapsed, _ = contrastive_loss(torch.ones(8, 4), torch.ones(3, 4), index, torch.tensor(10.0))
    chance, _ = chance_level(index, 3, symmetric=True)
    assert collapsed.item() == pytest.approx((math.log(3) + per_text) / 2, abs=1e-6)
    assert chance.item() == pytest.approx((entropy + per_text) / 2, abs=1e-6) and chance < collapsed


def _stuck(step: int) -> dict:
    return {"loss": 2.31, "acc": 0.1, "chance_loss": 2.30, "chance_acc": 0.12, "image_similarity": 0.9999,
            "text_similarity": 0.99999}


def test_watch_warns_once_after_the_window_and_reports_recovery():
    watch = LearningWatch(window=50, start=10, hints=["a lower --lr"])
    messages = [(step, watch.update(step, _stuck(step))) for step in range(10, 101, 10)]
    fired = [(step, m) for step, m in messages if m]
    assert [step for step, _ in fired] == [60]  # stuck from step 10 (end of warmup), 50 steps later; only once
    text = fired[0][1]
    assert "NOT LEARNING" in text and "loss 2.3100 is not below its chance value 2.3000" in text
    assert "image embeddings collapsed" in text and "text embeddings collapsed" in text and "a lower --lr" in text
    assert watch.collapsed and "did not learn" in watch.summary()
    assert watch.update(110, {"loss": 1.2, "acc": 0.6, "chance_loss": 2.3, "chance_acc": 0.12,
                              "image_similarity": 0.5}) is None
    assert not watch.collapsed and "steps 10-110, then left it" in watch.summary()


def test_watch_stays_quiet_on_warmup_and_on_a_run_leaving_chance():
    watch = LearningWatch(window=20, start=40)
    for step in range(10, 41, 10):  # at chance, but inside the warmup
        assert watch.update(step, _stuck(step)) is None
    for step, loss in zip(range(50, 200, 10), [2.2 - 0.1 * i for i in range(15)], strict=True):
        assert watch.update(step, {"loss": loss, "acc": 0.3, "chance_loss": 2.3, "chance_acc": 0.12,
                                   "image_similarity": 0.995}) is None  # tight embeddings, but learning
    assert watch.summary() is None
    fare = LearningWatch(window=20)  # FARE has no chance value: collapsed image embeddings alone say it
    assert fare.update(10, {"loss": 5.0, "acc": 0.0, "image_similarity": 0.9995}) is None
    assert "image embeddings collapsed" in fare.update(20, {"loss": 5.0, "acc": 0.0, "image_similarity": 0.9995})


def _records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_run_with_lr_0_is_reported_stuck(tmp_path):
    out = tmp_path / "lr0"
    result = train(["--model", write_config(tmp_path), "--dataset-type", "synthetic", "--synthetic-size", "256",
                    "--steps", "25", "--lr", "0", "--output-dir", str(out), *FAST])
    assert result.not_learning and "NOT LEARNING" in result.not_learning and "--lr above 0" in result.not_learning
    log = (out / "train.log").read_text()
    assert log.count("NOT LEARNING") == 2  # when seen, and again in the end-of-run summary
    records = _records(out)
    steps = [r for r in records if "loss" in r]
    assert [r["not_learning"] for r in steps] == [0, 1, 1, 1, 1]  # stuck over the 10-step window: fires at 10
    assert all(0 < r["chance_loss"] and -1 <= r["image_similarity"] <= 1 for r in steps)
    assert records[-1]["event"] == "done" and "NOT LEARNING" in records[-1]["not_learning"]


def test_a_constant_image_source_is_reported_collapsed(tmp_path):
    """Every image the same grey: whatever the LR, the image tower cannot tell classes apart."""
    for name in ("apple", "boat", "car"):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (32, 32), (128, 128, 128)).save(tmp_path / "data" / name / f"{i}.png")
    out = tmp_path / "run"
    result = train(["--model", write_config(tmp_path), "--train-data", str(tmp_path / "data"), "--steps", "25",
                    "--lr", "2e-3", "--output-dir", str(out), *FAST])
    assert result.not_learning and "image embeddings collapsed to one direction" in result.not_learning
    assert result.metrics["image_similarity"] > 0.999


def test_hints_fit_the_run():
    from clipag.finetune.args import parse_args
    from clipag.finetune.watch import suggestions

    scratch = parse_args(["--dataset-type", "synthetic", "--unlock-text", "--epsilon", "0"])
    assert scratch.lr == 1e-3  # the from-scratch default (FARE's 1e-5 is for pretrained weights)
    assert any('"pool_type": "avg"' in h for h in suggestions(scratch, "tok"))
    assert not any("pool_type" in h for h in suggestions(scratch, "avg"))
    frozen = parse_args(["--dataset-type", "synthetic"])
    assert any("--unlock-text" in h for h in suggestions(frozen)) and any("--epsilon" in h for h in suggestions(frozen))
    assert parse_args(["--dataset-type", "synthetic", "--pretrained", "x"]).lr == 1e-5
