"""Generation at scale: bounded memory (views in micro-batches), prompt files that resume, every GPU of a cluster.

* :mod:`.memory`, :mod:`.views`: the views every optimiser scores, in encoder calls that fit a memory budget;
* :mod:`.items`, :mod:`.manifest`, :mod:`.runner`: ``--prompts FILE --out DIR`` for generate, draw, vqgan and style;
* :mod:`.cli`: those options, registered on each command by one call.

Names are imported on first use, so ``clipag --help`` does not load torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

__all__ = ["ViewBudget", "ViewBatcher", "ViewPart", "parse_size"]

_HOMES = {"ViewBudget": "memory", "parse_size": "memory", "ViewBatcher": "views", "ViewPart": "views"}

if TYPE_CHECKING:
    from .memory import ViewBudget, parse_size
    from .views import ViewBatcher, ViewPart

__getattr__, __dir__ = lazy_exports(__name__, _HOMES)
