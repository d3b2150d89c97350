"""Views in micro-batches and several canvases per step give generation's one-call maths (``clipag.scale.views``)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from generate_fixtures import one_thread, tiny_model

from clipag.generation import GenerateConfig, Generator
from clipag.scale.memory import MemoryBudgetError

VIEWS = dict(global_views=5, patch_views=6, frame_every=0)  # 11 views: chunks of 3 cross the global/patch border


@pytest.fixture(autouse=True)
def _single_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def first_update(model, prompt="a red apple", seed=3, **knobs):
    """(gradient after clipping, canvas before, canvas after, recorded losses, encoder calls) of one step."""
    gen = Generator(model, prior=None, config=GenerateConfig(**{**VIEWS, **knobs}))
    session = gen.session(prompt, seed)
    before = session.x.detach().clone()
    step = session.step()
    return session.x.grad.clone(), before, session.x.detach().clone(), step, gen.batcher.calls, session


@pytest.mark.parametrize("knobs", [{}, {"rejection": 0.5}, {"grad_clip": 0.0}], ids=["notebook", "rejection",
                                                                                      "no-clip"])
def test_micro_batches_give_the_one_call_update(model, knobs):
    grad, x0, x1, step, calls, s1 = first_update(model, max_views_per_batch=11, **knobs)
    m_grad, m_x0, m_x1, m_step, m_calls, s2 = first_update(model, max_views_per_batch=3, **knobs)
    assert calls == 1 and m_calls == 4  # 11 views: one call, or 3+3+3+2
    assert torch.equal(x0, m_x0)
    assert _relative(m_grad, grad) < 1e-5
    assert _relative(m_x1 - x0, x1 - x0) < 1e-5  # the update itself, not just the canvas
    assert abs(m_step.loss - step.loss) <= 1e-5 * abs(step.loss)
    assert torch.equal(s1._gen.get_state(), s2._gen.get_state())  # the same random draws, the same number of them


def test_the_probe_plans_from_a_memory_budget_and_keeps_the_maths(model):
    grad, x0, x1, *_ = first_update(model, max_views_per_batch=11)
    p_grad, _, p_x1, _, calls, session = first_update(model, memory="64GB")
    batcher = session.generator.batcher
    assert batcher.view_bytes is not None and batcher.view_bytes > 0  # measured, not assumed
    assert calls >= 1 and _relative(p_grad, grad) < 1e-5 and _relative(p_x1 - x0, x1 - x0) < 1e-5


def test_a_budget_below_one_view_is_a_clear_error(model):
    gen = Generator(model, prior=None, config=GenerateConfig(**VIEWS, memory="1MB"))
    with pytest.raises(MemoryBudgetError, match=r"memory budget 0\.00 GB: the process already holds .* raise --memory"):
        gen.session("a red apple").step()


def test_bad_budgets_are_refused_up_front(model):
    for bad in (dict(max_views_per_batch=0), dict(memory="eight gigs"), dict(memory="-1GB")):
        with pytest.raises(ValueError):
            Generator(model, prior=None, config=GenerateConfig(**VIEWS, **bad))


@pytest.mark.parametrize("per_call", [None, 7], ids=["one-call", "micro-batches"])
def test_each_canvas_of_a_batch_gets_its_single_image_update(model, per_call):
    """--batch K: canvases share encoder calls but keep their own optimizer, clipping, threshold and randomness."""
    config = GenerateConfig(**VIEWS, max_views_per_batch=per_call or 33)
    gen = Generator(model, prior=None, config=config)
    jobs = [("a red apple", 3), ("a blue car", 4), ("a red apple", 5)]
    together = [gen.session(p, s) for p, s in jobs]
    starts = [s.x.detach().clone() for s in together]
    steps = gen.step_many(together)
    alone_gen = Generator(model, prior=None, config=dataclasses.replace(config, max_views_per_batch=11))
    for (prompt, seed), session, start, step in zip(jobs, together, starts, steps, strict=True):
        grad, x0, x1, single, *_ = first_update(model, prompt, seed, max_views_per_batch=11)
        assert torch.equal(start, x0)
        assert _relative(session.x.grad, grad) < 1e-5
        assert _relative(session.x.detach() - x0, x1 - x0) < 1e-5
        assert abs(step.loss - single.loss) <= 1e-5 * abs(single.loss)
    assert alone_gen.batcher.calls == 0 and gen.batcher.calls == (1 if per_call is None else 5)
    second = gen.step_many(together)  # and the next steps keep going independently
    assert [s.step for s in second] == [1, 1, 1]


def test_compiled_encoder_in_micro_batches_keeps_the_maths(model, monkeypatch):
    """torch.compile sees micro-batches of other sizes (3 and 2 views here); aot_eager traces forward and backward
    as inductor would, without a C++ build per graph."""
    import clipag.generation as G

    monkeypatch.setattr(G, "_compiled", lambda encode, device: torch.compile(encode, dynamic=False,
                                                                             backend="aot_eager"))
    torch._dynamo.reset()
    grad, x0, x1, *_ = first_update(model, max_views_per_batch=11)
    c_grad, _, c_x1, _, calls, _ = first_update(model, max_views_per_batch=3, compile=True)
    assert calls == 4 and _relative(c_grad, grad) < 1e-5 and _relative(c_x1 - x0, x1 - x0) < 1e-5


def test_the_command_reports_a_budget_too_small_as_a_message(tmp_path, capsys):
    from generate_fixtures import save_hub_folder

    from clipag.cli import main

    folder = save_hub_folder(tmp_path / "model")
    assert main(["generate", "x", "--model", str(folder), "--memory", "1MB", "--no-prior", "--steps", "2",
                 "--views", "2", "--patches", "2", "--device", "cpu", "-q", "-o", str(tmp_path / "x.png")]) == 1
    assert "clipag: error: memory budget 0.00 GB: the process already holds" in capsys.readouterr().err
