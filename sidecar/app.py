"""The ASGI application: the sidecar's own routes, discovery to ``discovery.py``, everything else through.

Raw ASGI rather than a router: the pass-through carries every inference request and must cost as little
as possible, and the discovery routes are matched on the raw path (``routes.py``), not on a decoded one.
Every WebSocket, whatever its path, goes through to LiteLLM (``websocket.py``).
The app owns its HTTP clients through the ASGI lifespan: the pooled HTTP/1.1 client for callers' requests
(``upstream.py``, ``http1.py``) and one ``httpx.AsyncClient`` for the admin look-ups (``admin.py``).

Its own routes are named so as not to shadow any LiteLLM route and are never passed through:
``/healthz`` (liveness, no upstream call), ``/readyz`` (LiteLLM reachable and, when an admin key is set,
the admin credential accepted; false as soon as shutdown begins), ``/sidecar/metrics`` (Prometheus) and
``/sidecar/v1/budget`` (a caller's own budget, ``budget_view.py``).

Everything that serves a caller is built at start-up, with the clients, into one ``Running`` state: a
request before it (an ASGI server that skipped the lifespan) gets 503, as does one after shutdown began
to close the clients; ``/healthz``, ``/readyz`` and ``/sidecar/metrics`` answer throughout.

``/readyz`` answers anyone, so it is cheap and says little: its checks run at most once every
``READY_TTL`` seconds however many ask (single flight), and its body is only ``{"status": ...}``. Why it
is not ready - LiteLLM unreachable, the admin credential refused - goes to the log (a ``readiness`` line
each time the answer changes) and to ``--check``, never to whoever asks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from sidecar import budget_view
from sidecar.budget_view import BudgetView
from sidecar.cache import SingleFlightCache
from sidecar.discovery import Discovery
from sidecar.fallback import Fallback
from sidecar.litellm import credentials
from sidecar.litellm.admin import AdminLookups, LookupBound, LookupFailed, admin_http_client
from sidecar.litellm.budget import BudgetBook
from sidecar.logs import Sparse, event
from sidecar.metrics import CONTENT_TYPE, Metrics
from sidecar.proxy.capacity import connection_bound, idle_bound, open_files_now
from sidecar.proxy.routes import carries_body, match_discovery
from sidecar.proxy.upstream import Answer, Hold, Upstream, UpstreamUnavailable, send_json
from sidecar.proxy.websocket import WebSocketRelay
from sidecar.refusals import Refusals
from sidecar.settings import Settings
from sidecar.types import Receive, Scope, Send

log = logging.getLogger("sidecar.app")

HEALTHZ = b"/healthz"
READYZ = b"/readyz"
METRICS = b"/sidecar/metrics"
READY_TTL = 1.0  # seconds a readiness answer is reused
ALWAYS_ANSWERED = frozenset({HEALTHZ, READYZ, METRICS})  # even past the connection bound


JSON = [(b"content-type", b"application/json")]
NOT_STARTED = (
    b'{"error":{"message":"the sidecar has not started: its ASGI lifespan start-up did not run",'
    b'"type":"sidecar_not_started","param":null,"code":"503"}}'
)


@dataclass(frozen=True, slots=True)
class Running:
    """What start-up builds, whole: every part that answers a caller, and the clients they share."""

    admin: AdminLookups | None  # None without an admin credential
    admin_client: httpx.AsyncClient | None  # the admin look-ups' client, closed at shutdown
    budget: BudgetBook
    discovery: Discovery
    budget_view: BudgetView
    hold: Hold  # what the pass-through holds back: budget refusals, judged and marked (``refusals.py``)
    handshake_hold: Hold  # the same for WebSocket handshakes, and LiteLLM's empty 403 to a spent caller
    handshake_accepted: Callable[[Scope], None]  # a handshake LiteLLM upgraded: its caller is known
    fallback: Fallback | None  # None unless the ``fallback`` setting maps a model


def start(settings: Settings, upstream: Upstream, metrics: Metrics) -> Running:
    """The running state for ``settings``, around the caller's pooled client ``upstream``."""
    credentials.configure(settings.end_user_headers)
    admin_client = admin = None
    if settings.admin_key is not None:  # under ``blocked`` too: refusals are judged on every policy
        admin_client = admin_http_client(
            settings.upstream_url, settings.admin_key.get_secret_value(), settings.admin_timeout
        )
        admin = AdminLookups(
            admin_client,
            catalog_ttl=settings.catalog_ttl,
            scope_ttl=settings.scope_ttl,
            metrics=metrics,
            extra_free=settings.free_models,
            budget_ttl=settings.budget_ttl,
            bound=LookupBound(settings.admin_lookup_rate, settings.admin_lookup_concurrency),
        )
    budget = BudgetBook(admin, ttl=settings.budget_ttl, metrics=metrics, phantom_after=settings.phantom_after)
    discovery = Discovery(
        upstream,
        admin,
        budget=budget,
        policy=settings.policy,
        retrieve_from_list=settings.retrieve_from_list,
        metrics=metrics,
        render_ttl=min(settings.catalog_ttl, settings.scope_ttl),
    )
    refusals = Refusals(budget, discovery.probe)
    fallback = None
    if settings.fallback:
        fallback = Fallback(upstream, admin, refusals=refusals, metrics=metrics, mapping=settings.fallback)
    if admin is not None:
        metrics.watch_caches(
            views=admin.views,
            scopes=admin.model_scopes,  # the label of its metrics: "scopes"
            records=admin.records,
            budgets=budget.states,
            rendered=discovery.rendered,
        )
    return Running(
        admin=admin,
        admin_client=admin_client,
        budget=budget,
        discovery=discovery,
        budget_view=BudgetView(upstream, admin, budget),
        hold=refusals.hold,
        handshake_hold=refusals.handshake_hold,
        handshake_accepted=refusals.handshake_accepted,
        fallback=fallback,
    )


