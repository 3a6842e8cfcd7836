"""Python's cycle collector on the sidecar's terms (``sidecar/proxy/collector.py``): full collections at most
every ``gc_interval`` seconds, none while the heap merely grows, every collection's pause measured."""

from __future__ import annotations

import gc
import select
import socket
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from sidecar.proxy.collector import Collector
from tests.conftest import SidecarFactory
from tests.fake_litellm import KEYS


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


def cycles_left_by(run: Callable[[], None]) -> Counter[str]:
    """The objects of the sidecar and its server (``sidecar``, ``uvicorn``, ``uvloop``, ``httptools``)
    that ``run`` leaves in reference cycles: with the collector off while it runs, what only a collection
    would free."""
    gc.collect()
    gc.disable()
    try:
        run()
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        return Counter(
            f"{type(each).__module__}.{type(each).__qualname__}"
            for each in gc.garbage
            if type(each).__module__.split(".")[0] in {"sidecar", "uvicorn", "uvloop", "httptools"}
        )
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def _request(method: str, target: str, key: str | None, body: bytes = b"") -> bytes:
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    kind = "Content-Type: application/json\r\n" if body else ""
    return (
        f"{method} {target} HTTP/1.1\r\nHost: t\r\n{auth}{kind}Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body


def _traffic(port: int, rounds: int) -> None:
    """``rounds`` times, at once: streams read whole and hung up after their first event, discovery for a
    healthy, a spent, an unknown and no caller (hung up too), a chat, the budget view; each on a connection
    of its own that ends with the answer."""
    chat = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
    kinds = [
        (_request("GET", "/sse?n=3", KEYS["KEY_HEALTHY"]), None),
        (_request("GET", "/sse?n=3", KEYS["KEY_HEALTHY"]), b"data: 0"),
        (_request("GET", "/v1/models", KEYS["KEY_HEALTHY"]), None),
        (_request("GET", "/v1/models", KEYS["KEY_TEAM_BROKE"]), None),
        (_request("GET", "/v1/models", "sk-nobody-000000000000"), None),
        (_request("GET", "/v1/models", None), None),
        (_request("GET", "/v1/models", KEYS["KEY_KEY_BROKE"]), b""),  # hung up before the answer
        (_request("POST", "/v1/chat/completions", KEYS["KEY_HEALTHY"], chat), None),
        (_request("GET", "/sidecar/v1/budget", KEYS["KEY_TEAM_BROKE"]), None),
    ]
    open_: dict[socket.socket, tuple[bytes | None, bytes]] = {}
    for _ in range(rounds):
        for request, leave_at in kinds:
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(request)
            if leave_at == b"":
                sock.close()
                continue
            open_[sock] = (leave_at, b"")
    deadline = time.monotonic() + 20
    while open_ and time.monotonic() < deadline:
        readable, _, _ = select.select(list(open_), [], [], 1)
        for sock in readable:
            leave_at, seen = open_[sock]
            data = sock.recv(65536)
            seen += data
            if not data or (leave_at is not None and leave_at in seen):
                assert seen.startswith(b"HTTP/1.1 "), seen
                sock.close()
                del open_[sock]
            else:
                open_[sock] = (leave_at, seen)
    assert not open_, f"{len(open_)} answers not over"


def test_traffic_and_hang_ups_leave_no_cycles_for_the_full_collection(sidecar: SidecarFactory) -> None:
    """Full collections are rare now (``gc_interval``): what a request leaves in a reference cycle stays
    until the next one. Streams, discovery, chats and the budget view, whole or hung up by their caller,
    leave none of the sidecar's objects (its connections, their parsers and transports, the errors that
    ended them): reference counting frees them as they end. Not counted: the stand-in LiteLLM in this
    process, on asyncio's own loop, leaves its transports in cycles; httpcore leaves a few objects of an
    admin look-up cancelled in flight.)"""
    port = int(sidecar(policy="free_only").rsplit(":", 1)[1])
    _traffic(port, 2)  # warm: pools, caches, first-use objects
    time.sleep(0.5)

    def traffic() -> None:
        _traffic(port, 6)
        time.sleep(0.5)  # the sidecar's side of the hang-ups is over

    ours = cycles_left_by(traffic)
    assert sum(ours.values()) < 10, f"left in cycles by 54 requests: {ours}"
