"""CLIPDraw: upstream's start strokes and schedule, determinism, Ctrl-C, and the ``clipag draw`` command."""

from __future__ import annotations

import dataclasses
import random
import xml.etree.ElementTree as ET

import pytest
import torch
from clipag.adapters.clipdraw.drawer import DrawConfig, Drawer, DrawingInterrupted, initial_strokes
from generate_fixtures import one_thread, save_hub_folder, tiny_model
from PIL import Image

from clipag.cli import main

SMALL = dict(strokes=12, size=64, frame_every=1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_hub_folder(tmp_path_factory.mktemp("tiny") / "model", size=32)


def test_start_strokes_are_upstreams_for_the_same_seed():
    """predict.py's initialisation loop with random.seed(s) draws exactly these strokes."""
    random.seed(5)
    expected_points, expected_colors = [], []
    for _ in range(7):
        segments = random.randint(1, 3)
        p0 = (random.random(), random.random())
        expected_points.append(p0)
        for _ in range(segments):
            p1 = (p0[0] + 0.1 * (random.random() - 0.5), p0[1] + 0.1 * (random.random() - 0.5))
            p2 = (p1[0] + 0.1 * (random.random() - 0.5), p1[1] + 0.1 * (random.random() - 0.5))
            p3 = (p2[0] + 0.1 * (random.random() - 0.5), p2[1] + 0.1 * (random.random() - 0.5))
            expected_points += [p1, p2, p3]
            p0 = p3
        expected_colors.append([random.random() for _ in range(4)])
    strokes = initial_strokes(DrawConfig(strokes=7), seed=5)
    torch.testing.assert_close(strokes.points, torch.tensor(expected_points) * 224)
    torch.testing.assert_close(strokes.colors, torch.tensor(expected_colors))
    assert torch.equal(strokes.widths, torch.ones(7))


def test_draw_steps_optimise_and_respect_upstreams_clamps(model_dir):
    with one_thread():
        drawer = Drawer(model_dir, device="cpu", config=DrawConfig(steps=3, **SMALL))
        start = initial_strokes(drawer.config, 0)
        result = drawer.run("a red circle", seed=0)
    assert result.steps_done == 3 and len(result.losses) == 3 and len(result.frames) == 3
    assert not torch.equal(result.strokes.points, start.points)
    assert result.strokes.widths.min() >= 1.0 and result.strokes.widths.max() <= 50
    assert result.strokes.colors.min() >= 0 and result.strokes.colors.max() <= 1
    assert result.image.size == (64, 64)
    # the model is handed back exactly as it was (frozen and lean only while drawing)
    assert all(p.requires_grad for p in drawer.model.parameters())


def test_views_fill_with_white_and_are_seeded(model_dir):
    with one_thread():
        drawer = Drawer(model_dir, device="cpu", config=DrawConfig(**SMALL))
        white = drawer.views(torch.ones(1, 3, 64, 64), seed=0)
        assert white.shape == (4, 3, 32, 32)  # resized to the model's input
        torch.testing.assert_close(white, torch.ones_like(white))  # perspective pads with white, like fill=1
        image = torch.rand(1, 3, 64, 64)
        a, b, c = drawer.views(image, 1), drawer.views(image, 1), drawer.views(image, 2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])  # each view has its own perspective and crop


