"""CLIPDraw's views in micro-batches, and several drawings per step, give the one-call update."""

from __future__ import annotations

import pytest
import torch
from clipag.adapters.clipdraw.drawer import DrawConfig, Drawer
from generate_fixtures import one_thread, save_hub_folder

SMALL = dict(strokes=12, size=64, frame_every=0, augmentations=7, negative=True)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_hub_folder(tmp_path_factory.mktemp("tiny") / "model", size=32)


def _leaves(session):
    s = session.strokes
    return [s.points, s.widths, s.colors]


def first_update(model_dir, prompt="a red circle", seed=0, drawer=None, **knobs):
    drawer = drawer or Drawer(model_dir, device="cpu", config=DrawConfig(steps=5, **SMALL, **knobs))
    session = drawer.session(prompt, seed=seed)
    before = [t.detach().clone() for t in _leaves(session)]
    step = session.step()
    after = [t.detach().clone() for t in _leaves(session)]
    return [t.grad.clone() for t in _leaves(session)], before, after, step, drawer


def _close(a, b, tol=1e-5):
    return float((a - b).norm()) <= tol * float(b.norm())


def test_micro_batches_give_the_one_call_update(model_dir):
    with one_thread():
        grads, before, after, step, one = first_update(model_dir, max_views_per_batch=7)
        m_grads, m_before, m_after, m_step, micro = first_update(model_dir, max_views_per_batch=2)
    assert one.batcher.calls == 1 and micro.batcher.calls == 4
    assert all(torch.equal(a, b) for a, b in zip(before, m_before, strict=True))
    assert all(_close(m, g) for m, g in zip(m_grads, grads, strict=True))
    assert all(_close(m - b, a - b) for m, a, b in zip(m_after, after, before, strict=True))
    assert abs(m_step.loss - step.loss) <= 1e-5 * abs(step.loss)


def test_each_drawing_of_a_batch_gets_its_single_drawing_update(model_dir):
    with one_thread():
        drawer = Drawer(model_dir, device="cpu", config=DrawConfig(steps=5, **SMALL, max_views_per_batch=5))
        jobs = [("a red circle", 0), ("a blue square", 1)]
        sessions = [drawer.session(p, seed=s) for p, s in jobs]
        starts = [[t.detach().clone() for t in _leaves(s)] for s in sessions]
        drawer.step_many(sessions)
        for (prompt, seed), session, start in zip(jobs, sessions, starts, strict=True):
            grads, before, after, _, _ = first_update(model_dir, prompt, seed, max_views_per_batch=7)
            assert all(torch.equal(a, b) for a, b in zip(start, before, strict=True))
            assert all(_close(t.grad, g) for t, g in zip(_leaves(session), grads, strict=True))
            assert all(_close(t.detach() - b, a - b) for t, a, b in zip(_leaves(session), after, before, strict=True))
    assert drawer.batcher.calls == 3  # 14 views in calls of 5
