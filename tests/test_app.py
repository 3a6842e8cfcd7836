"""The ASGI application before its lifespan start-up and after its shutdown: what a caller gets then."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from sidecar.app import SidecarApp
from sidecar.settings import load_settings
from sidecar.types import Message


def asked(app: SidecarApp, path: str, method: str = "GET") -> tuple[int, Any]:
    """``app``'s answer to one request, without a server: its status and parsed body."""
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"authorization", b"Bearer sk-caller")],
    }
    asyncio.run(app(scope, receive, send))
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], json.loads(body)


@pytest.fixture
def app() -> SidecarApp:
    # Nothing listens there: a request that reached LiteLLM would fail with 502, not 503.
    return SidecarApp(load_settings(None, upstream_url="http://127.0.0.1:9", admin_key="sk-admin"))


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("GET", "/sidecar/v1/budget")],
)
def test_a_request_before_start_up_gets_503_saying_so(app: SidecarApp, method: str, path: str) -> None:
    status, body = asked(app, path, method)
    assert status == 503
    assert body["error"]["type"] == "sidecar_not_started"
    assert "lifespan start-up did not run" in body["error"]["message"]


def test_health_and_readiness_answer_before_start_up(app: SidecarApp) -> None:
    assert asked(app, "/healthz") == (200, {"status": "ok"})
    assert asked(app, "/readyz") == (503, {"status": "not ready"})
    assert asyncio.run(app.readiness()) == (False, {"status": "not started"})


def test_after_shutdown_a_request_gets_503_not_a_closed_client(app: SidecarApp) -> None:
    async def started_and_stopped() -> None:
        await app.startup()
        assert app.running is not None and app.running.admin is not None
        await app.shutdown()

    asyncio.run(started_and_stopped())
    assert app.running is None
    assert asked(app, "/v1/models")[0] == 503
    assert asked(app, "/readyz") == (503, {"status": "draining"})
