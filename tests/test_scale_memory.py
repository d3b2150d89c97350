"""The view budget: sizes, what the meter measures, and how micro-batches are planned from a measured view."""

from __future__ import annotations

import pytest
import torch

import clipag.scale.memory as memory
from clipag.scale.memory import MemoryBudgetError, Meter, ViewBudget, parse_size
from clipag.scale.views import SAFETY, ViewBatcher


@pytest.mark.parametrize("text, expected", [("8GB", 8 * 10**9), ("8GiB", 8 * 2**30), ("1.5G", 1_500_000_000),
                                            ("512MiB", 512 * 2**20), (" 700 mb ", 700 * 10**6), (1024, 1024)])
def test_sizes(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["8 gigs", "-1GB", "0", "GB", "", "1e9"])
def test_bad_sizes(text):
    with pytest.raises(ValueError, match="memory size"):
        parse_size(text)


def test_the_cpu_meter_never_measures_less_than_the_work_holds():
    with Meter("cpu").measure() as probe:
        held = torch.ones(50_000_000)  # 200 MB, written
    assert probe.bytes >= held.numel() * 4


def test_without_a_resident_peak_the_saved_tensors_are_counted(monkeypatch):
    monkeypatch.setattr(memory, "_read_hwm", lambda: None)
    weight = torch.randn(100, 1000)
    x = torch.randn(8, 100, requires_grad=True)
    with Meter("cpu").measure([weight, x]) as probe:
        (x @ weight).relu().sum().backward()  # saves x and the weight (not counted: they exist) and relu's output
    assert probe.bytes == int(memory.SAVED_TO_PEAK * 8 * 1000 * 4)


class FakeMeter:
    def __init__(self, in_use: int, available: int) -> None:
        self._in_use, self._available = in_use, available

    def in_use(self) -> int:
        return self._in_use

    def available(self) -> int:
        return self._available


@pytest.mark.parametrize("memory_limit, expected", [(10 * 10**9, int(SAFETY * 6e9 / 3e8)), (4.4e9, 1), (None, 30)])
def test_plans_fill_the_budget_left_after_what_is_held(memory_limit, expected):
    budget = ViewBudget(memory=None if memory_limit is None else str(int(memory_limit)))
    batcher = ViewBatcher(lambda v: v, budget, torch.device("cpu"))
    batcher.meter = FakeMeter(in_use=4 * 10**9, available=10 * 10**9)
    batcher.view_bytes = 3e8
    assert batcher._plan(64) == min(expected, 64)  # default: the available 10 GB -> 30 views
    assert batcher.views_per_call(64) == min(expected, 64)


def test_a_budget_below_what_is_held_names_the_size_to_give():
    batcher = ViewBatcher(lambda v: v, ViewBudget(memory="4GB"), torch.device("cpu"))
    batcher.meter = FakeMeter(in_use=4 * 10**9, available=10 * 10**9)
    batcher.view_bytes = 3e8
    with pytest.raises(MemoryBudgetError, match=r"already holds 4\.00 GB .* at least 4\.33 GB"):
        batcher._plan(64)


def test_a_cap_and_a_budget_together_give_the_smaller():
    batcher = ViewBatcher(lambda v: v, ViewBudget(memory="10GB", max_views_per_batch=5), torch.device("cpu"))
    assert batcher.views_per_call(64) is None  # the budget needs a measured view first
    batcher.meter = FakeMeter(in_use=4 * 10**9, available=10 * 10**9)
    batcher.view_bytes = 3e8
    assert batcher._plan(64) == 5 and batcher.views_per_call(64) == 5
    batcher.view_bytes = 3e9
    assert batcher._plan(64) == 1
