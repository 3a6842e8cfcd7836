"""Python's cycle collector on the sidecar's terms (``sidecar/proxy/collector.py``): full collections at most
every ``gc_interval`` seconds, none while the heap merely grows, every collection's pause measured."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from sidecar.proxy.collector import Collector


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def _old_cycle() -> weakref.ref[_Node]:
    """Two objects that refer to each other, old enough to be in the oldest generation, and no longer
    referred to by anyone: only a full collection frees them."""
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    gc.collect(1)  # survived the young generations: promoted to the oldest
    gc.collect(1)
    return weakref.ref(a)


@pytest.fixture
def collector() -> Iterator[list[Collector]]:
    made: list[Collector] = []
    try:
        yield made
    finally:
        for each in made:
            each.stop()


def test_a_growing_heap_gets_no_full_collection_before_the_interval(collector: list[Collector]) -> None:
    pauses: list[tuple[int, float]] = []
    c = Collector(60.0, lambda generation, seconds: pauses.append((generation, seconds)))
    collector.append(c)
    c.start(now=1000.0)
    full_before = gc.get_stats()[2]["collections"]
    kept = [[i] for i in range(400_000)]  # CPython's rule: a full collection at every quarter of growth
    cycle = _old_cycle()
    assert gc.get_stats()[2]["collections"] == full_before
    assert cycle() is not None  # garbage, waiting for the full collection

    assert not c.tick(now=1059.0)  # not due yet
    assert cycle() is not None
    assert c.tick(now=1060.0)
    assert cycle() is None
    assert gc.get_stats()[2]["collections"] == full_before + 1
    c.tick(now=1060.1)  # the pauses noted during collections are observed at the next tick
    generations = {generation for generation, _ in pauses}
    assert 2 in generations and 0 in generations, pauses
    assert all(0 <= seconds < 60 for _, seconds in pauses)
    del kept


def test_no_full_collection_when_nothing_was_promoted_since_the_last(collector: list[Collector]) -> None:
    c = Collector(1.0)
    collector.append(c)
    c.start(now=0.0)
    gc.collect()  # a full collection: nothing promoted since
    full_before = gc.get_stats()[2]["collections"]
    assert not c.tick(now=5.0)
    assert gc.get_stats()[2]["collections"] == full_before
    _old_cycle()  # young collections happen: the next due tick collects
    assert c.tick(now=10.0)


def test_startup_objects_leave_the_collectors_sight_and_come_back_at_stop() -> None:
    thresholds = gc.get_threshold()
    c = Collector(60.0)
    try:
        c.start()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[:2] == thresholds[:2] and gc.get_threshold()[2] > 1 << 30
    finally:
        c.stop()
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == thresholds


def test_interval_zero_keeps_cpythons_rule(collector: list[Collector]) -> None:
    thresholds = gc.get_threshold()
    c = Collector(0.0)
    collector.append(c)
    c.start(now=0.0)
    assert gc.get_threshold() == thresholds
    cycle = _old_cycle()
    assert not c.tick(now=1e9)  # it never runs one itself
    gc.collect()
    assert cycle() is None
