"""Micro-batched backward through CLIP: any number of views, in encoder calls that fit a memory budget.

Every optimiser scores each step's views (crops, augmentations, cutouts) with CLIP and back-propagates to
its variables (pixels, strokes, a latent, a network). All views in one encoder call keep every view's
activations until the backward, so memory grows with the views. Here the views are cut loose from their graph
(``leaf = views.detach()``), encoded in chunks that each run forward *and* backward before the next starts, and
the chunks' gradients w.r.t. the views are gathered and sent once through the views' own graph. The views
themselves are made once, by one call to the optimiser's augmentations, so the random draws are those of the
one-call path, and the loss of every optimiser here is a sum over views, so the chunks' gradients add up to
the one-call gradient. Several canvases (``--batch K``) share the encoder calls the same way: each
:class:`ViewPart` keeps its own loss, and a canvas's gradient only ever comes from its own views.

(Gradient checkpointing would bound memory too, but it recomputes every forward and needs the model's
cooperation; chunking the views needs neither, which is why it is hand-written here.)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .memory import MemoryBudgetError, Meter, ViewBudget, format_size

__all__ = ["ViewPart", "ViewBatcher", "PROBE_VIEWS", "SAFETY"]

PROBE_VIEWS = 2  # views in the first micro-batch of a run, whose memory is measured
SAFETY = 0.9  # the share of a budget the planned micro-batches may fill (the rest: allocator slack, small tensors)


@dataclass
class ViewPart:
    """One canvas's views in one step, and how they score.

    ``loss(features, start, stop)`` returns the contribution of views ``start:stop`` (whose features are given)
    to the canvas's loss; summed over any split of the views it must give the full loss. ``extra``: the loss
    terms that do not go through CLIP (content, total variation...), a scalar sharing the views' graph or not.
    ``prepass(features)``: for a loss that needs every view's value first (a quantile over them); it gets the
    detached features of all views before the chunks run, and is skipped when there is only one chunk.
    """

    views: torch.Tensor
    loss: Callable[[torch.Tensor, int, int], torch.Tensor]
    extra: torch.Tensor | None = None
    prepass: Callable[[torch.Tensor], None] | None = None


class ViewBatcher:
    """Runs the encoder forward and backward over :class:`ViewPart` s within a :class:`ViewBudget`.

    ``encode(views) -> features`` is the optimiser's (normalisation, autocast, float features). ``model``'s
    tensors are what the fallback meter must not count as new memory. ``before_call`` runs before each
    micro-batch's encoder call (CUDA graphs' step marker: each micro-batch is a new replay of the graph).
    """

    def __init__(self, encode: Callable[[torch.Tensor], torch.Tensor], budget: ViewBudget, device: torch.device,
                 model: torch.nn.Module | None = None, before_call: Callable[[], None] | None = None) -> None:
        self.encode, self.budget, self.device, self.model = encode, budget, torch.device(device), model
        self.before_call = before_call
        self.meter = Meter(self.device)
        self.view_bytes: float | None = None  # measured on the first probe
        self._sizes: dict[int, int] = {}  # views in a step -> views per encoder call
        self.calls = 0  # encoder calls with gradient, for tests and benchmarks

    # -- planning -------------------------------------------------------------------------------------------
    def views_per_call(self, total: int) -> int | None:
        """Views per encoder call for a step of ``total`` views, or None while the cost of a view is unknown."""
        cap = self.budget.max_views_per_batch
        if cap is not None and self.budget.memory is None:  # a cap alone is the plan; with --memory, the smaller
            return max(1, min(total, int(cap)))
        return self._sizes.get(total)

    def _plan(self, total: int) -> int:
        """Views per call from the measured cost of a view and the memory left (called after the probe)."""
        assert self.view_bytes is not None
        limit = self.budget.memory_bytes()
        in_use = self.meter.in_use()
        room = (limit - in_use) if limit is not None else self.meter.available()
        size = math.floor(SAFETY * room / max(self.view_bytes, 1.0))
        if size < 1:
            if limit is not None:
                where = "resident (CPU)" if self.device.type == "cpu" else f"allocated on {self.device}"
                raise MemoryBudgetError(
                    f"memory budget {format_size(limit)}: the process already holds {format_size(in_use)} {where} "
                    f"(weights, canvas, views) and one view needs {format_size(self.view_bytes)} more; raise "
                    f"--memory to at least {format_size(in_use + self.view_bytes / SAFETY)}, or use a smaller "
                    "model or canvas")
            warnings.warn(f"{format_size(room)} free on {self.device} and a view needs {format_size(self.view_bytes)}: "
                          "running one view per encoder call", stacklevel=4)
            size = 1
        if self.budget.max_views_per_batch is not None:
            size = min(size, int(self.budget.max_views_per_batch))
        self._sizes[total] = min(size, total)
        return self._sizes[total]

    # -- running --------------------------------------------------------------------------------------------
    def backward(self, parts: Sequence[ViewPart]) -> list[torch.Tensor]:
        """Back-propagate every part's loss (views and extras) and return each part's detached features."""
        sizes = [part.views.shape[0] for part in parts]
        total = sum(sizes)
        per_call = self.views_per_call(total)
        if per_call is not None and per_call >= total:
            return self._one_call(parts, sizes)
        return self._chunked(parts, sizes, per_call)

    def _one_call(self, parts: Sequence[ViewPart], sizes: list[int]) -> list[torch.Tensor]:
        views = parts[0].views if len(parts) == 1 else torch.cat([part.views for part in parts])
        features = self.encode(views)
        self.calls += 1
        pieces = features.split(sizes)
        loss = sum(part.loss(piece, 0, n) for part, piece, n in zip(parts, pieces, sizes, strict=True))
        loss = loss + sum(part.extra for part in parts if part.extra is not None)
        loss.backward()
        return [piece.detach() for piece in pieces]

    def _chunk(self, leaf: torch.Tensor, parts: Sequence[ViewPart], offsets: list[int], sizes: list[int],
               start: int, stop: int) -> torch.Tensor:
        """Encoder forward and backward for views ``start:stop`` of the concatenated views."""
        if self.before_call is not None:
            self.before_call()
        features = self.encode(leaf[start:stop])
        self.calls += 1
        loss = features.new_zeros(())
        for part, offset, n in zip(parts, offsets, sizes, strict=True):
            lo, hi = max(start, offset), min(stop, offset + n)
            if lo < hi:
                loss = loss + part.loss(features[lo - start:hi - start], lo - offset, hi - offset)
        loss.backward()
        return features.detach().clone()  # a copy: a compiled encoder's next replay may reuse its output buffer

    def _probe(self, views: torch.Tensor) -> float:
        """Bytes one view adds in an encoder forward and backward, measured on ``views`` (a surrogate loss; the
        probe's gradients are thrown away, so the step's maths is untouched)."""
        with torch.no_grad():  # bring the weights in first (a loaded file is mapped lazily) and warm the kernels
            self.encode(views[:1])
        probe = views.detach().requires_grad_(True)
        existing = [*self.model.parameters(), *self.model.buffers()] if self.model is not None else []
        with self.meter.measure([*existing, probe]) as measured:
            self.encode(probe).sum().backward()
        return max(measured.bytes, 1) / probe.shape[0]

    def _chunked(self, parts: Sequence[ViewPart], sizes: list[int], per_call: int | None) -> list[torch.Tensor]:
        leaf = torch.cat([part.views.detach() for part in parts]).requires_grad_(True)
        total = leaf.shape[0]
        offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        if per_call is None:  # the first step of a run: measure what a view costs, then plan
            if self.view_bytes is None:
                self.view_bytes = self._probe(leaf[:PROBE_VIEWS])
            per_call = self._plan(total)
        if any(part.prepass is not None for part in parts):
            with torch.no_grad():
                everything = torch.cat([self.encode(leaf[a:a + per_call]) for a in range(0, total, per_call)])
            for part, piece in zip(parts, everything.split(sizes), strict=True):
                if part.prepass is not None:
                    part.prepass(piece)
        done = [self._chunk(leaf, parts, offsets, sizes, a, min(a + per_call, total))
                for a in range(0, total, per_call)]
        grads = leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
        tensors, grad_tensors = [], []
        for part, piece in zip(parts, grads.split(sizes), strict=True):
            if part.views.requires_grad:
                tensors.append(part.views)
                grad_tensors.append(piece)
            if part.extra is not None and part.extra.requires_grad:
                tensors.append(part.extra)
                grad_tensors.append(torch.ones_like(part.extra))
        if tensors:
            torch.autograd.backward(tensors, grad_tensors)
        return list(torch.cat(done).split(sizes))
