"""The caches' cost per store, before and after O(1) eviction, and their memory per entry.

    python bench/cache.py [--rounds 5] [--entries 10000]

(with the sidecar installed, ``pip install .``; from a checkout without it, ``PYTHONPATH=. python ...``).

Stores: nanoseconds per store of a new key (a 64-hex string, as the caches' keys are hashes) into a cache
holding 1,000 entries under a bound of 10,000, a full one of 10,000 (the default bound) and a full one of
100,000, for the algorithm before (``_store`` as it was, copied below as the baseline) and now
(``Recent.put``, what ``SingleFlightCache`` does on a load), in interleaved rounds; medians.

Memory: bytes per entry (``tracemalloc``) of 10,000 entries in a ``SingleFlightCache``: keys and values
created for it included, then the cache's own bookkeeping alone.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import os
import statistics
import time
import tracemalloc
from collections.abc import Callable, Iterable
from typing import Any

from sidecar.cache import Recent, SingleFlightCache
from sidecar.litellm.budget import BudgetState, Principal, Spent

TTL = 60.0
VALUE = (200, b"{}")
Stores = Callable[[list[str]], None]  # stores each key, as the cache does


class OldStore:
    """BASELINE, not used by the sidecar: ``SingleFlightCache._store`` before O(1) eviction, verbatim.
    When full it rebuilt the whole dict (dropping expired entries), then deleted the oldest."""

    def __init__(self, max_entries: int) -> None:
        self.ttl = TTL
        self.max_entries = max_entries
        self._values: dict[Any, tuple[float, Any]] = {}

    def _store(self, key: Any, value: Any) -> None:
        now = time.monotonic()
        if len(self._values) >= self.max_entries:
            self._values = {k: e for k, e in self._values.items() if e[0] > now}
            while len(self._values) >= self.max_entries:
                del self._values[next(iter(self._values))]
        self._values.pop(key, None)
        self._values[key] = (now + self.ttl, value)


def old_stores(max_entries: int) -> Stores:
    cache = OldStore(max_entries)

    def stores(keys: list[str]) -> None:
        for key in keys:
            cache._store(key, VALUE)

    return stores


def new_stores(max_entries: int) -> Stores:
    """What ``SingleFlightCache._load`` does with a loaded value."""
    recent: Recent[str, tuple[int, bytes]] = Recent(max_entries)

    def stores(keys: list[str]) -> None:
        for key in keys:
            recent.put(key, VALUE, time.monotonic() + TTL)

    return stores


def hex_keys(count: int) -> list[str]:
    return [os.urandom(32).hex() for _ in range(count)]


# (label, entries before the stores, bound, stores timed for old and new)
SCENARIOS = [
    ("1,000 of 10,000", 1_000, 10_000, 1_000, 1_000),
    ("10,000 of 10,000 (full)", 10_000, 10_000, 300, 20_000),
    ("100,000 of 100,000 (full)", 100_000, 100_000, 20, 20_000),
]


def ns_per_store(make: Callable[[int], Stores], filled: int, bound: int, count: int) -> float:
    stores = make(bound)
    stores(hex_keys(filled))
    keys = hex_keys(count)
    gc.collect()
    gc.disable()
    try:
        started = time.perf_counter_ns()
        stores(keys)
        return (time.perf_counter_ns() - started) / count
    finally:
        gc.enable()


def stores(rounds: int) -> None:
    print(f"ns per store of a new key, median of {rounds} interleaved rounds")
    print("| entries / bound | before (rebuild when full) | now (LRU, O(1)) | before/now |")
    print("|---|---|---|---|")
    for label, filled, bound, old_count, new_count in SCENARIOS:
        old: list[float] = []
        new: list[float] = []
        for _ in range(rounds):
            old.append(ns_per_store(old_stores, filled, bound, old_count))
            new.append(ns_per_store(new_stores, filled, bound, new_count))
        o, n = statistics.median(old), statistics.median(new)
        print(f"| {label} | {o:,.0f} | {n:,.0f} | {o / n:,.1f}x |")


def budget_entry(i: int) -> tuple[Principal, BudgetState]:
    token = os.urandom(32).hex()
    return Principal(token, True, None, token[:12]), BudgetState()


def seen_entry(i: int) -> tuple[str, tuple[Spent, None]]:
    return os.urandom(32).hex(), (Spent("key", "seen"), None)


ENTRIES: list[tuple[str, Callable[[int], tuple[Any, Any]]]] = [
    ("budgets: Principal -> BudgetState (within budget)", budget_entry),
    ("64-hex str -> small tuple (a refusal seen: (Spent, None))", seen_entry),
]


async def loaded(value: Any) -> Any:
    return value


def bytes_per_entry(make: Callable[[int], tuple[Any, Any]], count: int) -> tuple[float, float]:
    """Bytes per entry with the keys and values included, and of the cache's bookkeeping alone."""

    async def fill(cache: SingleFlightCache[Any, Any], entries: Iterable[tuple[Any, Any]]) -> None:
        for key, value in entries:
            await cache.get(key, functools.partial(loaded, value))

    def traced() -> int:
        gc.collect()
        return tracemalloc.get_traced_memory()[0]

    asyncio.run(fill(SingleFlightCache(TTL), [make(0)]))  # asyncio's own first-use allocations
    tracemalloc.start()
    before = traced()
    whole: SingleFlightCache[Any, Any] = SingleFlightCache(TTL, max_entries=count)
    asyncio.run(fill(whole, (make(i) for i in range(count))))  # nothing but the cache keeps them
    total = (traced() - before) / count
    del whole
    entries = [make(i) for i in range(count)]
    made = traced()
    bookkeeping: SingleFlightCache[Any, Any] = SingleFlightCache(TTL, max_entries=count)
    asyncio.run(fill(bookkeeping, entries))
    own = (traced() - made) / count
    tracemalloc.stop()
    return total, own


def memory(count: int) -> None:
    print(f"\nbytes per entry, {count:,} entries in a SingleFlightCache (tracemalloc)")
    print("| entry | with key and value | cache bookkeeping alone |")
    print("|---|---|---|")
    for label, make in ENTRIES:
        total, own = bytes_per_entry(make, count)
        print(f"| {label} | {total:,.0f} | {own:,.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--entries", type=int, default=10_000, help="entries for the memory table")
    args = parser.parse_args()
    stores(args.rounds)
    memory(args.entries)


if __name__ == "__main__":
    main()
