"""Scripted raw-socket upstreams: servers that say exactly the bytes a test gives them, hostile ones too.

``run`` drives the pooled client against a handler in one event loop; ``ScriptedUpstream`` runs a handler
in a thread of its own, for tests that put the real sidecar in front of it. Both count connections and
the requests that reached them, and note when a connection was closed by the client. ``connect``,
``read_answer`` and ``read_response`` are the raw client side: a caller that sends exactly the bytes a test
gives it.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sidecar.proxy.http1 import ConnectionPool

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
GET = b"GET /x HTTP/1.1\r\nhost: t\r\n\r\n"


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return head + await reader.readexactly(int(line.split(b":")[1]))
    if b"transfer-encoding: chunked" in head.lower():
        return head + await reader.readuntil(b"0\r\n\r\n")
    return head


@dataclass
class Stats:
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)  # every request head (and body) that arrived
    closed_by_client: list[float] = field(default_factory=list)  # monotonic times of EOFs from the client

    def __getitem__(self, name: str) -> Any:  # stats["connections"], as the older tests read it
        return getattr(self, name)

    def count(self, marker: bytes) -> int:
        return sum(marker in request for request in self.requests)


def _serving(handler: Handler, stats: Stats) -> Handler:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stats.connections += 1
        original = reader.readuntil

        async def recording_readuntil(separator: bytes = b"\n") -> bytes:
            data = await original(separator)
            if separator == b"\r\n\r\n":
                stats.requests.append(data)
            return data

        reader.readuntil = recording_readuntil  # type: ignore[method-assign,assignment]
        try:
            await handler(reader, writer)
            if reader.at_eof():  # the handler read until the client closed (``await reader.read()``)
                stats.closed_by_client.append(time.monotonic())
        except (asyncio.IncompleteReadError, ConnectionError):
            stats.closed_by_client.append(time.monotonic())
        finally:
            writer.close()

    return serve


def run(handler: Handler, test: Callable[[ConnectionPool, Stats], Awaitable[None]], **pool: Any) -> Stats:
    stats = Stats()

    async def main() -> None:
        server = await asyncio.start_server(_serving(handler, stats), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        options = {"connect_timeout": 2.0, "read_timeout": 2.0, **pool}
        client = ConnectionPool("127.0.0.1", port, False, **options)
        try:
            await test(client, stats)
        finally:
            client.close()
            server.close()
            await server.wait_closed()

    asyncio.run(main())
    return stats


class ScriptedUpstream:
    """A scripted upstream on 127.0.0.1 in a thread of its own: ``with ScriptedUpstream(handler) as up``."""

    def __init__(self, handler: Handler) -> None:
        self.stats = Stats()
        self._handler = handler
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self.url = ""

    def __enter__(self) -> ScriptedUpstream:
        self._thread.start()
        start = asyncio.start_server(_serving(self._handler, self.stats), "127.0.0.1", 0)
        self._server = asyncio.run_coroutine_threadsafe(start, self._loop).result(5)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    def __exit__(self, *exc: Any) -> None:
        async def stop() -> None:
            assert self._server is not None
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def wait_for(self, condition: Callable[[Stats], bool], timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition(self.stats):
                return True
            time.sleep(0.01)
        return condition(self.stats)


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=5)


def read_answer(sock: socket.socket) -> bytes:
    """What arrives until the end of an answer's head (and whatever came with it)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def read_response(sock: socket.socket) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """One whole answer: status, headers (names lower-cased) and body, framed by its content-length, chunked,
    or by the end of the connection. Raises ``ConnectionError`` if the connection ends before a head."""
    data = read_answer(sock)
    if b"\r\n\r\n" not in data:
        raise ConnectionError(f"the connection ended before an answer: {data!r}")
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    headers = [(n.strip().lower(), v.strip()) for n, _, v in (line.partition(b":") for line in lines[1:])]
    named = dict(headers)

    def more() -> bytes:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the connection ended inside an answer")
        return chunk

    if b"content-length" in named:
        length = int(named[b"content-length"])
        while len(rest) < length:
            rest += more()
        return status, headers, rest[:length]
    if named.get(b"transfer-encoding", b"").lower() == b"chunked":
        body = b""
        while True:
            while b"\r\n" not in rest:
                rest += more()
            size_line, rest = rest.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            while len(rest) < size + 2:
                rest += more()
            if size == 0:
                return status, headers, body
            body, rest = body + rest[:size], rest[size + 2 :]
    while chunk := sock.recv(65536):
        rest += chunk
    return status, headers, rest
