"""VQGAN+CLIP's loop: prompt syntax, the loss and its stop threshold, straight-through VQ, cutouts, the CLI."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from clipag.adapters.vqgan_clip import loop
from clipag.adapters.vqgan_clip.cutouts import Cutouts
from clipag.adapters.vqgan_clip.losses import (
    Prompt,
    clamp_with_grad,
    parse_prompts,
    spherical_distance,
    split_prompt,
    vector_quantize,
)
from clipag.adapters.vqgan_clip.vqgan import build_from_config
from PIL import Image
from vqgan_fixtures import fill_like_fixture, tiny_config, write_lightning_ckpt, write_yaml

from clipag.cli import main


@pytest.fixture
def tiny_vqgan(tmp_path):
    """(yaml, ckpt) of the tiny random VQGAN in taming's formats."""
    config = tiny_config()
    model = build_from_config(config["model"])
    fill_like_fixture(model)
    return write_yaml(tmp_path / "tiny.yaml", config), write_lightning_ckpt(tmp_path / "tiny.ckpt", model.state_dict())


def tiny_generator(openai_files, tiny_vqgan, **settings) -> loop.VQGANCLIP:
    cfg = loop.VQGANCLIPConfig(**{"steps": 2, "size": (32, 32), "cutn": 4, **settings})
    return loop.VQGANCLIP(str(openai_files["state_dict"]), config=tiny_vqgan[0], checkpoint=tiny_vqgan[1],
                          device="cpu", settings=cfg)


@pytest.mark.parametrize("text, expected", [
    ("a red apple", ("a red apple", 1.0, -math.inf)),
    ("a red apple:0.5", ("a red apple", 0.5, -math.inf)),
    ("a red apple:2:0.3", ("a red apple", 2.0, 0.3)),
    ("ugly:-1", ("ugly", -1.0, -math.inf)),
    ("Portrait: a woman", ("Portrait: a woman", 1.0, -math.inf)),  # VQGAN-CLIP raises here
    ("Portrait: a woman:0.5", ("Portrait: a woman", 0.5, -math.inf)),
])
def test_prompt_syntax(text, expected):
    assert split_prompt(text) == expected


def test_prompts_split_on_pipes():
    assert parse_prompts("a castle | clouds:0.5:0.1|") == [("a castle", 1.0, -math.inf), ("clouds", 0.5, 0.1)]
    with pytest.raises(ValueError, match="no prompt"):
        parse_prompts(" | ")


def test_loss_is_weighted_spherical_distance():
    features, embed = torch.randn(6, 8), torch.randn(2, 8)
    a, b = F.normalize(features, dim=1), F.normalize(embed, dim=1)
    chord = (a[:, None] - b[None]).norm(dim=2)
    expected = 2 * torch.arcsin(chord / 2) ** 2  # 2·arcsin(‖a−b‖/2)²: half the squared great-circle angle
    torch.testing.assert_close(spherical_distance(features, embed), expected)
    assert Prompt(embed, 0.7)(features).item() == pytest.approx(0.7 * expected.mean().item(), rel=1e-5)
    assert Prompt(embed, -0.7)(features).item() == pytest.approx(-0.7 * expected.mean().item(), rel=1e-5)


def test_stop_threshold_keeps_the_value_and_drops_the_gradient_of_close_cutouts():
    embed = torch.randn(1, 8)
    features = torch.randn(4, 8, requires_grad=True)
    dists = spherical_distance(features.detach(), embed).squeeze(1)
    stop = dists.sort().values[1:3].mean().item()  # two cutouts below the threshold, two above
    loss = Prompt(embed, 1.0, stop)(features)
    assert loss.item() == pytest.approx(dists.mean().item(), rel=1e-5)  # the value is the plain loss
    loss.backward()
    below = dists < stop
    assert torch.all(features.grad[below] == 0) and torch.all(features.grad[~below].abs().sum(1) > 0)
    features.grad = None
    Prompt(embed, 1.0)(features).backward()  # without a stop every cutout pulls
    assert torch.all(features.grad.abs().sum(1) > 0)


