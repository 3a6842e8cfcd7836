"""MCP over streamable HTTP through the real sidecar, against a scripted upstream that answers as LiteLLM's
``/mcp`` does (the bytes of LiteLLM 1.88.6 in the harness, ``up --beyond-chat``, no MCP server configured).

LiteLLM mounts its MCP app at ``/mcp`` (before 1.110): ``/mcp`` itself gets Starlette's ``307`` to
``/mcp/``, whose ``Location`` is built from the ``Host`` LiteLLM was sent. A ``POST`` is answered with
Server-Sent Events and an ``Mcp-Session-Id``, which the client sends back on every later request; a
``GET`` with it opens the server's stream, held open with a ping comment every 15 s, for as long as the
client stays; ``DELETE`` ends the session."""

from __future__ import annotations

import asyncio
import itertools
import time
from asyncio import StreamReader as Reader
from asyncio import StreamWriter as Writer

import httpx

from tests.conftest import SidecarFactory
from tests.scripted import ScriptedUpstream, connect, read_request

SESSION = b"61de5482eab441d3b7463e01b5fe79e8"
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    },
}
INITIALIZED = (
    b'{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-06-18","capabilities":{},'
    b'"serverInfo":{"name":"litellm-mcp-server","version":"1.0.0"}}}'
)
PING_EVERY = 0.2  # seconds (LiteLLM: 15)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def header(request: bytes, name: bytes) -> bytes:
    for line in request.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return b""


async def litellm_mcp(reader: Reader, writer: Writer) -> None:
    """LiteLLM's ``/mcp`` mount, as it answers on the wire."""
    while True:
        request = await read_request(reader)
        method, path = request.split(b" ")[:2]
        if path == b"/mcp":
            location = b"http://" + header(request, b"host") + b"/mcp/"
            writer.write(
                b"HTTP/1.1 307 Temporary Redirect\r\nserver: uvicorn\r\ncontent-length: 0\r\n"
                b"location: %s\r\nvary: Origin\r\n\r\n" % location
            )
        elif method == b"POST":
            writer.write(
                b"HTTP/1.1 200 OK\r\nserver: uvicorn\r\ncache-control: no-cache, no-transform\r\n"
                b"connection: keep-alive\r\ncontent-type: text/event-stream\r\nmcp-session-id: %s\r\n"
                b"x-accel-buffering: no\r\nvary: Origin\r\nTransfer-Encoding: chunked\r\n\r\n" % SESSION
            )
            writer.write(chunk(b"event: message\r\ndata: " + INITIALIZED + b"\r\n\r\n") + b"0\r\n\r\n")
        elif method == b"GET":
            assert header(request, b"mcp-session-id") == SESSION
            writer.write(
                b"HTTP/1.1 200 OK\r\nserver: uvicorn\r\ncache-control: no-cache, no-transform\r\n"
                b"connection: keep-alive\r\ncontent-type: text/event-stream\r\nmcp-session-id: %s\r\n"
                b"x-accel-buffering: no\r\nvary: Origin\r\nTransfer-Encoding: chunked\r\n\r\n" % SESSION
            )
            while True:  # until the client goes: the write fails, or the read below sees its close
                await writer.drain()
                await asyncio.sleep(PING_EVERY)
                writer.write(chunk(b": ping - %f\r\n\r\n" % time.time()))
        else:  # DELETE
            writer.write(
                b"HTTP/1.1 200 OK\r\nserver: uvicorn\r\ncontent-type: application/json\r\n"
                b"mcp-session-id: %s\r\ncontent-length: 0\r\nvary: Origin\r\n\r\n" % SESSION
            )
        await writer.drain()


def test_an_mcp_session_through_the_sidecar(sidecar: SidecarFactory) -> None:
    with ScriptedUpstream(litellm_mcp) as upstream, httpx.Client(timeout=5) as client:
        url = sidecar(upstream_url=upstream.url, policy="blocked", admin_key=None)
        key = {
            "Authorization": "Bearer sk-caller-0000000000",
            "accept": "application/json, text/event-stream",
        }
        # The 307 to where LiteLLM's points for a caller that reaches it directly - the caller's own
        # scheme and host: relative, so a TLS terminator's https stays https
        moved = client.post(url + "/mcp", json=INITIALIZE, headers=key)
        assert moved.status_code == 307
        assert moved.headers["location"] == "/mcp/"
        assert (moved.headers["vary"], moved.content) == ("Origin", b"")
        # followed, it stays on the sidecar; the POST is answered with events and a session
        started = client.post(url + "/mcp", json=INITIALIZE, headers=key, follow_redirects=True)
        assert str(started.url) == url + "/mcp/"
        assert started.headers["content-type"] == "text/event-stream"
        assert started.headers["mcp-session-id"] == SESSION.decode()
        assert "connection" not in started.headers  # hop-by-hop: the sidecar's own connection
        assert started.text == "event: message\r\ndata: " + INITIALIZED.decode() + "\r\n\r\n"
        # the session goes back upstream as the client sends it
        ended = client.delete(url + "/mcp/", headers={**key, "mcp-session-id": SESSION.decode()})
        assert (ended.status_code, ended.headers["mcp-session-id"]) == (200, SESSION.decode())
        assert header(upstream.stats.requests[-1], b"mcp-session-id") == SESSION


def test_the_servers_event_stream_is_held_open_and_relayed_as_it_comes(sidecar: SidecarFactory) -> None:
    """The ``GET`` stream: each ping reaches the client when LiteLLM sends it, not held back, for as long as
    the client listens; when the client goes, the sidecar closes LiteLLM's stream."""
    with ScriptedUpstream(litellm_mcp) as upstream:
        url = sidecar(upstream_url=upstream.url, policy="blocked", admin_key=None)
        with connect(url) as sock:
            sock.sendall(
                b"GET /mcp/ HTTP/1.1\r\nhost: x\r\nauthorization: Bearer sk-caller-0000000000\r\n"
                b"accept: text/event-stream\r\nmcp-session-id: %s\r\n\r\n" % SESSION
            )
            arrived, data = [], b""
            while data.count(b": ping") < 5:
                part = sock.recv(65536)
                assert part, data
                data += part
                arrived += [time.monotonic()] * part.count(b": ping")
            head = data.split(b"\r\n\r\n", 1)[0].lower()
        assert head.startswith(b"http/1.1 200") and b"mcp-session-id: " + SESSION in head
        assert b"transfer-encoding: chunked" in head and b"connection: keep-alive" not in head
        gaps = [later - earlier for earlier, later in itertools.pairwise(arrived)]
        assert min(gaps) > PING_EVERY / 2, gaps  # one by one, as sent: nothing buffered
        assert upstream.wait_for(lambda stats: len(stats.closed_by_client) == 1, timeout=5)


def test_a_quiet_event_stream_is_bounded_only_by_the_read_timeout(
    sidecar: SidecarFactory,
) -> None:
    """Between two pings the stream is silent; the sidecar's read timeout bounds that silence, nothing
    else does (here 1 s of silence under a 3 s read timeout)."""

    async def quiet(reader: Reader, writer: Writer) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        for _ in range(2):
            await writer.drain()
            await asyncio.sleep(1.0)
            writer.write(chunk(b": ping\r\n\r\n"))
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    with ScriptedUpstream(quiet) as upstream:
        url = sidecar(upstream_url=upstream.url, policy="blocked", admin_key=None, read_timeout=3)
        answer = httpx.get(url + "/mcp/", headers={"mcp-session-id": SESSION.decode()}, timeout=10)
        assert (answer.status_code, answer.text) == (200, ": ping\r\n\r\n" * 2)