class SidecarApp:
    def __init__(self, settings: Settings, multiprocess: bool = False) -> None:
        self.settings = settings
        self.metrics = Metrics(multiprocess)  # multiprocess: one of several workers (cli.py)
        self.open_files = open_files_now()  # after ``capacity.raise_open_files``, where the server ran it
        self.max_connections = connection_bound(self.open_files, settings.max_connections)
        self.upstream = Upstream(
            settings.upstream_url,
            host=settings.upstream_host,
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            metrics=self.metrics,
            max_header_bytes=settings.max_header_bytes,
            max_idle=idle_bound(self.open_files),
        )
        self.websockets = WebSocketRelay(
            settings.upstream_url,
            connect_timeout=settings.connect_timeout,
            idle_timeout=settings.ws_idle_timeout,
            max_message_bytes=settings.ws_max_message_bytes,
            metrics=self.metrics,
        )
        self._at_capacity = Sparse(log, "at_capacity", "refused")
        self.running: Running | None = None  # built at start-up, with the clients; None again at shutdown
        self.draining = False  # set when shutdown begins: readiness goes false first
        self._ready: SingleFlightCache[str, bool] = SingleFlightCache(READY_TTL, max_entries=1)
        self._ready_said: dict[str, Any] | None = None  # the last report logged

    async def startup(self) -> None:
        self.running = start(self.settings, self.upstream, self.metrics)

    def at_capacity(self) -> None:
        """A request refused past ``max_connections``: counted, logged at most every 10 s."""
        self.metrics.at_capacity.inc()
        self._at_capacity.happened(max_connections=self.max_connections, open_files=self.open_files)

    async def shutdown(self) -> None:
        self.draining = True
        await self.upstream.close()
        running, self.running = self.running, None
        if running is not None and running.admin_client is not None:
            await running.admin_client.aclose()

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Whether to send traffic here, and why: LiteLLM reachable, the admin credential accepted."""
        if self.draining:
            return False, {"status": "draining"}
        running = self.running
        if running is None:
            return False, {"status": "not started"}
        admin = running.admin
        checks: dict[str, Any] = {}
        reachable = True
        try:
            status = await self.upstream.probe(b"/health/liveliness")
            checks["upstream"] = "ok" if status == 200 else f"/health/liveliness answered {status}"
        except UpstreamUnavailable as exc:
            checks["upstream"] = f"unreachable ({exc.detail or exc})"
            reachable = False
        if admin is not None and not reachable:
            checks["admin_credential"] = "unknown (LiteLLM is unreachable)"
        elif admin is not None:
            try:
                checks["admin_credential"] = f"ok ({len((await admin.catalog()).names)} models)"
            except LookupFailed as exc:
                checks["admin_credential"] = f"refused or failed: {exc}"
        ready = all(value.startswith("ok") for value in checks.values())
        return ready, {"status": "ready" if ready else "not ready", **checks}

    async def _readyz(self) -> tuple[int, bytes]:
        """``/readyz``: the cached readiness, its reasons logged when they change, never answered."""
        if self.draining:
            return 503, b'{"status":"draining"}'
        ready = await self._ready.get("ready", self._check_and_log)
        return (200, b'{"status":"ready"}') if ready else (503, b'{"status":"not ready"}')

    async def _check_and_log(self) -> bool:
        ready, report = await self.readiness()
        if report != self._ready_said:
            self._ready_said = report
            event(log, logging.INFO if ready else logging.WARNING, "readiness", ready=ready, **report)
        return ready

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            raw_path = scope["raw_path"] or scope["path"].encode()
            running = self.running
            if raw_path in ALWAYS_ANSWERED:
                await self._own_route(raw_path, send)
            elif running is None:
                await send_json(send, 503, NOT_STARTED)
            elif raw_path == budget_view.ROUTE:
                await running.budget_view.handle(scope, receive, send)
            else:
                await self._for_litellm(running, raw_path, scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            running = self.running
            if running is None:
                await self.websockets.answer(scope, send, Answer(503, JSON, NOT_STARTED))
            else:
                fallback = running.fallback
                rescue = fallback.handshake_detour if fallback is not None else None
                await self.websockets.handle(
                    scope, receive, send, running.handshake_hold, rescue, running.handshake_accepted
                )

    async def _for_litellm(
        self, running: Running, raw_path: bytes, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """A request for LiteLLM: discovery's, the fallback's or passed through."""
        route = match_discovery(scope["method"], raw_path)
        if route is not None and not carries_body(scope["headers"]):
            await running.discovery.handle(route, scope, receive, send)
        elif running.fallback is not None and running.fallback.applies(scope):
            await running.fallback.handle(scope, receive, send)
        else:
            await self.upstream.pass_through(scope, receive, send, running.hold)

    async def _own_route(self, raw_path: bytes, send: Send) -> None:
        if raw_path == HEALTHZ:
            await send_json(send, 200, b'{"status":"ok"}')
        elif raw_path == READYZ:
            await send_json(send, *await self._readyz())
        else:
            body = self.metrics.render()
            headers = [(b"content-type", CONTENT_TYPE), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:  # noqa: BLE001 - reported to the server, which refuses to start
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


def create_app(settings: Settings, multiprocess: bool = False) -> SidecarApp:
    return SidecarApp(settings, multiprocess)
