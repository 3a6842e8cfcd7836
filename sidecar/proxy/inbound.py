"""The callers' side of the wire: uvicorn's httptools protocol with a bound on the request head.

uvicorn's httptools protocol takes request lines and headers of any size (its h11 one stops at 16 KiB):
a 32 MiB header block went upstream, a 128 MiB one took 34 s of parsing and held the event loop - every
other caller with it. Here the request line and headers of each request are counted as the bytes arrive,
before the parser accumulates them; past ``max_header_bytes`` the caller gets ``431 Request Header Fields
Too Large`` (as nginx answers 400/431) and the connection is closed. Nothing reaches the app or LiteLLM.

The count is exact where the head starts a read (the usual case: a new connection or a keep-alive
request) and ends at its blank line; a head that begins in the middle of a read (pipelining) is counted
from the next read on, so the bound holds to within one read (at most 256 KiB with uvloop).

An answer's head and the start of its body leave in one write (``_HeadHeld``): uvicorn writes the head as
soon as the app sends ``http.response.start`` and the body with the next message - two system calls and two
TCP segments for every answer whose body is at hand (a JSON answer, a stream's first chunk), where nginx
writes one. The head is held until the body's first bytes, or the end of the loop's turn at the latest, so
an answer whose body takes longer (a stream waiting for its first token) gets its head as soon as before,
one turn of the loop later. Once the head is out the request's writes go to the transport itself again (a
stream's chunks pass no Python of ours on their way out).

A caller that goes away is told to the app without a task (``watch_disconnect``): ASGI says it only
through ``receive``, which someone must be awaiting - a task per open stream, most of a KiB each, for an
event that rarely comes. Here the protocol, which sees the connection close first, calls the request's
watcher itself. The protocol keeps its own state in slots: uvicorn's instance dict stays within the 30
keys Python shares between instances (past them every connection gets a dict of its own, 1.3 KiB more).
"""

from __future__ import annotations

import asyncio
import json
import logging
import weakref
from collections.abc import Callable
from typing import Any, Protocol

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from sidecar.logs import event
from sidecar.proxy.capacity import AT_CAPACITY

log = logging.getLogger("sidecar.proxy.inbound")

_END_OF_HEAD = b"\r\n\r\n"


class Cancellable(Protocol):
    def cancel(self) -> None: ...


# uvicorn's own methods, called by name where every request passes (``super()`` is looked up per call).
_data_received = HttpToolsProtocol.data_received
_on_headers_complete = HttpToolsProtocol.on_headers_complete
_on_message_complete = HttpToolsProtocol.on_message_complete


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, refusing request heads over :attr:`max_header_bytes`, and answering
    ``503`` to requests on connections past :attr:`max_connections` (``capacity.py``) - except the
    sidecar's own health routes, which are always answered. It tells the request being served that its
    caller went away (:func:`watch_disconnect`)."""

    __slots__ = ("_head_bytes", "_in_head", "_on_leave", "_refused", "_tail", "_watched")

    max_header_bytes = 64 * 1024
    max_connections = 1 << 30
    always_answered: frozenset[bytes] = frozenset()
    on_overload: Callable[[], None] = staticmethod(lambda: None)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # the next bytes belong to a request line or headers
        self._head_bytes = 0
        self._tail = b""  # the last bytes of the head so far: its blank line may straddle two reads
        self._refused = False
        self._watched: RequestResponseCycle | None = None  # the request whose caller is watched
        self._on_leave: Cancellable | None = None

    def watch(self, cycle: RequestResponseCycle, on_leave: Cancellable) -> None:
        self._watched, self._on_leave = cycle, on_leave

    def unwatch(self, on_leave: Cancellable) -> None:
        if self._on_leave is on_leave:
            self._watched = self._on_leave = None

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        cycle, on_leave = self._watched, self._on_leave
        if on_leave is not None and cycle is not None and not cycle.response_complete:
            self._watched = self._on_leave = None
            on_leave.cancel()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._in_head:
            seen = self._tail + data if self._tail else data
            end = seen.find(_END_OF_HEAD)
            if end < 0:
                self._head_bytes += len(data)
                self._tail = seen[-3:]
            else:
                self._head_bytes += end + 4 - len(self._tail)
            if self._head_bytes > self.max_header_bytes:
                self._refuse()
                return
        _data_received(self, data)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        self._tail = b""
        if len(self.connections) > self.max_connections and self._path() not in self.always_answered:
            self.on_overload()
            app, self.app = self.app, _at_capacity
            try:
                super().on_headers_complete()
            finally:
                self.app = app
            return
        _on_headers_complete(self)
        cycle = self.cycle
        if cycle is not None and cycle.transport is self.transport:  # a new request's, not a pipelined one
            cycle.transport = _HeadHeld(cycle, self.transport, self.loop)  # type: ignore[assignment]

    def handle_websocket_upgrade(self) -> None:
        """A WebSocket upgrade: past the bound, the same 503 as any request, before uvicorn's WebSocket
        protocol takes the connection (its answer never passes ``on_headers_complete``'s check)."""
        if len(self.connections) > self.max_connections:
            self.on_overload()
            self.transport.write(
                b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\nretry-after: 1\r\nconnection: close\r\n\r\n%s"
                % (len(_AT_CAPACITY), _AT_CAPACITY)
            )
            self.transport.close()
            return
        super().handle_websocket_upgrade()
        # The connection is the WebSocket protocol's now; this one is never called again (no
        # ``connection_lost``, where uvicorn lets go of its parser). The parser calls this protocol's
        # methods, so each holds the other: let go here, or a full collection would have to.
        self.parser = None  # type: ignore[assignment]

    def _path(self) -> bytes:
        return bytes(self.url).split(b"?", 1)[0]

    def on_message_complete(self) -> None:
        self._in_head = True
        _on_message_complete(self)

    def _refuse(self) -> None:
        limit = self.max_header_bytes
        client = self.client[0] if self.client else None
        event(log, logging.WARNING, "request_head_too_large", limit=limit, client=client)
        message = f"the request line and headers exceed {limit} bytes"
        error = {"message": message, "type": "invalid_request_error", "param": None, "code": "431"}
        body = json.dumps({"error": error}, separators=(",", ":")).encode()
        cycle = self.cycle
        if cycle is None or cycle.response_complete:  # never in the middle of another answer
            self.transport.write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
            )
        self._refused = True
        self.transport.close()


