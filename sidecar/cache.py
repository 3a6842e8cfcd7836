"""A small time-limited cache whose concurrent misses share one load (single flight).

Used for the admin's views of the proxy and for each key's access scope. Keys are hashes, never raw
credentials. A failed load is not cached: every waiter of that load gets the error, the next call tries
again. The load runs in its own task, so a caller that goes away does not cancel it for the others.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlightCache(Generic[K, V]):
    def __init__(self, ttl: float, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self.on_hit: Callable[[], None] = _nothing  # set by ``Metrics.watch_caches``
        self.on_miss: Callable[[], None] = _nothing
        self._values: dict[K, tuple[float, V]] = {}
        self._loading: dict[K, asyncio.Task[V]] = {}

    async def get(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        entry = self._values.get(key)
        if entry is not None and entry[0] > time.monotonic():
            self.hits += 1
            self.on_hit()
            return entry[1]
        self.misses += 1
        self.on_miss()
        task = self._loading.get(key)
        if task is None:
            task = asyncio.ensure_future(self._load(key, load))
            task.add_done_callback(_retrieve_exception)
            self._loading[key] = task
        return await asyncio.shield(task)

    def peek(self, key: K) -> V | None:
        """The fresh value for ``key`` without loading it (counted as a hit when there is one)."""
        entry = self._values.get(key)
        if entry is not None and entry[0] > time.monotonic():
            self.hits += 1
            self.on_hit()
            return entry[1]
        return None

    def forget(self, key: K) -> None:
        self._values.pop(key, None)

    async def _load(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        try:
            value = await load()
            if self.ttl > 0:
                self._store(key, value)
            return value
        finally:
            self._loading.pop(key, None)

    def _store(self, key: K, value: V) -> None:
        now = time.monotonic()
        if len(self._values) >= self.max_entries:
            self._values = {k: e for k, e in self._values.items() if e[0] > now}
            while len(self._values) >= self.max_entries:
                del self._values[next(iter(self._values))]
        self._values.pop(key, None)
        self._values[key] = (now + self.ttl, value)

    def clear(self) -> None:
        self._values.clear()


def _nothing() -> None:
    pass


def _retrieve_exception(task: asyncio.Task[object]) -> None:
    if not task.cancelled():
        task.exception()
