"""Requests to LiteLLM on the caller's behalf: the streaming pass-through and the discovery first leg.

Every inference request crosses this path, so it is raw ASGI over the pooled HTTP/1.1 client of
``http1.py`` (chosen by measurement, see the README). That client is shared by all callers and keeps no
state between them: no cookies, no redirects (a 3xx goes back to the caller; a ``Location`` that names
LiteLLM's own address is made relative, ``forwarding.relocated``), no proxy from the
environment, no decompression (compressed bodies stay compressed, byte for byte), no headers of its own.

The request path and query are sent exactly as the caller sent them (``raw_path``, ``query_string``). A
request body is streamed up as it arrives, never held whole (a 512 MiB upload moved the sidecar's peak RSS
by about 1 MiB); an answer that comes before the body is all sent (a refusal from the head alone, such as
LiteLLM's ``max_request_size_mb``) ends the upload and is the caller's answer. The answer streams down chunk
by chunk as the upstream writes it. When the caller goes away mid-answer the upstream connection is closed
at once. Failing to reach the upstream gives 502, a timeout 504, both with an OpenAI-style JSON error.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from sidecar.logs import event
from sidecar.metrics import Metrics
from sidecar.proxy.capacity import AT_CAPACITY
from sidecar.proxy.forwarding import (
    built_request_headers,
    downstream_headers,
    relocated,
    upstream_request_headers,
)
from sidecar.proxy.http1 import (
    Cancel,
    Cancelled,
    ConnectionPool,
    LocalExhausted,
    Response,
    UpstreamClosed,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from sidecar.proxy.inbound import BoundedHttpToolsProtocol, Cancellable, watch_disconnect
from sidecar.types import AbortedResponse, RawHeaders, Receive, Scope, Send

log = logging.getLogger("sidecar.proxy.upstream")
T = TypeVar("T")

_GRACE = 0.05  # seconds an exchange runs before its caller is watched for a disconnect


# The most bytes of a small error answer the sidecar reads (LiteLLM's are a few hundred bytes): what a
# ``Hold`` holds back, and what discovery reads of an error answer.
SMALL_ANSWER = 64 * 1024


class StreamBroken(AbortedResponse):
    """LiteLLM broke off an answer whose head the caller already has: the response is aborted."""


class UpstreamUnavailable(Exception):
    """LiteLLM could not be reached or gave no usable answer (502), or none in time (504)."""

    def __init__(self, status: int, message: str, kind: str, detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind  # the label of sidecar_upstream_errors_total
        self.detail = detail  # what went wrong, for the operator (readiness, logs), never for the caller

    def body(self) -> bytes:
        """The caller's answer: an OpenAI-style error body."""
        error = {"message": str(self), "type": "upstream_error", "param": None, "code": str(self.status)}
        return json.dumps({"error": error}, separators=(",", ":")).encode()


def _unavailable(error: UpstreamError) -> UpstreamUnavailable:
    """What the caller is told for a failure of the pooled client; the detail goes to the log only."""
    detail = str(error)
    if isinstance(error, UpstreamTimeout):
        return UpstreamUnavailable(504, "upstream LiteLLM did not answer in time", "timeout", detail)
    if isinstance(error, UpstreamProtocolError):
        message = "upstream LiteLLM sent an answer that cannot be passed on"
        return UpstreamUnavailable(502, message, "invalid", detail)
    if isinstance(error, LocalExhausted):
        return UpstreamUnavailable(503, AT_CAPACITY, "local_exhausted", detail)
    if isinstance(error, UpstreamClosed):
        message = "upstream LiteLLM closed the connection before answering"
        return UpstreamUnavailable(502, message, "closed", detail)
    return UpstreamUnavailable(502, "upstream LiteLLM is unreachable", "unreachable", detail)


@dataclass(frozen=True, slots=True)
class Answer:
    """A complete upstream answer, as the caller would receive it."""

    status: int
    headers: RawHeaders
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def json(self, limit: int = 64 * 1024 * 1024) -> Any:
        """The body as JSON (decompressing gzip/deflate), or ``None`` if it is not JSON."""
        raw = self.body
        encoding = (self.header(b"content-encoding") or b"identity").strip().lower()
        try:
            if encoding in (b"gzip", b"x-gzip"):
                raw = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(raw, limit)
            elif encoding == b"deflate":
                raw = zlib.decompressobj().decompress(raw, limit)
            elif encoding != b"identity":
                return None
            return json.loads(raw)
        except (ValueError, zlib.error):
            return None