def test_vector_quantize_is_nearest_codebook_entry_straight_through():
    codebook, x = torch.randn(32, 4), torch.randn(5, 6, 4, requires_grad=True)
    out = vector_quantize(x, codebook)
    nearest = torch.cdist(x.detach().reshape(-1, 4), codebook).argmin(1)
    torch.testing.assert_close(out.reshape(-1, 4), codebook[nearest])
    weights = torch.randn_like(out)
    (out * weights).sum().backward()
    assert torch.equal(x.grad, weights)


def test_clamp_with_grad_lets_gradients_back_into_range():
    x = torch.tensor([-0.5, 0.5, 1.5, 1.5, -0.5], requires_grad=True)
    clamp_with_grad(x, 0, 1).backward(torch.tensor([-1.0, 1.0, -1.0, 1.0, 1.0]))  # descent moves x by −grad
    # kept where descent moves x back into [0, 1] (or x is inside), zeroed where it would push x further out
    assert x.grad.tolist() == [-1.0, 1.0, 0.0, 1.0, 0.0]


def test_cutouts_match_vqgan_clips_per_cutout_loop():
    """Pooling once and expanding draws the same augmentations as VQGAN-CLIP's loop of identical pools."""
    image = torch.rand(1, 3, 40, 56)
    cut = Cutouts(32, cutn=6)
    torch.manual_seed(3)
    ours = cut(image)
    torch.manual_seed(3)
    pooled = [(F.adaptive_avg_pool2d(image, 32) + F.adaptive_max_pool2d(image, 32)) / 2 for _ in range(6)]
    batch = cut.augs(torch.cat(pooled))
    facs = batch.new_empty([6, 1, 1, 1]).uniform_(0, 0.1)
    theirs = batch + facs * torch.randn_like(batch)
    assert ours.shape == (6, 3, 32, 32)
    torch.testing.assert_close(ours, theirs)
    assert not torch.allclose(ours[0], ours[1])  # each cutout got its own augmentation
    with pytest.raises(ValueError, match="unknown augmentation 'Xx'"):
        Cutouts(32, augments=("Xx",))


def test_closed_form_hue_is_kornias_adjust_hue():
    from kornia.enhance import adjust_hue as kornia_hue

    from clipag.augment import adjust_hue

    x = torch.rand(6, 3, 20, 20, generator=torch.Generator().manual_seed(0))
    x[0] = x[0, :1]  # grey: no hue
    x[1] = 0.0  # black
    x[2, 0], x[2, 1:] = 1.0, 0.0  # pure red, at the wrap-around of the hue circle
    radians = torch.linspace(-math.pi, math.pi, 6)
    weights = torch.rand(6, 3, 20, 20)
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ref, ours = kornia_hue(a, radians), adjust_hue(b, radians)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    (ref * weights).sum().backward()
    (ours * weights).sum().backward()
    torch.testing.assert_close(b.grad, a.grad, atol=1e-4, rtol=1e-4)


def test_fast_cutouts_use_the_closed_form_hue_and_draw_the_same():
    from clipag.augment import adjust_hue

    fast, exact = Cutouts(32, cutn=5, augments=("Ji", "Af")), Cutouts(32, cutn=5, augments=("Ji", "Af"), fast_hue=False)
    assert fast.augs[0]._hue_fn is adjust_hue and exact.augs[0]._hue_fn is not adjust_hue
    image = torch.rand(1, 3, 24, 24)
    torch.manual_seed(1)
    a = fast(image)
    torch.manual_seed(1)
    b = exact(image)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("code", ["Ji", "Sh", "Gn", "Pe", "Ro", "Af", "Et", "Ts", "Cr", "Er", "Re"])
def test_every_vqgan_clip_augmentation_runs_with_gradients(code):
    """Each of VQGAN-CLIP's -aug codes, with its settings, on today's kornia."""
    image = torch.rand(1, 3, 40, 40, requires_grad=True)
    out = Cutouts(32, cutn=3, augments=(code,))(image)
    out.sum().backward()
    assert out.shape == (3, 3, 32, 32) and image.grad.abs().sum() > 0


