"""Memory budgets for the views an optimiser sends through CLIP, and how to measure what one view costs.

A view's cost is the activation memory its encoder pass keeps until its backward, plus the pass's transient
buffers. It depends on the architecture, the view size, the device, autocast and which attention kernel runs,
so it is *measured* on a small probe micro-batch in the first step (:class:`Meter`), never taken from a table.

The meter reads a high-water mark, and never resets it (a caller's own peak counters stay right):

* CUDA: the caching allocator's peak (``max_memory_allocated``), against the memory allocated at the start;
* a Linux CPU: the process's resident peak (``VmHWM``), against the resident size at the start, read after
  ``malloc_trim`` has handed freed heap back to the OS, so memory glibc kept does not hide the probe's peak.

A probe that sets a new mark is measured exactly. One that stays below an earlier peak is bounded by it; the
smaller of that bound and the saved-tensor estimate is used. The estimate is the bytes autograd saves for the
backward, times 1.5 for the pass's transients (peak/saved measured 1.40-1.41 on this Linux CPU for ViT-B/32 and
ViT-L/14 by the mark above). Where there is no mark to read (a CPU other than Linux's), it is the measure.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

__all__ = ["ViewBudget", "MemoryBudgetError", "parse_size", "format_size", "Meter", "resident_bytes"]

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12,
          "tb": 10**12, "ki": 2**10, "kib": 2**10, "mi": 2**20, "mib": 2**20, "gi": 2**30, "gib": 2**30,
          "ti": 2**40, "tib": 2**40}
SAVED_TO_PEAK = 1.5  # the fallback meter's allowance for transients (measured 1.4 on this CPU, see above)


class MemoryBudgetError(MemoryError, RuntimeError):
    """A memory budget that cannot hold even one view on top of what the process already holds (a RuntimeError
    too, so the ``clipag`` command reports it as a message, not a traceback)."""


def parse_size(size: str | int | float) -> int:
    """``"8GB"`` (10⁹), ``"8GiB"`` (2³⁰), ``"512M"``, ``"1.5G"`` or a number of bytes → bytes."""
    if isinstance(size, int | float) and not isinstance(size, bool):
        value = float(size)
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(size))
        if not match or match.group(2).lower() not in _UNITS:
            raise ValueError(f"memory size {size!r}: expected a number with a unit, e.g. 8GB, 8GiB or 500MB")
        value = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"memory size {size!r} must be positive")
    return int(value)


def format_size(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


@dataclass
class ViewBudget:
    """How many views go through CLIP in one call. Every optimiser's config inherits these two knobs; neither
    changes the maths (the micro-batches' gradients add up to the one-call gradient).

    ``max_views_per_batch``: at most this many views per encoder call. ``memory``: a size (``"8GB"``) the
    process must stay within: its resident memory on a CPU (weights included), the allocated memory of the
    device on CUDA. With neither, the views per call follow the device's free memory.
    """

    max_views_per_batch: int | None = None
    memory: str | None = None

    def validate_budget(self) -> None:
        if self.max_views_per_batch is not None and (isinstance(self.max_views_per_batch, bool)
                                                     or int(self.max_views_per_batch) < 1):
            raise ValueError(f"max_views_per_batch must be >= 1, got {self.max_views_per_batch!r}")
        if self.memory is not None:
            parse_size(self.memory)

    def memory_bytes(self) -> int | None:
        return None if self.memory is None else parse_size(self.memory)


def resident_bytes() -> int:
    """This process's resident memory now."""
    import psutil

    return int(psutil.Process().memory_info().rss)


def _malloc_trim() -> None:
    """Give freed heap pages back to the OS (glibc), so the resident size is what is really in use."""
    libc_name = ctypes.util.find_library("c")
    with contextlib.suppress(OSError, AttributeError, TypeError):
        ctypes.CDLL(libc_name).malloc_trim(0)


def _read_hwm() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class _Probe:
    bytes: int = 0


class Meter:
    """What memory a device has and what a piece of work costs on it (see the module docstring)."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"

    def in_use(self) -> int:
        """What the budget counts now: allocated device memory on CUDA, resident memory (after a trim) on a CPU."""
        if self.cuda:
            return torch.cuda.memory_allocated(self.device)
        if self.device.type == "cpu":
            _malloc_trim()
        return resident_bytes()

    def available(self) -> int:
        """What more could be used now: the device's free memory plus what PyTorch has cached but not in use
        (CUDA), or the system's available memory (CPU)."""
        if self.cuda:
            free, _ = torch.cuda.mem_get_info(self.device)
            return int(free + torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device))
        import psutil

        return int(psutil.virtual_memory().available)

    def _marks(self, trim: bool = True) -> tuple[int, int] | None:
        """``(in use now, high-water mark)``, or None where there is no high-water mark to read. Neither is reset:
        the caller's own peak counters stay as they were."""
        if self.cuda:
            torch.cuda.synchronize(self.device)
            return torch.cuda.memory_allocated(self.device), torch.cuda.max_memory_allocated(self.device)
        if self.device.type != "cpu" or _read_hwm() is None:
            return None
        if trim:
            _malloc_trim()
        return resident_bytes(), _read_hwm() or 0

    @contextlib.contextmanager
    def measure(self, existing: Iterable[torch.Tensor] = ()) -> Iterator[_Probe]:
        """``with meter.measure(model.parameters()) as probe: work()`` sets ``probe.bytes`` to the work's peak memory
        above the start. ``existing``: tensors that are already allocated (the fallback meter must not count them
        when the work saves them for its backward, as a linear layer saves its weight)."""
        probe = _Probe()
        marks = self._marks()
        if marks is not None:
            start, before = marks
        skip = {t.untyped_storage().data_ptr() for t in existing}
        saved: dict[int, int] = {}

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in skip:
                saved.setdefault(storage.data_ptr(), storage.nbytes())
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            yield probe
        estimate = int(SAVED_TO_PEAK * sum(saved.values()))
        if marks is None:
            probe.bytes = estimate
            return
        after = self._marks(trim=False)[1]
        if after > before:  # a new high-water mark: the probe's own peak, exactly
            probe.bytes = after - start
        else:  # below an earlier peak, which bounds it from above; the saved-tensor estimate is usually closer
            probe.bytes = max(0, before - start) if estimate <= 0 else min(max(0, before - start), estimate)
