"""Prometheus metrics, served at ``/sidecar/metrics`` (LiteLLM's own ``/metrics`` passes through untouched).

Each app has its own registry. What happens on every request is tallied in plain integers, not in
prometheus_client's values (an increment there is a few Python calls and a lock, some 4,000 instructions:
more than a per cent of a request's work each): the requests answered by route and status
(:meth:`Metrics.request`) and the caches' hits and misses (counted by the caches themselves). The tallies
are added to the metrics by :meth:`Metrics.flush`, which every rendering calls first, and the served
process on each tick of its loop (0.1 s) and as it stops: a scrape answered by another worker sees a
worker's last tenth of a second a tick later. The pass-through's one histogram observation per request
stays where it is.

With several workers (``--workers``), each is its own process: the metrics follow prometheus_client's
multiprocess mode - every worker writes its values to files in ``PROMETHEUS_MULTIPROC_DIR`` (set by the
supervisor before the workers start, ``cli.py``) and a scrape, whichever worker answers it, adds up all
of them (``MultiProcessCollector``). Counters and histograms, and one gauge - the WebSockets open - whose
workers' values add up too (its ``livesum`` mode: the processes alive).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from sidecar.cache import SingleFlightCache

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self, multiprocess: bool = False) -> None:
        self.multiprocess = multiprocess
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._requests = Counter(
            "sidecar_requests",
            "Requests answered, by route class and status.",
            ["route", "status"],
            registry=r,
        )
        self.rescues = Counter(
            "sidecar_rescues",
            "Budget errors answered with a model list, by policy and whose budget was spent.",
            ["policy", "scope"],
            registry=r,
        )
        self.blocked = Counter(
            "sidecar_rescues_blocked",
            "Budget errors returned unchanged under the blocked policy.",
            registry=r,
        )
        self.fail_closed = Counter(
            "sidecar_fail_closed",
            "Budget errors returned unchanged because the caller's scope could not be established.",
            ["reason"],
            registry=r,
        )
        self.budget_marked = Counter(
            "sidecar_budget_marked",
            "Discovery answers LiteLLM gave to callers over budget (it did not refuse them), by policy, "
            "whose budget is spent and what the sidecar did: filtered (paid models removed) or marked "
            "(LiteLLM's list, marked). Refused calls count in sidecar_rescues.",
            ["policy", "scope", "action"],
            registry=r,
        )
        self.budget_unknown = Counter(
            "sidecar_budget_unknown",
            "Discovery answers left as LiteLLM gave them because no source could establish the caller's "
            "budget state.",
            registry=r,
        )
        self.budget_source_failures = Counter(
            "sidecar_budget_source_failures",
            "Times a source of budget state could not answer (enforced: LiteLLM's probe route; recorded: "
            "its admin API): a LiteLLM that moved either shows here.",
            ["source"],
            registry=r,
        )
        self.budget_refusals = Counter(
            "sidecar_budget_refusals",
            "Budget refusals LiteLLM sent callers (discovery and passed-through calls), by the level that "
            "refused and the verdict: spent (its recorded spend is at max_budget), phantom (it is below: "
            "LiteLLM's counter runs ahead of its database), unknown (could not tell).",
            ["scope", "verdict"],
            registry=r,
        )
        self.upstream_errors = Counter(
            "sidecar_upstream_errors",
            "Failures talking to LiteLLM on callers' requests: unreachable, timeout, closed (before "
            "answering), invalid (an answer that cannot be passed on), stream_broken; and local_exhausted: "
            "the sidecar itself was out of descriptors or memory to connect (503, not LiteLLM's fault).",
            ["kind"],
            registry=r,
        )
        self.abandoned = Counter(
            "sidecar_abandoned",
            "Pass-through requests whose caller went away before the answer was complete; the upstream "
            "connection was closed at once.",
            registry=r,
        )
        self.admin_lookup_seconds = Histogram(
            "sidecar_admin_lookup_seconds",
            "Admin look-up latency, by path.",
            ["path"],
            registry=r,
            buckets=_LATENCY_BUCKETS,
        )
        self.admin_lookup_failures = Counter(
            "sidecar_admin_lookup_failures",
            "Admin look-ups that failed, by path and reason: the HTTP status LiteLLM answered (401: the "
            "admin credential is refused; 404: a level LiteLLM does not know, often expected), timeout, "
            "unreachable, invalid (not JSON).",
            ["path", "reason"],
            registry=r,
        )
        self.admin_lookups_shed = Counter(
            "sidecar_admin_lookups_shed",
            "Per-caller admin look-ups not made because the global bound (admin_lookup_rate, "
            "admin_lookup_concurrency) was reached: those callers got LiteLLM's own answer.",
            registry=r,
        )
        self.at_capacity = Counter(
            "sidecar_at_capacity",
            "Requests answered 503 because the process held max_connections caller connections (the "
            "descriptor limit, not LiteLLM): raise the hard RLIMIT_NOFILE, or add workers or replicas.",
            registry=r,
        )
        self.passthrough_seconds = Histogram(
            "sidecar_passthrough_seconds",
            "Pass-through time until LiteLLM's response headers arrived.",
            registry=r,
            buckets=_LATENCY_BUCKETS,
        )
        self.fallbacks = Counter(
            "sidecar_fallbacks",
            "Budget fallbacks, by the fallback rule (a model name or *), the free model and the outcome: "
            "served (LiteLLM answered the retry), refused (it refused the retry too: the caller got the "
            "original refusal), not_allowed (the target is not free or not the caller's), abandoned (the "
            "caller left before the retry was answered).",
            ["from", "to", "outcome"],
            registry=r,
        )
        self.gc_pause = Histogram(
            "sidecar_gc_pause_seconds",
            "Python's cycle collections and how long each held the event loop, by generation (2: the full "
            "collections, at most one every gc_interval seconds; proxy/collector.py).",
            ["generation"],
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.websockets_open = Gauge(
            "sidecar_websockets_open",
            "WebSockets passed through to LiteLLM and open now (after LiteLLM's 101).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.websocket_messages = Counter(
            "sidecar_websocket_messages",
            "WebSocket messages relayed, by direction: up (caller to LiteLLM), down (LiteLLM to caller).",
            ["direction"],
            registry=r,
        )
        self.websocket_bytes = Counter(
            "sidecar_websocket_bytes",
            "Bytes of WebSocket messages relayed (text as characters), by direction: up, down.",
            ["direction"],
            registry=r,
        )
        self.websocket_closes = Counter(
            "sidecar_websocket_closes",
            "WebSockets ended, by who ended them (caller, upstream: LiteLLM, idle: the idle timeout, "
            "caller_stalled, upstream_stalled: a side given up on for taking no message within the idle "
            "timeout) and the close code (1005: none given or the caller vanished, 1006: LiteLLM's "
            "connection lost, 1009: a message over ws_max_message_bytes; 3xxx, 4xxx: the application codes "
            "3000-3999 and 4000-4999).",
            ["by", "code"],
            registry=r,
        )
        self.cache_hits = Counter("sidecar_cache_hits", "Cache hits, by cache.", ["cache"], registry=r)
        self.cache_misses = Counter("sidecar_cache_misses", "Cache misses, by cache.", ["cache"], registry=r)
        self._answered: dict[tuple[str, int], int] = {}  # requests since the last flush: bounded by
        # the route classes and statuses
        self._caches: list[tuple[SingleFlightCache[Any, Any], Counter, Counter, list[int]]] = []

    def request(self, route: str, status: int) -> None:
        """One request answered (tallied: see the module's docstring)."""
        answered = self._answered
        key = (route, status)
        answered[key] = answered.get(key, 0) + 1

    def flush(self) -> None:
        """Add what was tallied since the last flush to the metrics."""
        answered, self._answered = self._answered, {}
        for (route, status), count in answered.items():
            self._requests.labels(route, str(status)).inc(count)
        for cache, hits, misses, counted in self._caches:
            if cache.hits != counted[0]:
                hits.inc(cache.hits - counted[0])
                counted[0] = cache.hits
            if cache.misses != counted[1]:
                misses.inc(cache.misses - counted[1])
                counted[1] = cache.misses

    def gc_paused(self, generation: int, seconds: float) -> None:
        self.gc_pause.labels(str(generation)).observe(seconds)

    def watch_caches(self, **caches: SingleFlightCache[Any, Any]) -> None:
        for name, cache in caches.items():
            counted = [cache.hits, cache.misses]
            self._caches.append(
                (cache, self.cache_hits.labels(name), self.cache_misses.labels(name), counted)
            )

    def render(self) -> bytes:
        self.flush()
        if self.multiprocess:  # every worker's values, from their files
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)