def test_points_learning_rate_follows_upstreams_schedule(model_dir, monkeypatch):
    seen = []
    original = torch.optim.Adam.step

    def step(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    with one_thread():
        Drawer(model_dir, device="cpu", config=DrawConfig(steps=8, **SMALL)).run("a cat")
    assert seen == [1.0] * 4 + [0.4] * 2 + [0.1] * 2


def test_same_seed_same_drawing_and_the_callers_rng_is_untouched(model_dir):
    with one_thread():
        config = DrawConfig(steps=2, **SMALL)
        drawer = Drawer(model_dir, device="cpu", config=config)
        torch.manual_seed(123)
        state = torch.get_rng_state()
        a = drawer.run("a boat", seed=3)
        assert torch.equal(torch.get_rng_state(), state)
        b = Drawer(model_dir, device="cpu", config=config).run("a boat", seed=3)
        c = drawer.run("a boat", seed=4)
    assert a.svg() == b.svg() and a.svg() != c.svg()


def _interrupt_at(step_index: int):
    def stop(step, loss):
        if step == step_index:
            raise KeyboardInterrupt
    return stop


def test_ctrl_c_keeps_the_last_completed_drawing_by_default(model_dir):
    """keep="last" (upstream's, the default) holds after Ctrl-C too: the drawing after the last completed step."""
    with one_thread():
        drawer = Drawer(model_dir, device="cpu", config=DrawConfig(steps=10, **SMALL))
        session = drawer.session("a tree", seed=0)
        for _ in range(3):
            session.step()
        expected = session.strokes.detached()
        with pytest.raises(DrawingInterrupted) as info:
            drawer.run("a tree", seed=0, callback=_interrupt_at(2))
    result = info.value.result
    assert result.interrupted and result.steps_done == 3
    assert torch.equal(result.strokes.points, expected.points) and torch.equal(result.strokes.colors, expected.colors)
    assert result.best_loss == min(result.losses)


def test_ctrl_c_keeps_the_best_drawing_with_keep_best(model_dir):
    with one_thread(), pytest.raises(DrawingInterrupted) as info:
        config = DrawConfig(steps=10, keep="best", **SMALL)
        Drawer(model_dir, device="cpu", config=config).run("a tree", callback=_interrupt_at(2))
    result = info.value.result
    assert result.interrupted and result.steps_done == 3
    assert result.best_loss == min(result.losses) and result.best_step == result.losses.index(result.best_loss)
    with one_thread():
        session = Drawer(model_dir, device="cpu", config=config).session("a tree", seed=0)
        starts = []
        for _ in range(3):
            starts.append(session.strokes.detached())
            session.step()
    assert torch.equal(result.strokes.points, starts[result.best_step].points)


def test_normalize_uses_the_models_own_mean_and_std(model_dir):
    with one_thread():
        drawer = Drawer(model_dir, device="cpu", config=DrawConfig(steps=1, normalize=True, **SMALL))
    torch.testing.assert_close(drawer._mean.flatten(), torch.tensor([0.48145466, 0.4578275, 0.40821073]))
    with pytest.raises(ValueError, match="preprocess"):
        Drawer(tiny_model(32), device="cpu", config=DrawConfig(normalize=True, **SMALL))
    with pytest.raises(ValueError, match="keep"):
        DrawConfig(keep="first").validate()


def test_cli_draws_svg_png_gif_and_a_comparison_grid(model_dir, tmp_path, capsys):
    other = save_hub_folder(tmp_path / "other", size=32, seed=1)
    with one_thread():
        status = main(["draw", "a red apple", "--model", str(model_dir), "--compare", str(other), "--steps", "2",
                       "--strokes", "12", "--size", "64", "--device", "cpu", "-o", str(tmp_path / "out.svg"),
                       "--png", str(tmp_path / "out.png"), "--frames", str(tmp_path / "out.gif"), "-q"])
    assert status == 0
    for name in ("out-000.svg", "out-000-compare.svg", "out-000.png", "out-000-compare.png", "out-000.gif",
                 "out-grid.png"):
        assert (tmp_path / name).is_file(), name
    root = ET.parse(tmp_path / "out-000.svg").getroot()
    assert len(root.findall("{http://www.w3.org/2000/svg}path")) == 12
    grid = Image.open(tmp_path / "out-grid.png")
    assert grid.width >= 2 * 64 and grid.height >= 64
    assert Image.open(tmp_path / "out-000.png").size == (64, 64)


def test_cli_ctrl_c_writes_the_drawing_and_exits_130(model_dir, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = Drawer.views  # once per step

    def interrupted(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Drawer, "views", interrupted)
    with one_thread():
        status = main(["draw", "a fish", "--model", str(model_dir), "--steps", "50", "--strokes", "12", "--size", "64",
                       "--device", "cpu", "-o", str(tmp_path / "fish.svg"), "-q"])
    assert status == 130 and (tmp_path / "fish.svg").is_file()


def test_cli_rejects_bad_input(model_dir, capsys):
    assert main(["draw", " ", "--model", str(model_dir), "--device", "cpu"]) == 2
    assert "prompt is empty" in capsys.readouterr().err
    assert main(["draw", "x", "--model", str(model_dir), "--device", "cpu", "--strokes", "0"]) == 2


def test_draw_function_rejects_unknown_options():
    from clipag.adapters.clipdraw.drawer import draw

    with pytest.raises(TypeError, match="unknown drawing option"):
        draw("x", model=tiny_model(32), colour="red")
    assert dataclasses.fields(DrawConfig)


@pytest.mark.parametrize("amp, expected", [("bf16", True), ("off", False), ("auto", False)])  # auto: off on CPU
def test_amp_puts_the_encoder_under_autocast_as_in_the_other_optimisers(model_dir, amp, expected):
    seen = []
    with one_thread():
        drawer = Drawer(model_dir, device="cpu", config=DrawConfig(steps=1, amp=amp, **SMALL))
        encode = drawer.model.encode_image
        drawer.model.encode_image = lambda x: (seen.append(torch.is_autocast_enabled("cpu")), encode(x))[1]
        result = drawer.run("a fox")
    # every encoder call (the first step also measures what a view costs: clipag.scale.views) is under autocast
    assert seen and set(seen) == {expected} and result.losses[0] == result.losses[0]  # and the loss is a number
