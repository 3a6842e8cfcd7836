"""The caches: one load for concurrent misses, failures not kept, entries expire, the least recently used
goes first when full, and a store costs the same whatever the size."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from sidecar.cache import Recent, SingleFlightCache

run = asyncio.run


def test_concurrent_misses_share_one_load() -> None:
    calls = 0

    async def load() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return "value"

    async def main() -> list[str]:
        cache: SingleFlightCache[str, str] = SingleFlightCache(ttl=60)
        return await asyncio.gather(*(cache.get("k", load) for _ in range(50)))

    assert run(main()) == ["value"] * 50
    assert calls == 1


def test_failed_load_reaches_every_waiter_and_is_not_kept() -> None:
    calls = 0

    async def load() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        if calls == 1:
            raise RuntimeError("upstream down")
        return "recovered"

    async def main() -> tuple[list[str | BaseException], str]:
        cache: SingleFlightCache[str, str] = SingleFlightCache(ttl=60)
        first = await asyncio.gather(*(cache.get("k", load) for _ in range(3)), return_exceptions=True)
        return first, await cache.get("k", load)

    first, second = run(main())
    assert all(isinstance(e, RuntimeError) for e in first)
    assert second == "recovered"


def test_entries_expire() -> None:
    values = iter(["old", "new"])

    async def main() -> list[str]:
        cache: SingleFlightCache[str, str] = SingleFlightCache(ttl=0.05)

        async def load() -> str:
            return next(values)

        first = await cache.get("k", load)
        cached = await cache.get("k", load)
        await asyncio.sleep(0.08)
        return [first, cached, await cache.get("k", load)]

    assert run(main()) == ["old", "old", "new"]


def test_a_waiter_leaving_does_not_cancel_the_load_for_others() -> None:
    async def load() -> str:
        await asyncio.sleep(0.05)
        return "value"

    async def main() -> str:
        cache: SingleFlightCache[str, str] = SingleFlightCache(ttl=60)
        leaver = asyncio.ensure_future(cache.get("k", load))
        stayer = asyncio.ensure_future(cache.get("k", load))
        await asyncio.sleep(0.01)
        leaver.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leaver
        return await stayer

    assert run(main()) == "value"


def test_size_is_bounded() -> None:
    async def main() -> int:
        cache: SingleFlightCache[int, int] = SingleFlightCache(ttl=60, max_entries=10)
        for i in range(100):

            async def load(i: int = i) -> int:
                return i

            await cache.get(i, load)
        return len(cache)

    assert run(main()) == 10


def load_of(value: str, loads: list[str]) -> Callable[[], Awaitable[str]]:
    async def load() -> str:
        loads.append(value)
        return value

    return load


def test_a_recently_read_entry_survives_eviction_and_the_oldest_goes() -> None:
    loads: list[str] = []

    async def main() -> None:
        cache: SingleFlightCache[str, str] = SingleFlightCache(ttl=60, max_entries=3)
        for key in "abc":
            await cache.get(key, load_of(key, loads))
        assert await cache.get("a", load_of("a", loads)) == "a"  # a hit: "a" is now the most recent
        await cache.get("d", load_of("d", loads))  # full: "b", the least recently used, goes
        assert loads == ["a", "b", "c", "d"]
        assert cache.peek("b") is None
        assert [cache.peek(key) for key in "acd"] == ["a", "c", "d"]
        assert len(cache) == 3

    run(main())


def test_a_peek_counts_as_use() -> None:
    loads: list[str] = []

    async def main() -> None:
        cache: SingleFlightCache[str, str] = SingleFlightCache(ttl=60, max_entries=2)
        for key in "ab":
            await cache.get(key, load_of(key, loads))
        assert cache.peek("a") == "a"
        await cache.get("c", load_of("c", loads))
        assert cache.peek("b") is None
        assert cache.peek("a") == "a"

    run(main())


def test_an_expired_entry_is_not_returned_and_is_dropped() -> None:
    async def main() -> None:
        cache: SingleFlightCache[str, str] = SingleFlightCache(ttl=0.01, max_entries=5)
        await cache.get("k", load_of("v", []))
        await asyncio.sleep(0.03)
        assert cache.peek("k") is None
        assert len(cache) == 0
        assert (cache.hits, cache.misses) == (0, 1)

    run(main())


def test_a_cached_none_is_a_hit() -> None:
    calls = 0

    async def load() -> None:
        nonlocal calls
        calls += 1

    async def main() -> None:
        cache: SingleFlightCache[str, None] = SingleFlightCache(ttl=60)
        await cache.get("k", load)
        await cache.get("k", load)

    run(main())
    assert calls == 1


def test_single_flight_holds_in_a_full_cache() -> None:
    calls: dict[str, int] = {}

    async def main() -> list[str]:
        cache: SingleFlightCache[str, str] = SingleFlightCache(ttl=60, max_entries=1)

        def load_for(key: str) -> Callable[[], Awaitable[str]]:
            async def load() -> str:
                calls[key] = calls.get(key, 0) + 1
                await asyncio.sleep(0.02)
                return key

            return load

        return await asyncio.gather(*(cache.get(key, load_for(key)) for key in "abc" * 10))

    assert run(main()) == list("abc" * 10)
    assert calls == {"a": 1, "b": 1, "c": 1}


def test_forget_and_clear() -> None:
    async def main() -> None:
        cache: SingleFlightCache[str, str] = SingleFlightCache(ttl=60)
        for key in "ab":
            await cache.get(key, load_of(key, []))
        cache.forget("a")
        cache.forget("never stored")
        assert cache.peek("a") is None
        assert cache.peek("b") == "b"
        cache.clear()
        assert len(cache) == 0

    run(main())


class CountedKey:
    """A key that counts how often it is hashed: every dict look-up of an entry hashes its key."""

    hashed = 0

    def __init__(self, n: int) -> None:
        self.n = n

    def __hash__(self) -> int:
        CountedKey.hashed += 1
        return hash(self.n)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CountedKey) and other.n == self.n


def test_a_store_into_a_full_cache_touches_a_constant_number_of_entries() -> None:
    """Not a timing: the entries a store hashes, the same at 10 entries as at 10,000 (a rebuild of the
    whole mapping when full hashed every key)."""

    def store_into_full(size: int) -> int:
        async def main() -> int:
            cache: SingleFlightCache[CountedKey, int] = SingleFlightCache(ttl=60, max_entries=size)
            for i in range(size):
                await cache.get(CountedKey(i), lambda i=i: asyncio.sleep(0, i))  # type: ignore[misc]
            assert len(cache) == size
            CountedKey.hashed = 0
            await cache.get(CountedKey(-1), lambda: asyncio.sleep(0, -1))
            await cache.get(CountedKey(size - 1), lambda: asyncio.sleep(0, -2))  # a hit
            assert len(cache) == size
            return CountedKey.hashed

        return run(main())

    assert store_into_full(10) == store_into_full(10_000) <= 10


def test_recent_keeps_the_most_recently_used() -> None:
    far = time.monotonic() + 60
    recent: Recent[str, int] = Recent(max_entries=3)
    for n, key in enumerate("abc"):
        recent.put(key, n, far)
    assert recent.get("a") == 0
    recent.put("b", 10, far)  # a put is a use too, and replaces the value
    recent.put("d", 3, far)  # full: "c" goes
    assert [recent.get(key) for key in "abcd"] == [0, 10, None, 3]
    assert len(recent) == 3


def test_recent_never_exceeds_its_bound() -> None:
    now = time.monotonic()
    recent: Recent[int, int] = Recent(max_entries=7)
    for i in range(200):
        recent.put(i % 23, i, now + 60 if i % 3 else now - 1)  # fresh and expired, new and repeated keys
        recent.get((i * 5) % 23)
        assert len(recent) <= 7
    assert len(recent) == 7


def test_recent_does_not_return_expired_entries() -> None:
    now = time.monotonic()
    recent: Recent[str, str] = Recent(max_entries=10)
    recent.put("old", "x", now - 1)
    recent.put("fresh", "y", now + 60)
    assert recent.get("old") is None
    assert len(recent) == 1  # dropped when met
    assert recent.get("old", "default") == "default"
    assert recent.get("fresh", "default") == "y"
    recent.put("old", "x", now - 1)
    assert recent.pop("old") is None
    assert recent.pop("fresh") == "y"
    assert recent.pop("fresh") is None
    assert len(recent) == 0


def test_recent_needs_room_for_one() -> None:
    with pytest.raises(ValueError, match="max_entries"):
        Recent(max_entries=0)


def test_a_load_goes_on_while_anyone_waits_and_stops_when_the_last_waiter_leaves() -> None:
    async def main() -> tuple[bool, bool, int]:
        cache: SingleFlightCache[str, int] = SingleFlightCache(ttl=60)
        started = asyncio.Event()
        cancelled = asyncio.Event()

        async def slow() -> int:
            started.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return 1

        first = asyncio.ensure_future(cache.get("k", slow))
        second = asyncio.ensure_future(cache.get("k", slow))
        await started.wait()
        first.cancel()  # one of two waiters leaves: the load goes on for the other
        await asyncio.sleep(0.01)
        still_loading = not cancelled.is_set()
        second.cancel()  # the last one leaves: nobody is left to pay for the load
        await asyncio.wait_for(cancelled.wait(), 1)
        value = await cache.get("k", _value(7))  # and the next caller loads afresh
        return still_loading, cancelled.is_set(), value

    assert asyncio.run(main()) == (True, True, 7)


def _value(value: int) -> Callable[[], Awaitable[int]]:
    async def load() -> int:
        return value

    return load
