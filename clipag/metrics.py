"""Metrics sinks shared by training and evaluation: a JSONL file (always) and TensorBoard (optional)."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

__all__ = ["MetricsWriter"]


def _plain(value: Any) -> Any:
    """JSON-safe scalars: tensors become numbers, NaN/inf become strings JSON can hold."""
    if hasattr(value, "item") and getattr(value, "numel", lambda: 1)() == 1:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsWriter:
    """Appends one JSON object per call to ``path``; mirrors numeric values to TensorBoard if asked.

    Lines are flushed at once so a killed run keeps everything it logged; a resumed run appends (``clipag.finetune``
    first moves aside what the interrupted run logged after its last checkpoint).
    """

    def __init__(self, path: str | os.PathLike | None, tensorboard_dir: str | os.PathLike | None = None,
                 purge_step: int | None = None) -> None:
        """``purge_step``: a resumed run's first step; TensorBoard hides what earlier writers logged from there on."""
        self.path = Path(path) if path else None
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tb = None
        if tensorboard_dir:
            from .extras import import_module

            tensorboard = import_module("torch.utils.tensorboard", "train", "--tensorboard", package="tensorboard")
            self.tb = tensorboard.SummaryWriter(str(tensorboard_dir), purge_step=purge_step)

    def write(self, record: dict[str, Any], step: int | None = None) -> None:
        record = {k: _plain(v) for k, v in record.items()}
        if step is not None:
            record = {"step": step, **record}
        record.setdefault("time", round(time.time(), 3))
        if self.path:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if isinstance(value, int | float) and not isinstance(value, bool) and key not in ("step", "time"):
                    self.tb.add_scalar(key, value, global_step=step)
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
