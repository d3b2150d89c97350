"""Projected gradient descent (PGD) in [0, 1] pixel space: the one attack training and evaluation share.

Hand-written on purpose. The maintained attack libraries (torchattacks, ART, foolbox, AutoAttack) attack
classifiers: logits and labels. CLIP finetuning attacks embedding objectives instead (the batch InfoNCE
against frozen text embeddings, FARE's distance to the original embedding), and ~20 lines of PGD are
simpler and easier to audit than adapting a classifier API to them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["NORMS", "pgd", "default_step_size", "perturbation_norm"]

NORMS = ("l2", "linf")


def default_step_size(epsilon: float, steps: int) -> float:
    """2.5·ε/steps (Madry et al. 2018): lets PGD reach the boundary from any start; equals FARE's 1/255 at
    ε=4/255 with 10 steps."""
    return 2.5 * epsilon / max(steps, 1)


def perturbation_norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample L2 or L∞ norm of a batch of perturbations."""
    flat = delta.flatten(1)
    return flat.norm(dim=1) if norm == "l2" else flat.abs().amax(dim=1)


def _project(delta: torch.Tensor, norm: str, epsilon: float) -> torch.Tensor:
    if norm == "linf":
        return delta.clamp(-epsilon, epsilon)
    factor = (epsilon / perturbation_norm(delta, "l2").clamp_min(1e-12)).clamp(max=1.0)
    return delta * factor.view(-1, *([1] * (delta.dim() - 1)))


def pgd(loss_fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, *, norm: str, epsilon: float,
        steps: int, step_size: float | None = None, random_start: bool = True,
        generator: torch.Generator | None = None) -> torch.Tensor:
    """Images in [0, 1] moved within an ε-ball (per sample) to increase ``loss_fn``.

    ``loss_fn`` maps a batch of pixels to a scalar. Summing (not averaging) over the batch keeps each
    sample's gradient independent of the batch size; the step only uses the gradient's sign (L∞) or
    direction (L2), so the loss's scale, and fp16 underflow of a mean, do not matter.
    ``torch.autograd.grad`` computes input gradients only: no weight gradient is computed or accumulated.
    ε=0 or 0 steps returns the images unchanged (clean training / evaluation).
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    x = images.detach()
    if epsilon <= 0 or steps <= 0:
        return x
    alpha = step_size if step_size is not None else default_step_size(epsilon, steps)
    delta = torch.zeros_like(x)
    if random_start:
        if norm == "linf":
            delta = (torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1) * epsilon
        else:  # a random direction at a random radius inside the ball
            direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            radius = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype) * epsilon
            delta = _project(direction, "l2", 1.0) * radius.view(-1, *([1] * (x.dim() - 1)))
        delta = (x + delta).clamp(0, 1) - x
    for _ in range(steps):
        delta.requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_fn(x + delta).float(), delta)
        with torch.no_grad():
            if norm == "linf":
                delta = delta + alpha * grad.sign()
            else:
                scale = perturbation_norm(grad, "l2").clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
                delta = delta + alpha * grad / scale
            delta = (x + _project(delta, norm, epsilon)).clamp(0, 1) - x
    return (x + delta).detach()
