"""The single-flight cache: one load for concurrent misses, failures not kept, entries expire."""

from __future__ import annotations

import asyncio

import pytest

from sidecar.cache import SingleFlightCache


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


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

    async def main() -> tuple[list[object], str]:
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
        return len(cache._values)

    assert run(main()) <= 10