@dataclass(frozen=True, slots=True)
class Hold:
    """Which passed-through answers are held back, and who is shown them.

    An answer whose status is in ``statuses`` is read before anything of it is sent, up to
    ``SMALL_ANSWER`` bytes (one that declares a larger length is not read ahead at all). Whole within that,
    it is shown to ``hook``, which returns the answer to send - the same, or with headers added - or
    ``None``: then it is not sent, and the hook keeps it (to send it later, or something else). Past that,
    it goes to the caller as it came, unshown. No other answer is held or read ahead."""

    statuses: frozenset[int]
    hook: Callable[[Scope, Answer], Awaitable[Answer | None]]


async def send_json(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Upstream:
    """The pooled client for caller requests to LiteLLM. Owned by the app's lifespan."""

    def __init__(
        self,
        base_url: str,
        *,
        host: str,
        connect_timeout: float,
        read_timeout: float,
        metrics: Metrics,
        max_header_bytes: int = 64 * 1024,
        max_idle: int = 512,
    ) -> None:
        parts = urlsplit(base_url)
        tls = parts.scheme == "https"
        self.host = host
        self._host = host.encode("latin-1")
        self._prefix = parts.path.rstrip("/").encode()  # LiteLLM mounted under a path, if any
        self._metrics = metrics
        self._pool = ConnectionPool(
            parts.hostname or "127.0.0.1",
            parts.port or (443 if tls else 80),
            tls,
            connect_timeout,
            read_timeout,
            max_header_bytes=max_header_bytes,
            max_idle=max_idle,
        )

    async def close(self) -> None:
        self._pool.close()

    def _head(self, method: str, raw_path: bytes, query: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
        target = self._prefix + raw_path + (b"?" + query if query else b"")
        lines = [method.encode("ascii"), b" ", target, b" HTTP/1.1\r\n"]
        for name, value in headers:
            lines += (name, b": ", value, b"\r\n")
        lines.append(b"\r\n")
        return b"".join(lines)

    async def _request(
        self,
        method: str,
        raw_path: bytes,
        headers: list[tuple[bytes, bytes]],
        query: bytes = b"",
        body: bytes | AsyncIterator[bytes] | None = None,
        chunked: bool = False,
        cancel: Cancel | None = None,
    ) -> Response:
        head = self._head(method, raw_path, query, headers)
        try:
            return await self._pool.request(head, body, chunked, method, cancel)
        except UpstreamError as exc:
            raise self._failed(exc, raw_path) from None

    def _failed(self, exc: UpstreamError, raw_path: bytes) -> UpstreamUnavailable:
        error = _unavailable(exc)
        self._metrics.upstream_errors.labels(error.kind).inc()
        path = raw_path.decode("latin-1")
        event(log, logging.WARNING, "upstream_error", kind=error.kind, path=path, error=str(exc))
        return error

    async def fetch(self, scope: Scope, raw_path: bytes, query: bytes) -> Answer:
        """GET ``raw_path`` with the caller's own headers (no framing: it has no body); the whole answer,
        buffered."""
        headers = built_request_headers(scope, self._host)
        response = await self._request("GET", raw_path, headers, query)
        try:
            body = await response.read()
        except UpstreamError as exc:
            raise self._failed(exc, raw_path) from None
        finally:
            response.release()
        return Answer(response.status, downstream_headers(response.headers), body)

    async def probe(self, path: bytes) -> int:
        """Status of a bare ``GET path`` upstream (no caller headers, no credential), for readiness."""
        response = await self._request("GET", path, [(b"host", self._host)])
        try:
            await response.read()
        finally:
            response.release()
        return response.status

    async def pass_through(
        self, scope: Scope, receive: Receive, send: Send, hold: Hold | None = None
    ) -> None:
        """Forward one request as is and stream the answer back (a small error answer ``hold`` names is
        held back and shown to it first).

        Once the whole request is read, the caller is watched (``CallerWatch``): if it goes away, the
        upstream connection is closed at once (within ``_GRACE`` seconds under another server than the
        sidecar's), whether the answer's headers have come or it is streaming (a model still generating
        stops being billed for a caller no one waits for). While the answer streams, nothing of the
        request is held (its headers, its body: the whole conversation of a chat), nor the answer's head
        once it is passed on."""
        cancel = Cancel()
        watch = CallerWatch(receive, cancel)
        response = await self._send_up(scope, receive, send, cancel, watch)
        if response is None:
            return
        try:
            await self._stream_down(scope, response, send, watch, hold)
        except Cancelled:
            self._metrics.abandoned.inc()
        finally:
            watch.stop()
            response.release()

    async def _send_up(
        self, scope: Scope, receive: Receive, send: Send, cancel: Cancel, watch: CallerWatch
    ) -> Response | None:
        """Send the request; the answer once its head came, or ``None`` when the caller left or got an
        error answer."""
        started = time.perf_counter()
        headers = upstream_request_headers(scope, self._host)
        body = _RequestBody(receive, watch.arm)
        try:
            data = await body.first()
        except Cancelled:
            self._metrics.abandoned.inc()
            return None
        chunked = False
        if not any(name == b"content-length" for name, _ in headers):
            if isinstance(data, bytes):
                if data or scope["method"] not in ("GET", "HEAD", "DELETE", "OPTIONS"):
                    headers.append((b"content-length", str(len(data)).encode()))
            elif data is not None:  # a streamed body of unknown length
                headers.append((b"transfer-encoding", b"chunked"))
                chunked = True
        try:
            method, target, query = scope["method"], scope["raw_path"], scope["query_string"]
            response = await self._request(method, target, headers, query, data or None, chunked, cancel)
        except Cancelled:
            watch.stop()
            self._metrics.abandoned.inc()
            return None
        except UpstreamUnavailable as exc:
            watch.stop()
            self._metrics.request("passthrough", exc.status)
            await send_json(send, exc.status, exc.body())
            return None
        self._metrics.passthrough_seconds.observe(time.perf_counter() - started)
        self._metrics.request("passthrough", response.status)
        return response

    async def _stream_down(
        self, scope: Scope, response: Response, send: Send, watch: CallerWatch, hold: Hold | None
    ) -> None:
        headers = downstream_headers(response.headers)
        if 300 <= response.status < 400 or response.status == 201:  # the answers that carry a Location
            headers = relocated(headers, self._host, self._prefix)
        if response.status in (204, 304):  # no body follows; a length would make the server wait for one
            headers = [(name, value) for name, value in headers if name != b"content-length"]
        ahead = b""  # what was read before the head is sent
        if (
            hold is not None
            and response.status in hold.statuses
            and _declared_length(headers) <= SMALL_ANSWER
        ):
            try:
                ahead = await _read_up_to(response, SMALL_ANSWER)
            except UpstreamError as exc:
                watch.stop()
                error = self._failed(exc, scope["raw_path"])
                await send_json(send, error.status, error.body())
                return
            if response.complete and len(ahead) <= SMALL_ANSWER:
                watch.stop()
                await self._held(hold, scope, Answer(response.status, headers, ahead), send)
                return
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        del headers  # the head is out: a stream keeps no copy of it (LiteLLM's come to 1-2 KiB)
        response.headers.clear()
        try:
            chunk = ahead or response.ready()  # a JSON answer is often whole already: no coroutine
            if chunk is None:
                chunk = await response.chunk()
            if response.complete:
                watch.stop()  # the upstream's part is over: nothing left to abandon
                await send({"type": "http.response.body", "body": chunk})
                return
            while chunk:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                part = response.ready()  # no coroutine per chunk: ``Response.arrival``
                while part is None:
                    await response.arrival()
                    part = response.ready()
                chunk = part
            watch.stop()
            await send({"type": "http.response.body", "body": b""})
        except UpstreamError as exc:
            # Headers are out; the only honest signal left is an aborted response.
            self._metrics.upstream_errors.labels("stream_broken").inc()
            event(log, logging.WARNING, "upstream_error", kind="stream_broken", error=str(exc))
            raise StreamBroken(str(exc)) from exc

    async def _held(self, hold: Hold, scope: Scope, answer: Answer, send: Send) -> None:
        """A small answer held back whole: shown to the hook, then sent as the hook returns it, if it does."""
        try:
            shown = await hold.hook(scope, answer)
        except Exception:
            log.exception("answer observer failed")
            shown = answer
        if shown is not None:
            await send({"type": "http.response.start", "status": shown.status, "headers": shown.headers})
            await send({"type": "http.response.body", "body": shown.body})


async def _read_up_to(response: Response, limit: int) -> bytes:
    """The answer's body as far as it comes within ``limit`` bytes (one chunk past it, if it goes on)."""
    parts: list[bytes] = []
    size = 0
    while size <= limit and not response.complete:
        chunk = await response.chunk()
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)


def _declared_length(headers: RawHeaders) -> int:
    """The ``content-length`` an answer declares; 0 without one (a stream: read to see), more than any
    limit for one that is not a number."""
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return SMALL_ANSWER + 1
    return 0


class CallerWatch:
    """Cancels the exchange (``cancel``: a :class:`Cancel`, or anything with a ``cancel()``, such as
    discovery's task) when the caller disconnects.

    Armed once the request body is read (``receive`` is free then), stopped once the upstream's answer
    is complete or abandoned. Under the sidecar's own protocol the protocol calls ``cancel`` itself when
    the connection closes (``inbound.watch_disconnect``): no task, nothing per stream but a reference.
    Elsewhere (another server, a wrapped ``receive``) a task of its own waits on ``receive``; it starts
    only when the exchange outlives ``_GRACE`` seconds: most answers are over sooner, and a task per
    request would cost about a fifth of the pass-through's CPU; a caller that left earlier is seen as soon
    as the task starts (the server remembers the disconnect). ASGI servers answer ``receive`` with
    ``http.disconnect`` after the response too, so the watch must be stopped before the last part of the
    answer is sent."""

    __slots__ = ("_cancel", "_receive", "_server", "_task", "_timer")

    def __init__(self, receive: Receive, cancel: Cancel | Cancellable) -> None:
        self._receive = receive
        self._cancel = cancel
        self._server: BoundedHttpToolsProtocol | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Future[None] | None = None

    def arm(self) -> None:
        if self._timer is None and self._server is None:
            self._server = watch_disconnect(self._receive, self._cancel)
            if self._server is None:
                self._timer = asyncio.get_running_loop().call_later(_GRACE, self._start)

    def _start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self._cancel.cancel()

    def stop(self) -> None:
        if self._server is not None:
            self._server.unwatch(self._cancel)
            self._server = None
        if self._timer is not None:
            self._timer.cancel()
        task = self._task
        if task is not None and not task.done():
            task.cancel()


class LeavingCaller:
    """Cancels the task serving a request, made in it, if the caller goes away before :meth:`stop`; for
    answers that are more than one exchange (discovery, the budget view). The upstream requests that task
    made are closed, loads it shares with other callers go on for them. The request body must not be
    needed: ``receive`` is the watch's. Used as::

        leaving = LeavingCaller(receive)
        try:
            answer = await work()
        except asyncio.CancelledError:
            if not leaving.gone():
                raise
            answer = None  # nobody left to answer
        finally:
            leaving.stop()

    No coroutine of its own around the work, and under the sidecar's server nothing but this object: it
    is made for every discovery request."""

    __slots__ = ("_server", "_task", "_watch", "left")

    def __init__(self, receive: Receive) -> None:
        self._task = asyncio.current_task()
        self.left = False
        self._watch: CallerWatch | None = None
        # The sidecar's own server calls ``cancel`` itself; under another, a watch's task (past the grace).
        self._server = watch_disconnect(receive, self)
        if self._server is None:
            self._watch = CallerWatch(receive, self)
            self._watch.arm()

    def cancel(self) -> None:
        if self._task is not None and not self.left:
            self.left = True
            self._task.cancel()

    def gone(self) -> bool:
        """In an ``except CancelledError``: whether the cancellation is the caller's leaving. It then no
        longer counts against the task, which goes on to its end."""
        if not self.left:
            return False
        if self._task is not None:
            self._task.uncancel()
        return True

    def stop(self) -> None:
        if self._server is not None:
            self._server.unwatch(self)
            self._server = None
        elif self._watch is not None:
            self._watch.stop()
            self._watch = None  # it holds this object: no cycle left behind


class _RequestBody:
    """The caller's request body: bytes when it came in one piece, else a stream sent up as it arrives."""

    def __init__(self, receive: Receive, on_complete: Callable[[], None]) -> None:
        self._receive = receive
        self._on_complete = on_complete

    async def first(self) -> bytes | AsyncIterator[bytes] | None:
        message = await self._receive()
        if message["type"] == "http.disconnect":
            raise Cancelled("the caller disconnected before sending its request")
        body: bytes = message.get("body", b"")
        if not message.get("more_body", False):
            self._on_complete()
            return body or None
        return self._rest(body)

    async def _rest(self, first: bytes) -> AsyncIterator[bytes]:
        if first:
            yield first
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise Cancelled("the caller disconnected while sending its request")
            chunk = message.get("body", b"")
            if not message.get("more_body", False):
                self._on_complete()
                if chunk:
                    yield chunk
                return
            if chunk:
                yield chunk