def test_cutouts_carry_gradients_to_the_image():
    image = torch.rand(1, 3, 24, 24, requires_grad=True)
    Cutouts(32, cutn=3)(image).sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0


def test_steps_are_seeded_clamped_and_leave_the_global_rng_alone(openai_files, tiny_vqgan):
    gen = tiny_generator(openai_files, tiny_vqgan)
    state = torch.get_rng_state()
    first = gen.run("a red apple:1|a blue sky:0.5:0.2", seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    again = gen.run("a red apple:1|a blue sky:0.5:0.2", seed=1)
    other = gen.run("a red apple:1|a blue sky:0.5:0.2", seed=2)
    assert torch.equal(first.tensor, again.tensor) and first.losses == again.losses
    assert not torch.equal(first.tensor, other.tensor)
    assert first.tensor.shape == (1, 3, 32, 32) and first.steps_done == 2 and len(first.losses) == 2
    assert tiny_generator(openai_files, tiny_vqgan, frame_every=1).run("a red apple").frames[0].size == (32, 32)
    session = gen.session("a red apple", seed=0)
    start = session.z.detach().clone()
    session.step()
    assert torch.all(session.z >= gen.z_min) and torch.all(session.z <= gen.z_max)
    assert not torch.equal(session.z, start)
    assert session.optimizer.param_groups[0]["lr"] == 0.1


def test_init_image_and_image_prompt(openai_files, tiny_vqgan, tmp_path):
    Image.new("RGB", (48, 40), (200, 30, 30)).save(tmp_path / "red.png")
    gen = tiny_generator(openai_files, tiny_vqgan, init_image=str(tmp_path / "red.png"),
                         image_prompts=(f"{tmp_path / 'red.png'}:0.5",), init_weight=1.0)
    session = gen.session("", seed=0)
    with torch.no_grad():
        red = torch.tensor([200 / 255, 30 / 255, 30 / 255]).view(1, 3, 1, 1).expand(1, 3, 32, 32)
        encoded = gen.vqgan.encode(red * 2 - 1)[0]
    torch.testing.assert_close(session.z.detach(), encoded, atol=1e-2, rtol=0)  # started from the image's latent
    assert len(session.targets) == 1
    assert session.targets[0].embed.shape[0] == gen.settings.cutn  # one target row per cutout
    step = session.step()
    assert len(step.losses) == 2  # the init-weight term, then the image prompt


def _first_update(gen, prompt, seed):
    session = gen.session(prompt, seed=seed)
    start = session.z.detach().clone()
    step = session.step()
    return session.z.grad.clone(), start, session.z.detach().clone(), step


def _close(a, b, tol=1e-5):
    return float((a - b).norm()) <= tol * float(b.norm())


def test_cutouts_in_micro_batches_give_the_one_call_update(openai_files, tiny_vqgan, tmp_path):
    """Text and image prompts (one embedding row per cutout), a stop threshold and the init-weight term."""
    Image.new("RGB", (48, 40), (200, 30, 30)).save(tmp_path / "red.png")
    knobs = dict(cutn=7, image_prompts=(f"{tmp_path / 'red.png'}:0.5",), init_weight=1.0)
    one = tiny_generator(openai_files, tiny_vqgan, max_views_per_batch=7, **knobs)
    micro = tiny_generator(openai_files, tiny_vqgan, max_views_per_batch=3, **knobs)
    prompt = "a red apple:1|a blue sky:0.5:0.2"
    grad, start, after, step = _first_update(one, prompt, 1)
    m_grad, m_start, m_after, m_step = _first_update(micro, prompt, 1)
    assert one.batcher.calls == 1 and micro.batcher.calls == 3
    assert torch.equal(start, m_start) and _close(m_grad, grad) and _close(m_after - start, after - start)
    assert m_step.losses == pytest.approx(step.losses, rel=1e-5)


def test_each_image_of_a_batch_gets_its_single_image_update(openai_files, tiny_vqgan):
    gen = tiny_generator(openai_files, tiny_vqgan, cutn=5, max_views_per_batch=4)
    single = tiny_generator(openai_files, tiny_vqgan, cutn=5, max_views_per_batch=5)
    jobs = [("a red apple", 1), ("a blue sky:0.5", 2)]
    sessions = [gen.session(p, seed=s) for p, s in jobs]
    starts = [s.z.detach().clone() for s in sessions]
    gen.step_many(sessions)
    for (prompt, seed), session, start in zip(jobs, sessions, starts, strict=True):
        grad, alone_start, after, _ = _first_update(single, prompt, seed)
        assert torch.equal(start, alone_start)
        assert _close(session.z.grad, grad) and _close(session.z.detach() - start, after - start)
    assert gen.batcher.calls == 3


def test_cli_writes_png_and_gif(openai_files, tiny_vqgan, tmp_path):
    out, gif = tmp_path / "out.png", tmp_path / "out.gif"
    rc = main(["vqgan", "a red apple|a blue sky:0.5", "--model", str(openai_files["state_dict"]),
               "--vqgan-config", str(tiny_vqgan[0]), "--vqgan-checkpoint", str(tiny_vqgan[1]), "-s", "32", "32",
               "--steps", "2", "--cutn", "4", "--seed", "5", "--device", "cpu", "-o", str(out), "--frames", str(gif),
               "--frame-every", "1", "-q"])
    assert rc == 0
    assert Image.open(out).size == (32, 32)
    assert Image.open(gif).format == "GIF"  # a frame per step, then the result (equal frames merge)


def test_cli_prompt_file_makes_each_prompt_once_and_records_the_vqgan(openai_files, tiny_vqgan, tmp_path):
    import json

    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a red apple|a blue sky:0.5"}\n{"prompt": "a castle"}\n'
                       '{"prompt": "a castle", "cutn": 3, "lr": 0.2}\n')
    argv = ["vqgan", "--prompts", str(prompts), "--out", str(tmp_path / "out"), "--model",
            str(openai_files["state_dict"]), "--vqgan-config", str(tiny_vqgan[0]), "--vqgan-checkpoint",
            str(tiny_vqgan[1]), "-s", "32", "32", "--steps", "2", "--cutn", "4", "--device", "cpu", "-q"]
    assert main([*argv, "--batch", "2"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["a red apple|a blue sky:0.5", "a castle", "a castle"]
    assert [r["batch"] for r in rows] == [2, 2, 1]  # the item with its own settings is batched on its own
    assert all(Image.open(tmp_path / "out" / r["file"]).size == (32, 32) for r in rows)
    assert [(r["config"]["cutn"], r["config"]["lr"]) for r in rows] == [(4, 0.1), (4, 0.1), (3, 0.2)]
    assert all(len(r["weights_sha256"]) == 64 for r in rows)
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["identity"]["vqgan"]["checkpoint"]["name"] == tiny_vqgan[1].name
    assert main(argv) == 0  # resumed: nothing left to make


def test_cli_ctrl_c_writes_the_current_image(openai_files, tiny_vqgan, tmp_path, monkeypatch):
    real_step = loop.Session.step
    calls = []

    def step(self):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(loop.Session, "step", step)
    out = tmp_path / "stopped.png"
    rc = main(["vqgan", "a red apple", "--model", str(openai_files["state_dict"]), "--vqgan-config",
               str(tiny_vqgan[0]), "--vqgan-checkpoint", str(tiny_vqgan[1]), "-s", "32", "32", "--steps", "5",
               "--cutn", "2", "--device", "cpu", "-o", str(out), "-q"])
    assert rc == 130 and out.is_file()


def test_cli_refuses_bad_input_before_loading(tmp_path, capsys):
    assert main(["vqgan", "  "]) == 2
    assert "give a prompt" in capsys.readouterr().err
    assert main(["vqgan", "x", "--vqgan-config", str(tmp_path / "c.yaml")]) == 2
    assert "go together" in capsys.readouterr().err
    assert main(["vqgan", "x", "--vqgan", "no_such_vqgan", "--model", "not-a-clip"]) == 1
    assert "VQGAN no_such_vqgan not found; available VQGANs = [" in capsys.readouterr().err
