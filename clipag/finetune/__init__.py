"""``python -m clipag.finetune``: adversarial finetuning (CLIPAG, FARE, TeCoA) and clean CLIP pretraining.

Python entry point: ``clipag.finetune.train(argv, **overrides)`` takes the command line's flags (a list,
keyword overrides with underscores) and returns a :class:`TrainResult`. Imports stay lazy so that
``clipag.eval`` can use the synthetic source without loading the training stack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .loop import TrainResult

__all__ = ["train", "main"]


def train(argv: list[str] | None = None, **overrides: Any) -> TrainResult:
    from .loop import train as _train

    return _train(argv, **overrides)


def main(argv: list[str] | None = None) -> int:
    import sys

    from ..extras import MissingExtra

    try:
        train(sys.argv[1:] if argv is None else argv)
    except MissingExtra as e:
        raise SystemExit(f"python -m clipag.finetune: error: {e}") from None
    return 0