class _HeadHeld:
    """The caller's transport as one request's cycle sees it until its head is out: the first write (the
    answer's head, or a ``100 Continue``) is held until the next one, and both go out as one; at the end of
    the loop's turn the head goes out alone. Then the cycle writes to the transport itself. Writes keep
    their order: the release is queued before anything a later request of the connection (pipelined)
    could write."""

    __slots__ = ("_cycle", "_held", "_loop", "_transport")

    def __init__(
        self, cycle: RequestResponseCycle, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop
    ) -> None:
        self._cycle = weakref.ref(cycle)  # it holds this object: no reference cycle
        self._transport = transport
        self._loop: asyncio.AbstractEventLoop | None = loop  # ``None`` once a write was held
        self._held = b""

    def write(self, data: bytes) -> None:
        held = self._held
        if held:
            self._held = b""
            self._transport.writelines((held, data))  # one writev under uvloop, no copy of the body
            self._done()
        elif self._loop is not None:
            self._held = data
            self._loop.call_soon(self._release)
            self._loop = None
        else:
            self._transport.write(data)

    def _release(self) -> None:
        held = self._held
        if held:
            self._held = b""
            if not self._transport.is_closing():  # the caller may have gone meanwhile: nothing to say
                self._transport.write(held)
            self._done()

    def _done(self) -> None:
        """The head is out: the cycle's writes go to the transport itself."""
        cycle = self._cycle()
        if cycle is not None and cycle.transport is self:  # type: ignore[comparison-overlap]
            cycle.transport = self._transport

    def close(self) -> None:
        self._release()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()


def watch_disconnect(receive: Callable[[], Any], on_leave: Cancellable) -> BoundedHttpToolsProtocol | None:
    """Have ``on_leave.cancel()`` called as soon as the caller goes away before the answer to the request
    whose ``receive`` this is is complete (``receive`` would then say ``http.disconnect``). Call it once the
    request body is read, or before: a caller already gone is told on the next turn of the loop. The
    protocol that will call it (for :meth:`BoundedHttpToolsProtocol.unwatch`), or ``None`` when
    ``receive`` is not a request served by it (another server, a wrapped ``receive``): then only
    ``receive`` tells."""
    cycle = getattr(receive, "__self__", None)
    if not isinstance(cycle, RequestResponseCycle):
        return None
    protocol = cycle.transport.get_protocol()
    if not isinstance(protocol, BoundedHttpToolsProtocol):
        return None
    if cycle.disconnected:
        asyncio.get_running_loop().call_soon(on_leave.cancel)
    else:
        protocol.watch(cycle, on_leave)
    return protocol


_AT_CAPACITY = json.dumps(
    {
        "error": {
            "message": AT_CAPACITY,
            "type": "service_unavailable",
            "param": None,
            "code": "503",
        }
    },
    separators=(",", ":"),
).encode()


async def _at_capacity(scope: Any, receive: Any, send: Any) -> None:
    """The answer past the connection bound: OpenAI's error shape, retry after a second, connection closed
    (its descriptor is the one the sidecar needs back)."""
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(_AT_CAPACITY)).encode()),
        (b"retry-after", b"1"),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": _AT_CAPACITY})


def bounded_protocol(
    max_header_bytes: int,
    max_connections: int = 1 << 30,
    always_answered: frozenset[bytes] = frozenset(),
    on_overload: Callable[[], None] = lambda: None,
) -> type[BoundedHttpToolsProtocol]:
    """The protocol class for uvicorn's ``http`` setting, with its bounds."""
    return type(
        "BoundedHttpToolsProtocol",
        (BoundedHttpToolsProtocol,),
        {
            "max_header_bytes": max_header_bytes,
            "max_connections": max_connections,
            "always_answered": always_answered,
            "on_overload": staticmethod(on_overload),
        },
    )
