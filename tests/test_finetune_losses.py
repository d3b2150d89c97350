"""Objectives: repeated captions are merged, not negatives; the schedules; the flags document their sources."""

import math

import pytest
import torch
import torch.nn.functional as F

from clipag.finetune.args import build_parser, parse_args
from clipag.finetune.build import epsilon_at, lr_at, param_groups
from clipag.finetune.losses import contrastive_loss, fare_loss, tecoa_loss, text_groups


def _clip_loss(image, text, scale):
    logits = scale * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T
    labels = torch.arange(len(image))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def test_distinct_captions_give_clips_loss():
    torch.manual_seed(0)
    image, text = torch.randn(6, 8), torch.randn(6, 8)
    loss, _ = contrastive_loss(image, text, torch.arange(6), torch.tensor(10.0))
    assert loss.item() == pytest.approx(_clip_loss(image, text, 10.0).item(), rel=1e-6)


def test_repeated_captions_are_one_positive_set():
    tokens = torch.tensor([[1, 5, 2], [1, 6, 2], [1, 5, 2], [1, 5, 2]])
    first, inverse = text_groups(tokens)
    assert len(first) == 2 and inverse[0] == inverse[2] == inverse[3] != inverse[1]
    assert torch.equal(tokens[first][inverse], tokens)
    # Three images of the same caption that all match it perfectly: nothing left to learn. The plain CLIP
    # loss, which treats the duplicate texts as negatives of each other, would still be large.
    text_features = torch.eye(2)[inverse]  # per-sample caption embeddings
    image = text_features.clone()
    merged, acc = contrastive_loss(image, text_features[first], inverse, torch.tensor(100.0))
    assert merged.item() < 1e-3 and acc.item() == 1.0
    assert _clip_loss(image, text_features, 100.0).item() > 0.5


def test_tecoa_and_fare():
    classes = torch.eye(3)
    image = torch.eye(3)[[0, 2, 1]] * 5
    loss, acc = tecoa_loss(image, classes, torch.tensor([0, 2, 1]), torch.tensor(100.0))
    assert loss.item() < 1e-3 and acc.item() == 1.0
    _, acc = tecoa_loss(image, classes, torch.tensor([1, 2, 1]), torch.tensor(100.0))
    assert acc.item() == pytest.approx(2 / 3)
    a, b = torch.zeros(2, 4), torch.ones(2, 4)
    assert fare_loss(a, b).item() == 4.0 and fare_loss(a, b, reduction="sum").item() == 8.0


def test_schedules():
    assert lr_at(0, 1.0, 10, 100, "cosine") == pytest.approx(0.1)
    assert lr_at(9, 1.0, 10, 100, "cosine") == pytest.approx(1.0)
    assert lr_at(55, 1.0, 10, 100, "cosine") == pytest.approx(0.5)
    assert lr_at(99, 1.0, 10, 100, "const") == 1.0
    ramp = [epsilon_at(s, 2.0, 0.5, 100) for s in range(100)]
    assert ramp[0] == pytest.approx(0.04) and ramp[24] == pytest.approx(1.0) and ramp[49:] == [2.0] * 51
    assert epsilon_at(0, 2.0, 0.0, 100) == 2.0


def test_no_weight_decay_on_gains_biases_and_logit_scale():
    from finetune_fixtures import TEST_CONFIG

    from clipag.model import build_model

    model = build_model(TEST_CONFIG).requires_grad_(True)
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert "logit_scale" in {names[id(p)] for p in no_decay["params"]}
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim < 2 for p in no_decay["params"]
                                                              if names[id(p)] != "logit_scale")
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.1


def test_every_flag_documents_default_and_source():
    parser = build_parser()
    required = {"--train-data", "--dataset-type", "--model", "--pretrained", "--objective", "--norm", "--epsilon",
                "--attack-steps", "--attack-step-size", "--batch-size", "--steps", "--lr", "--precision",
                "--output-dir", "--resume", "--seed", "--epsilon-warmup", "--unlock-text", "--accum-steps",
                "--grad-checkpointing", "--compile", "--push-to-hub", "--eval-every"}
    flags = {opt for action in parser._actions for opt in action.option_strings}
    assert required <= flags
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            assert "default:" in action.help and "source:" in action.help, action.option_strings


def test_parse_args_guesses_type_and_rejects_nonsense():
    assert parse_args([]).dataset_type == "synthetic"
    assert parse_args(["--train-data", "s/{000..009}.tar"]).dataset_type == "webdataset"
    assert parse_args(["--epsilon", "4/255"]).epsilon == pytest.approx(4 / 255)
    assert parse_args([], batch_size=3).batch_size == 3
    with pytest.raises(TypeError):
        parse_args([], batch_sise=3)
    with pytest.raises(SystemExit):
        parse_args(["--objective", "fare", "--unlock-text"])
    assert math.isclose(parse_args(["--epsilon-warmup", "0"]).epsilon_warmup, 0.0)
