"""CLIPStyler's crops in micro-batches, and several stylings per step, give the one-call StyleNet update."""

from __future__ import annotations

import torch
from clipag.adapters.clipstyler.styler import StyleConfig, Styler
from clipag.adapters.clipstyler.vgg import VGGContent


def small_config(**overrides) -> StyleConfig:
    return StyleConfig(**{"steps": 2, "size": (64, 64), "crops": 6, "crop_size": 32, "threshold": 0.3, **overrides})


def first_update(styler, photo, text="an oil painting", seed=3):
    session = styler.session(photo, text, seed)
    before = [p.detach().clone() for p in session.net.parameters()]
    step = session.step()
    grads = [p.grad.clone() for p in session.net.parameters()]
    return grads, before, [p.detach().clone() for p in session.net.parameters()], step


def _flat(tensors):
    return torch.cat([t.flatten() for t in tensors])


def _close(a, b, tol=1e-5):
    return float((a - b).norm()) <= tol * float(b.norm())


def _same_update(grads, m_grads, after, m_after, before):
    """The StyleNet's whole gradient agrees within 1e-5, and so does the update wherever the gradient is above its
    rounding noise. Adam's first step is ``lr * g / (|g| + eps)``, about ``lr * sign(g)`` whatever g's size, so an
    element whose gradient is at the noise floor (here ~0.1% of the elements, |g| < 1e-4 of the rms: the biases of
    the convs before an InstanceNorm, exactly zero in exact maths, and a few near-cancelling weights) moves by
    ``±lr`` on a coin flip of its rounding, on any two summation orders alike; those cannot be compared."""
    g, u, m_u = _flat(grads), _flat(after) - _flat(before), _flat(m_after) - _flat(before)
    assert float(g.norm()) > 0 and _close(_flat(m_grads), g)
    signal = g.abs() > 1e-3 * g.pow(2).mean().sqrt()
    assert float(signal.float().mean()) > 0.99
    assert _close(m_u[signal], u[signal])


def test_micro_batches_give_the_one_call_update(models, photo):
    vgg = VGGContent.random()
    one = Styler(str(models["a"]), device="cpu", vgg=vgg, config=small_config(max_views_per_batch=7))
    micro = Styler(str(models["a"]), device="cpu", vgg=vgg, config=small_config(max_views_per_batch=2))
    grads, before, after, step = first_update(one, photo)
    m_grads, m_before, m_after, m_step = first_update(micro, photo)
    assert one.batcher.calls == 1 and micro.batcher.calls == 4  # the whole view + 6 crops
    assert all(torch.equal(a, b) for a, b in zip(before, m_before, strict=True))
    _same_update(grads, m_grads, after, m_after, before)
    assert abs(m_step.loss - step.loss) <= 1e-5 * abs(step.loss)
    assert all(abs(m_step.terms[k] - step.terms[k]) <= 1e-5 * abs(step.terms[k]) + 1e-12 for k in step.terms)


def test_each_styling_of_a_batch_gets_its_single_styling_update(models, photo):
    vgg = VGGContent.random()
    styler = Styler(str(models["a"]), device="cpu", vgg=vgg, config=small_config(max_views_per_batch=5))
    single = Styler(str(models["a"]), device="cpu", vgg=vgg, config=small_config(max_views_per_batch=7))
    jobs = [("an oil painting", 3), ("fire", 4)]
    sessions = [styler.session(photo, text, seed) for text, seed in jobs]
    starts = [[p.detach().clone() for p in s.net.parameters()] for s in sessions]
    styler.step_many(sessions)
    for (text, seed), session, start in zip(jobs, sessions, starts, strict=True):
        grads, before, after, _ = first_update(single, photo, text, seed)
        assert all(torch.equal(a, b) for a, b in zip(start, before, strict=True))
        _same_update(grads, [p.grad for p in session.net.parameters()], after,
                     [p.detach() for p in session.net.parameters()], before)
    assert styler.batcher.calls == 3  # 14 views in calls of 5
