"""VQGAN+CLIP's objective: weighted prompts with a stop threshold, and the gradient tricks it relies on.

``replace_grad(forward, backward)`` returns ``forward`` but sends its gradient to ``backward``. It gives the
straight-through vector quantizer (the codebook entry forward, the gradient to the continuous latent) and the
prompt's stop threshold (the loss value forward, no gradient from cutouts already closer than ``stop``).
``clamp_with_grad`` clamps but still lets gradients through that would move a value back into range.
These are autograd one-liners no maintained library ships, hence written here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["replace_grad", "clamp_with_grad", "vector_quantize", "split_prompt", "parse_prompts", "Prompt",
           "spherical_distance"]


class _ReplaceGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_forward: torch.Tensor, x_backward: torch.Tensor) -> torch.Tensor:
        ctx.shape = x_backward.shape
        return x_forward

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[None, torch.Tensor]:
        return None, grad.sum_to_size(ctx.shape)


class _ClampWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, low: float, high: float) -> torch.Tensor:
        ctx.low, ctx.high = low, high
        ctx.save_for_backward(x)
        return x.clamp(low, high)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (x,) = ctx.saved_tensors
        return grad * (grad * (x - x.clamp(ctx.low, ctx.high)) >= 0), None, None


def replace_grad(x_forward: torch.Tensor, x_backward: torch.Tensor) -> torch.Tensor:
    """``x_forward``'s value, ``x_backward``'s gradient path."""
    return _ReplaceGrad.apply(x_forward, x_backward)


def clamp_with_grad(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """``x.clamp(low, high)`` whose gradient is kept where following it would bring ``x`` back into range."""
    return _ClampWithGrad.apply(x, low, high)


def vector_quantize(x: torch.Tensor, codebook: torch.Tensor, codebook_sq: torch.Tensor | None = None) -> torch.Tensor:
    """Each row of ``x`` (..., d) replaced by its nearest codebook row, straight-through.

    The same nearest neighbour as VQGAN-CLIP's one-hot matmul, picked by indexing (no (N, n_codes) one-hot).
    ``codebook_sq`` (the rows' squared norms) can be passed in once per run.
    """
    sq = codebook.pow(2).sum(1) if codebook_sq is None else codebook_sq
    d = x.pow(2).sum(-1, keepdim=True) + sq - 2 * x @ codebook.t()
    return replace_grad(codebook[d.argmin(-1)], x)


def spherical_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared great-circle distance between rows of ``a`` (N, D) and ``b`` (M, D), both normalized: (N, M)."""
    a, b = F.normalize(a.unsqueeze(1), dim=2), F.normalize(b.unsqueeze(0), dim=2)
    return a.sub(b).norm(dim=2).div(2).arcsin().pow(2).mul(2)


class Prompt(nn.Module):
    """One target embedding (text, image or noise) with a weight and a stop distance.

    Loss = |w| · mean(d), d = sign(w) · spherical distance of each cutout's features to the embedding rows. A
    negative weight pushes away. Once a cutout is closer than ``stop`` it gives no more gradient (its value still
    counts in the loss).
    """

    def __init__(self, embed: torch.Tensor, weight: float = 1.0, stop: float = float("-inf")) -> None:
        super().__init__()
        self.register_buffer("embed", embed)
        self.register_buffer("weight", torch.as_tensor(weight, dtype=torch.float32))
        self.register_buffer("stop", torch.as_tensor(stop, dtype=torch.float32))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        dists = spherical_distance(features, self.embed) * self.weight.sign()
        return self.weight.abs() * replace_grad(dists, torch.maximum(dists, self.stop)).mean()

    def partial(self, features: torch.Tensor, cutouts: int) -> torch.Tensor:
        """The share of :meth:`forward`'s loss over ``cutouts`` cutouts that these cutouts' ``features`` make (the
        mean written as a sum, so micro-batches of cutouts add up to it)."""
        dists = spherical_distance(features, self.embed) * self.weight.sign()
        total = replace_grad(dists, torch.maximum(dists, self.stop)).sum()
        return self.weight.abs() * (total / (cutouts * self.embed.shape[0]))


def split_prompt(prompt: str) -> tuple[str, float, float]:
    """``"text:weight:stop"`` → ``(text, weight, stop)``; weight defaults to 1 and stop to −inf.

    Read from the right, as VQGAN-CLIP does. Where VQGAN-CLIP fails on a colon inside the text
    (``"Portrait: a woman"``), a part that is not a number is kept as text.
    """
    text, numbers = prompt, []
    while len(numbers) < 2 and ":" in text:
        head, tail = text.rsplit(":", 1)
        try:
            value = float(tail)
        except ValueError:
            break
        text, numbers = head, [value, *numbers]
    weight = numbers[0] if numbers else 1.0
    stop = numbers[1] if len(numbers) == 2 else float("-inf")
    return text, weight, stop


def parse_prompts(prompts: str | Sequence[str]) -> list[tuple[str, float, float]]:
    """``"a|b:0.5"`` (VQGAN-CLIP's ``-p``) or a list of such strings → ``[(text, weight, stop), ...]``."""
    items = prompts.split("|") if isinstance(prompts, str) else [p for item in prompts for p in item.split("|")]
    parsed = [split_prompt(item.strip()) for item in items if item.strip()]
    if not parsed:
        raise ValueError("no prompt given: describe the image, e.g. \"a castle in the clouds\" or \"a|b:0.5\"")
    return parsed
