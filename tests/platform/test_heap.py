"""A settled server process skips what it holds for good and still collects cycles."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from careplane.platform import heap


@pytest.fixture
def restored() -> Iterator[None]:
    threshold = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def test_settle_freezes_the_started_heap_and_still_collects_cycles(restored: None) -> None:
    held = [_Node() for _ in range(100)]  # what a started server holds
    heap.settle()
    assert gc.get_freeze_count() >= len(held)
    assert gc.get_threshold()[0] == heap.YOUNG_THRESHOLD
    a, b = _Node(), _Node()  # garbage made while serving: a cycle
    a.other, b.other = b, a
    gone = weakref.ref(a)
    del a, b
    gc.collect()
    assert gone() is None


def test_settle_runs_the_registered_loaders_before_freezing(restored: None,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    monkeypatch.setattr(heap, "_LOADERS", [])
    loaded: list[list[_Node]] = []

    def loader() -> None:  # what a domain builds on first use: here, at start
        loaded.append([_Node() for _ in range(10)])

    heap.load_at_start(loader)
    heap.load_at_start(loader)  # registered once
    heap.settle()
    assert len(loaded) == 1
    held = loaded[0]
    assert not any(o is held for o in gc.get_objects())  # frozen: collections skip it
