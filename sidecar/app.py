"""The ASGI application: discovery routes to ``discovery.py``, everything else straight through.

Raw ASGI rather than a router: the pass-through carries every inference request and must cost as little
as possible, and the discovery routes are matched on the raw path (``routes.py``), not on a decoded one.
The app owns its HTTP clients through the ASGI lifespan: one pooled ``aiohttp`` session for callers'
requests (``upstream.py``) and one ``httpx.AsyncClient`` for the admin look-ups (``admin.py``).
"""

from __future__ import annotations

import httpx

from sidecar.admin import AdminLookups, admin_http_client
from sidecar.discovery import Discovery
from sidecar.routes import match_discovery
from sidecar.settings import Settings
from sidecar.types import Receive, Scope, Send
from sidecar.upstream import Upstream, send_json


class SidecarApp:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.upstream = Upstream(
            settings.upstream_url, settings.upstream_host, settings.connect_timeout, settings.read_timeout
        )
        self._admin_client: httpx.AsyncClient | None = None
        self.admin: AdminLookups | None = None
        self.discovery: Discovery | None = None  # built at start-up, with the clients

    async def startup(self) -> None:
        await self.upstream.start()
        settings = self.settings
        if settings.admin_key is not None and settings.policy != "blocked":
            self._admin_client = admin_http_client(
                settings.upstream_url, settings.admin_key.get_secret_value(), settings.admin_timeout
            )
            self.admin = AdminLookups(
                self._admin_client, settings.catalog_ttl, settings.scope_ttl, settings.free_models
            )
        self.discovery = Discovery(self.upstream, self.admin, settings.policy, settings.retrieve_from_list)

    async def shutdown(self) -> None:
        await self.upstream.close()
        if self._admin_client is not None:
            await self._admin_client.aclose()
            self._admin_client = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            if scope["path"] == "/healthz":
                await _alive(send)
                return
            route = match_discovery(scope["method"], scope["raw_path"] or scope["path"].encode())
            if route is None:
                await self.upstream.pass_through(scope, receive, send)
            else:
                assert self.discovery is not None, "the lifespan start-up did not run"
                await self.discovery.handle(route, scope, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": "not supported by the sidecar"})

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


async def _alive(send: Send) -> None:
    """Liveness: the process serves requests. No upstream call; LiteLLM has no route of this name."""
    await send_json(send, 200, b'{"status":"ok"}')


def create_app(settings: Settings) -> SidecarApp:
    return SidecarApp(settings)
