"""Is the run learning? The signals of a collapsed run, and a loud warning when the collapse lasts.

A run can exit 0 and export weights that learned nothing. Measured here (clean pretraining of
``clipag-tiny-32px`` on 32 px grayscale digits at a high LR with a short warmup): the image embeddings start
almost input-independent (mean pairwise cosine 0.999), so within the first ~20 steps the text tower's best
move is to put every class prompt on one direction; once the texts coincide the image gradient is exactly
zero, and the run stays at the chance loss to the end (see docs/finetune.md, "When a run is not learning").

The watch reads per-interval averages the loop logs anyway (loss, batch accuracy, their chance values, and
the mean pairwise cosine of the batch's image and text embeddings). It warns once a collapse has lasted
``window`` steps after warmup, reports recovery, and never stops the run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from .args import from_scratch

__all__ = ["mean_pairwise_cosine", "LearningWatch", "suggestions", "SIGNALS", "LOSS_MARGIN", "ACC_MARGIN",
           "COLLAPSED_COSINE"]

SIGNALS = ("image_similarity", "text_similarity", "chance_loss", "chance_acc")  # AdversarialStep's, in order
LOSS_MARGIN = 0.05  # a loss above (1 - 5%) of its chance value has not left chance
ACC_MARGIN = 0.05  # batch accuracy within 5 points of the best image-blind answer's
COLLAPSED_COSINE = 0.99  # mean pairwise cosine above this: the embeddings point one way (stuck runs: 0.9999)


def mean_pairwise_cosine(features: torch.Tensor) -> torch.Tensor:
    """Mean cosine over distinct pairs of rows: 1 when every row points the same way, about 0 when spread out.

    ``|Σ uᵢ|² = n + Σ_{i≠j} uᵢ·uⱼ`` for unit rows, so this costs O(n·d), not an n×n matrix. NaN for one row.
    """
    n = features.shape[0]
    if n < 2:
        return torch.full((), float("nan"), device=features.device)
    total = F.normalize(features.detach().float(), dim=-1).sum(0)
    return (total @ total - n) / (n * (n - 1))


@dataclass
class Episode:
    start: int  # first step of the collapse
    symptoms: list[str]
    end: int | None = None  # the step it was seen gone, None while it lasts


@dataclass
class LearningWatch:
    """Judges each logged interval; :meth:`update` returns the warning text when a collapse first lasts ``window``
    steps, :meth:`summary` what the end of the run should repeat (``None`` when nothing went wrong)."""

    window: int  # steps a collapse must last before the warning
    start: int = 0  # steps not judged (LR warmup: everything starts near chance)
    hints: list[str] = field(default_factory=list)  # what to try, fitted to the run's flags
    episodes: list[Episode] = field(default_factory=list)
    _since: int | None = None
    _last_step: int = 0

    def symptoms(self, metrics: dict[str, Any]) -> list[str]:
        """What in one interval's averages says "not learning"; empty when the run looks healthy."""
        seen = []
        chance_loss, chance_acc = metrics.get("chance_loss", math.nan), metrics.get("chance_acc", math.nan)
        if math.isfinite(chance_loss) and math.isfinite(chance_acc):
            if metrics["loss"] >= (1 - LOSS_MARGIN) * chance_loss and metrics["acc"] <= chance_acc + ACC_MARGIN:
                seen.append(f"loss {metrics['loss']:.4f} is not below its chance value {chance_loss:.4f} (what "
                            f"ignoring the image scores) and batch accuracy {metrics['acc']:.3f} is at chance "
                            f"({chance_acc:.3f})")
        image, text = metrics.get("image_similarity", math.nan), metrics.get("text_similarity", math.nan)
        if seen or not math.isfinite(chance_loss):  # with a chance value, collapse only explains a stuck loss
            if image >= COLLAPSED_COSINE:
                seen.append(f"image embeddings collapsed to one direction (mean pairwise cosine {image:.5f})")
            if seen and text >= COLLAPSED_COSINE:
                seen.append(f"text embeddings collapsed to one direction (mean pairwise cosine {text:.5f})")
        return seen

    def update(self, step: int, metrics: dict[str, Any]) -> str | None:
        previous, self._last_step = self._last_step, step
        seen = self.symptoms(metrics) if step > self.start else []
        active = self.episodes[-1] if self.episodes and self.episodes[-1].end is None else None
        if not seen:
            self._since = None
            if active:
                active.end = step
            return None
        if self._since is None:
            self._since = max(previous, self.start)
        if active:
            active.symptoms = seen
            return None
        if step - self._since < self.window:
            return None
        self.episodes.append(Episode(self._since, seen))
        return self.message(self.episodes[-1], step)

    @property
    def collapsed(self) -> bool:
        """A confirmed collapse is going on now."""
        return bool(self.episodes) and self.episodes[-1].end is None

    def message(self, episode: Episode, step: int) -> str:
        lines = [f"NOT LEARNING: from step {episode.start} to step {step}, " + "; ".join(episode.symptoms) + ".",
                 "  The run continues (it is never stopped), but weights from here have learned nothing."]
        lines += [f"  Try: {hint}" for hint in self.hints]
        return "\n".join(lines)

    def summary(self) -> str | None:
        if not self.episodes:
            return None
        last = self.episodes[-1]
        if last.end is None:
            return "this run did not learn. " + self.message(last, self._last_step)
        spans = ", ".join(f"{e.start}-{e.end}" for e in self.episodes)
        return f"the run was stuck at chance during steps {spans}, then left it: check the final loss and accuracy."


def suggestions(args: Any, pool_type: str | None = None) -> list[str]:
    """What to try, fitted to the run's flags (``args`` from ``finetune.args.parse_args``) and the image tower's
    pooling (open_clip's ``visual.pool_type``)."""
    hints = []
    scratch = from_scratch(args)
    if args.lr == 0:
        hints.append("a --lr above 0: with --lr 0 nothing is trained.")
    elif scratch and args.unlock_text:
        if pool_type == "tok":
            hints.append('a config that pools the patch tokens ("pool_type": "avg" in vision_cfg, as the bundled '
                         "clipag-tiny-32px does): a class token starts out nearly blind to the input.")
        hints.append("a lower --lr or a longer --warmup (about 20% of --steps): at a high LR the text tower can "
                     "put every caption on one direction within the first steps, while the image embeddings are "
                     "still alike, and stay there (no image gradient is left). See docs/finetune.md.")
    elif scratch:
        hints.append("--pretrained WEIGHTS, or --unlock-text to pretrain from scratch: a random, frozen text tower "
                     "gives the image tower poor targets.")
    else:
        hints.append("a lower --lr or a longer --warmup.")
    if args.epsilon > 0:
        hints.append("a smaller --epsilon or a longer --epsilon-warmup: an attack too strong for the model keeps it "
                     "at chance.")
    hints.append("a larger --batch-size; and check the data: do the images differ between classes, and do the "
                 "captions say what is in them (--templates, classnames.txt)?")
    return hints
