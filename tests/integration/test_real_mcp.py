"""Streamable-HTTP MCP (``/mcp``) through the sidecar against real LiteLLM, compared with LiteLLM direct.

The harness configures no MCP server. LiteLLM still answers ``/mcp``: up to 1.109 its MCP app is mounted
at ``/mcp`` (``/mcp`` gets Starlette's 307 to ``/mcp/``; the aggregate endpoint then serves an MCP session
with no tools: ``initialize`` answered as Server-Sent Events with an ``Mcp-Session-Id``, the ``GET`` event
stream held open); 1.110 serves the bare ``/mcp`` and refuses a key granted no MCP server (403). A spent
key gets, on 1.88.6, ``500 {"error":"MCP request failed","details":"Budget has been exceeded! ..."}``:
not LiteLLM's budget error shape, so it passes unmarked, as any other error answer. Whatever
a version answers a caller directly, the caller gets through the sidecar: status, body, content type,
session; a 307's ``Location`` names the host the caller used (LiteLLM writes it from the ``Host`` it was
sent).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urljoin

import httpx
import pytest

from tests.integration.conftest import REPORT, LiteLLM
from tests.test_mcp import INITIALIZE

pytestmark = pytest.mark.integration

ACCEPT = {"accept": "application/json, text/event-stream", "mcp-protocol-version": "2025-06-18"}
PRINCIPALS = ["MASTER", "KEY_HEALTHY", "KEY_TEAM_BROKE", "KEY_KEY_BROKE"]


def _key(litellm: LiteLLM, principal: str) -> str:
    return litellm.master_key if principal == "MASTER" else litellm.keys[principal]


def _session(base: str, key: str) -> list[Any]:
    """One MCP session as a client has it, and what it saw at each step."""
    seen: list[Any] = []
    headers = {"Authorization": f"Bearer {key}", **ACCEPT}
    with httpx.Client(timeout=10) as client:
        moved = client.post(base + "/mcp", json=INITIALIZE, headers=headers)
        # Where the client is sent (LiteLLM's absolute Location, the sidecar's relative one, resolved)
        target = (
            urljoin(base + "/mcp", moved.headers.get("location", "")) if "location" in moved.headers else ""
        )
        seen.append(("/mcp", moved.status_code, target.replace(base, "BASE")))
        started = client.post(base + "/mcp", json=INITIALIZE, headers=headers, follow_redirects=True)
        assert str(started.url).startswith(base)  # a redirect never took the client elsewhere
        session = started.headers.get("mcp-session-id")
        seen.append(("initialize", started.status_code, started.headers.get("content-type"), started.text))
        if session is None:
            return seen
        headers["mcp-session-id"] = session
        endpoint = str(started.url)
        listed = client.post(
            endpoint, json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, headers=headers
        )
        seen.append(
            ("tools/list", listed.status_code, listed.headers.get("mcp-session-id") == session, listed.text)
        )
        with client.stream("GET", endpoint, headers=headers, timeout=httpx.Timeout(10, read=2)) as events:
            seen.append(("GET", events.status_code, events.headers.get("content-type")))
            with pytest.raises(httpx.ReadTimeout):  # held open, quiet until LiteLLM's first ping (15 s)
                events.read()
        ended = client.delete(endpoint, headers=headers)
        seen.append(("DELETE", ended.status_code))
    return seen


@pytest.mark.parametrize("principal", PRINCIPALS)
def test_an_mcp_session_through_the_sidecar_is_litellms(litellm: LiteLLM, principal: str) -> None:
    key = _key(litellm, principal)
    direct = _session(litellm.url, key)
    through = _session(litellm.sidecar("free_only"), key)
    assert through == direct
    REPORT[f"{litellm.version} mcp {principal}"] = ", ".join(str(step[:2]) for step in direct)
