"""The step loop every clipag optimiser shares: a progress bar, early stopping, and Ctrl-C keeping the result.

A session is anything with ``step()`` (one optimisation step, returning a record of it) and
``result(interrupted=False)`` (what the run has made so far). Generation, VQGAN+CLIP and CLIPStyler run theirs here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run; ``.result`` holds what the run had made. Each optimiser raises its own subclass."""

    def __init__(self, result: Any) -> None:
        steps = getattr(result, "steps_done", None)
        super().__init__("interrupted" if steps is None else f"interrupted after {steps} steps")
        self.result = result


class Session(Protocol):
    def step(self) -> Any: ...

    def result(self, interrupted: bool = False) -> Any: ...


def run_steps(session: Session, steps: int, *, label: str, progress: bool,
              callback: Callable[[Any], bool | None] | None, interrupted: type[Interrupted],
              postfix: Callable[[Any], dict[str, str]]) -> Any:
    """Run ``steps`` steps of ``session`` and return its result.

    ``callback(step)`` returning True stops early; ``postfix(step)`` is shown on the bar. Ctrl-C raises
    ``interrupted(result)`` (an :class:`Interrupted`, so a ``KeyboardInterrupt``, carrying the result as it was),
    so a caller that does not catch it still stops as Python would.
    """
    from tqdm.auto import tqdm

    bar = tqdm(range(steps), desc=label[:40], disable=not progress, leave=True)
    try:
        for _ in bar:
            step = session.step()
            bar.set_postfix(postfix(step), refresh=False)
            if callback is not None and callback(step):
                break
    except KeyboardInterrupt:
        raise interrupted(session.result(interrupted=True)) from None
    finally:
        bar.close()
    return session.result()
