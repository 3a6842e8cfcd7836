"""When Python's cycle collector runs: its full collections at most once every ``gc_interval`` seconds.

Reference counting frees almost everything the sidecar makes; the cycle collector only looks for reference
cycles, and a full collection (the oldest generation) walks every object alive - with the GIL held, so the
event loop and every stream on it stand still meanwhile. An open stream keeps about 66 such objects (two
transports and their parsers, the request's tasks and coroutines, the pooled connection); at 9,700 open
streams a full collection walked 640,000 objects and stood still for 300 ms.

CPython starts a full collection whenever the objects promoted to the oldest generation since the last one
exceed a quarter of those found there last time - whenever the heap grew by a quarter. A ramp from nothing
to thousands of streams (a pod's start, every client reconnecting after LiteLLM restarted) is a heap
growing by a quarter again and again: measured while 9,700 streams opened at once, eight full collections
of 16, 44, 130, 140, 180, 200, 230 and 307 ms, none of which found anything to free, and ``/healthz`` p99
over the ramp 170-260 ms. Streams that end and start in a steady flow count as growth too.

So here (``Collector``):
- at start, everything made so far (modules, classes, settings, the app) is moved out of the collector's
  sight (``gc.freeze``): it lives as long as the process, and no full collection walks it again;
- CPython's own full collections are off; one runs at most every ``gc_interval`` seconds (60), and only
  when young collections promoted objects since the last one. A cycle that outlived the young generations
  is freed within that time; the young generations are collected as CPython does. ``0`` leaves CPython's
  rule as it is.
- what a request or a connection leaves is freed by reference counting alone, as it ends: the cycles they
  used to leave - an HTTP parser and its protocol refer to each other (upstream connections, and the
  caller's after a WebSocket upgrade), an error kept on a connection and raised from there gathered the
  frames it passed through, a connect given up at the last moment kept its transport - are broken where
  they end (``tests/test_collector.py``: streams, discovery, chats and the budget view, whole or hung up,
  leave none). A full collection once a minute finds nothing; it is there for what no test foresaw.
- every collection's duration is observed in ``sidecar_gc_pause_seconds``, by generation: a stall of the
  loop that no request's own timing explains shows there. A collection can start wherever Python makes an
  object, a metric's lock held included, so the durations are noted as they come and observed at the next
  ``tick``.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

# CPython runs a full collection when more young collections than this happened since the last one (and
# the heap grew by a quarter): as many as never.
_NEVER = (1 << 31) - 1


class Collector:
    """The process's cycle collector, as described above. ``start`` once the process is set up (it changes
    the interpreter's collector for the whole process: only where the sidecar serves, never in tests that
    share an interpreter), ``tick`` from the server's periodic tick, ``stop`` when it ends."""

    def __init__(self, interval: float, observe: Callable[[int, float], None] | None = None) -> None:
        self.interval = interval
        self._observe = observe
        self._due = 0.0
        self._started = 0.0  # when the collection under way started
        self._pauses: list[tuple[int, float]] = []  # (generation, seconds) not yet observed
        self._thresholds: tuple[int, int, int] | None = None

    def start(self, now: float | None = None) -> None:
        gc.collect()
        gc.freeze()
        if self._observe is not None:
            gc.callbacks.append(self._timed)
        if self.interval > 0:
            young, middle, _ = self._thresholds = gc.get_threshold()
            gc.set_threshold(young, middle, _NEVER)
            self._due = (time.monotonic() if now is None else now) + self.interval

    def tick(self, now: float | None = None) -> bool:
        """Run the full collection if it is due and young collections promoted anything since the last one;
        whether it ran."""
        pauses = self._pauses
        if pauses and self._observe is not None:
            self._pauses = []
            for generation, seconds in pauses:
                self._observe(generation, seconds)
        if self._thresholds is None:
            return False
        now = time.monotonic() if now is None else now
        if now < self._due:
            return False
        self._due = now + self.interval
        if gc.get_count()[2] == 0:  # no young collection since the last full one: nothing new to walk
            return False
        gc.collect()
        return True

    def stop(self) -> None:
        if self._thresholds is not None:
            gc.set_threshold(*self._thresholds)
            self._thresholds = None
        if self._timed in gc.callbacks:
            gc.callbacks.remove(self._timed)
        gc.unfreeze()

    def _timed(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self._pauses.append((info["generation"], time.perf_counter() - self._started))
