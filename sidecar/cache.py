"""Bounded, time-limited caches: ``Recent``, and on top of it ``SingleFlightCache`` whose concurrent misses
share one load (single flight).

``SingleFlightCache`` holds the admin's views of the proxy, each key's access scope, budget records, budget
states and rendered discovery answers. Keys are hashes, never raw credentials. A failed load is not cached:
every waiter of that load gets the error, the next call tries again. The load runs in its own task, so a
caller that goes away does not cancel it for the others; once the last caller waiting for it has gone, it
is cancelled (a budget probe made for a caller that hung up holds no upstream connection).

Both are least-recently-used: at most ``max_entries`` entries; a read moves an entry to the back, a store into
a full cache drops the one at the front. Store, hit and eviction touch one entry each (O(1)), whatever the
size. An expired entry is dropped when a read meets it; one never read again leaves when it reaches the front.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar, overload

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
D = TypeVar("D")


class Recent(Generic[K, V]):
    """At most ``max_entries`` values, each kept until its own ``until`` (``time.monotonic()``); when full,
    a new key drops the least recently used (put or read) entry."""

    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, not {max_entries}")
        self.max_entries = max_entries
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def put(self, key: K, value: V, until: float) -> None:
        entries = self._entries
        if key in entries:
            entries.move_to_end(key)
        elif len(entries) >= self.max_entries:
            entries.popitem(last=False)
        entries[key] = (until, value)

    @overload
    def get(self, key: K) -> V | None: ...
    @overload
    def get(self, key: K, default: D) -> V | D: ...
    def get(self, key: K, default: object = None) -> object:
        """The value for ``key`` if it has not expired (and it becomes the most recently used), else
        ``default``; an expired entry is dropped."""
        entry = self._entries.get(key)
        if entry is None:
            return default
        if entry[0] <= time.monotonic():
            del self._entries[key]
            return default
        self._entries.move_to_end(key)
        return entry[1]

    def pop(self, key: K) -> V | None:
        """Remove ``key``; its value if it had one that had not expired."""
        entry = self._entries.pop(key, None)
        return None if entry is None or entry[0] <= time.monotonic() else entry[1]

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        """Entries held, expired ones not yet dropped included: never more than ``max_entries``."""
        return len(self._entries)


class SingleFlightCache(Generic[K, V]):
    def __init__(self, ttl: float, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self.hits = 0  # counted by ``Metrics.watch_caches``
        self.misses = 0
        self._values: Recent[K, V] = Recent(max_entries)
        # One task per key being loaded: bounded by the loads in flight, each removed when it ends.
        self._loading: dict[K, asyncio.Task[V]] = {}
        self._waiting: dict[asyncio.Task[V], int] = {}  # callers awaiting each load

    @property
    def max_entries(self) -> int:
        return self._values.max_entries

    async def get(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        value = self._values.get(key, _Missing.MISSING)
        if value is not _Missing.MISSING:
            self.hits += 1
            return value
        self.misses += 1
        task = self._loading.get(key)
        if task is None:
            task = asyncio.ensure_future(self._load(key, load))
            task.add_done_callback(_retrieve_exception)
            self._loading[key] = task
        waiting = self._waiting
        waiting[task] = waiting.get(task, 0) + 1
        try:
            return await asyncio.shield(task)
        finally:
            left = waiting.pop(task) - 1
            if left:
                waiting[task] = left
            elif not task.done():
                task.cancel()  # every caller that wanted it went away: nobody is left to pay for it

    def peek(self, key: K) -> V | None:
        """The fresh value for ``key`` without loading it (counted as a hit when there is one)."""
        value = self._values.get(key, _Missing.MISSING)
        if value is _Missing.MISSING:
            return None
        self.hits += 1
        return value

    def forget(self, key: K) -> None:
        self._values.pop(key)

    async def _load(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        try:
            value = await load()
            if self.ttl > 0:
                self._values.put(key, value, time.monotonic() + self.ttl)
            return value
        finally:
            self._loading.pop(key, None)

    def clear(self) -> None:
        self._values.clear()

    def __len__(self) -> int:
        return len(self._values)


class _Missing(enum.Enum):
    MISSING = enum.auto()


def _retrieve_exception(task: asyncio.Task[object]) -> None:
    if not task.cancelled():
        task.exception()
