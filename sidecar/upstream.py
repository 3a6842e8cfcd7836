"""Requests to LiteLLM on the caller's behalf: the streaming pass-through and the discovery first leg.

Every inference request crosses this path, so it is raw ASGI over the pooled HTTP/1.1 client of
``http1.py`` (chosen by measurement, see the README). That client is shared by all callers and keeps no
state between them: no cookies, no redirects (a 3xx goes back to the caller), no proxy from the
environment, no decompression (compressed bodies stay compressed, byte for byte), no headers of its own.

The request path and query are sent exactly as the caller sent them (``raw_path``, ``query_string``). A
request body is streamed up as it arrives; the answer streams down chunk by chunk as the upstream writes
it. When the caller goes away mid-answer the upstream connection is closed at once. Failing to reach the
upstream gives 502, a timeout 504, both with an OpenAI-style JSON error.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sidecar.forwarding import downstream_headers, upstream_request_headers
from sidecar.http1 import ConnectionPool, Response, UpstreamError, UpstreamTimeout
from sidecar.logs import event
from sidecar.metrics import Metrics
from sidecar.types import RawHeaders, Receive, Scope, Send

log = logging.getLogger("sidecar.upstream")


class UpstreamUnavailable(Exception):
    """The upstream could not be reached (502) or did not answer in time (504)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = "timeout" if status == 504 else "unreachable"

    def body(self) -> bytes:
        """The caller's answer: an OpenAI-style error body."""
        error = {"message": str(self), "type": "upstream_error", "param": None, "code": str(self.status)}
        return json.dumps({"error": error}, separators=(",", ":")).encode()


def _unreachable(what: str) -> UpstreamUnavailable:
    return UpstreamUnavailable(502, f"upstream LiteLLM {what}")


_TIMEOUT_MESSAGE = "upstream LiteLLM did not answer in time"


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


async def send_json(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Upstream:
    """The pooled client for caller requests to LiteLLM. Owned by the app's lifespan."""

    def __init__(
        self, base_url: str, host: str, connect_timeout: float, read_timeout: float, metrics: Metrics
    ) -> None:
        parts = urlsplit(base_url)
        tls = parts.scheme == "https"
        self.host = host
        self._prefix = parts.path.rstrip("/").encode()  # LiteLLM mounted under a path, if any
        self._metrics = metrics
        self._pool = ConnectionPool(
            parts.hostname or "127.0.0.1",
            parts.port or (443 if tls else 80),
            tls,
            connect_timeout,
            read_timeout,
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
    ) -> Response:
        head = self._head(method, raw_path, query, headers)
        try:
            return await self._pool.request(head, body, chunked, head_request=method == "HEAD")
        except UpstreamTimeout:
            raise self._failed(UpstreamUnavailable(504, _TIMEOUT_MESSAGE), raw_path) from None
        except UpstreamError as exc:
            raise self._failed(_unreachable("is unreachable"), raw_path, str(exc)) from None

    def _failed(self, error: UpstreamUnavailable, raw_path: bytes, detail: str = "") -> UpstreamUnavailable:
        self._metrics.upstream_errors.labels(error.kind).inc()
        fields = {"kind": error.kind, "path": raw_path.decode("latin-1")}
        event(log, logging.WARNING, "upstream_error", **fields, **({"error": detail} if detail else {}))
        return error

    async def fetch(self, scope: Scope, raw_path: bytes, query: bytes) -> Answer:
        """GET ``raw_path`` with the caller's own headers; the whole answer, buffered."""
        headers = upstream_request_headers(scope, self.host)
        response = await self._request("GET", raw_path, headers, query)
        try:
            body = await response.read()
        except UpstreamTimeout:
            raise self._failed(UpstreamUnavailable(504, _TIMEOUT_MESSAGE), raw_path) from None
        except UpstreamError as exc:
            raise self._failed(_unreachable("closed the connection"), raw_path, str(exc)) from None
        finally:
            response.release()
        return Answer(response.status, downstream_headers(response.headers), body)

    async def probe(self, path: bytes) -> int:
        """Status of a bare ``GET path`` upstream (no caller headers, no credential), for readiness."""
        response = await self._request("GET", path, [(b"host", self.host.encode("latin-1"))])
        try:
            await response.read()
        finally:
            response.release()
        return response.status

    async def pass_through(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Forward one request as is and stream the answer back."""
        started = time.perf_counter()
        headers = upstream_request_headers(scope, self.host)
        body = _RequestBody(receive)
        data = await body.first()
        chunked = False
        if not any(name == b"content-length" for name, _ in headers):
            if isinstance(data, bytes):
                if data or scope["method"] not in ("GET", "HEAD", "DELETE", "OPTIONS"):
                    headers.append((b"content-length", str(len(data)).encode()))
            elif data is not None:  # a streamed body of unknown length
                headers.append((b"transfer-encoding", b"chunked"))
                chunked = True
        try:
            response = await self._request(
                scope["method"], scope["raw_path"], headers, scope["query_string"], data or None, chunked
            )
        except UpstreamUnavailable as exc:
            self._metrics.request("passthrough", exc.status)
            await send_json(send, exc.status, exc.body())
            return
        self._metrics.passthrough_seconds.observe(time.perf_counter() - started)
        self._metrics.request("passthrough", response.status)
        try:
            await self._stream_down(response, send, receive if body.complete else None)
        finally:
            response.release()

    async def _stream_down(self, response: Response, send: Send, receive: Receive | None) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": downstream_headers(response.headers),
            }
        )
        chunk = await response.chunk()
        if response.complete:
            await send({"type": "http.response.body", "body": chunk})
            return
        # A longer answer: watch for the caller leaving, and close the upstream connection when it does.
        watcher = asyncio.ensure_future(_wait_disconnect(receive)) if receive is not None else None
        if watcher is not None:
            watcher.add_done_callback(lambda task: None if task.cancelled() else response.close())
        try:
            while chunk:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                chunk = await response.chunk()
            if watcher is not None and watcher.done():
                return  # the caller is gone; nothing more to say
            await send({"type": "http.response.body", "body": b""})
        except UpstreamError as exc:
            if watcher is not None and watcher.done():
                return
            # Headers are out; the only honest signal left is an aborted response.
            self._metrics.upstream_errors.labels("stream_broken").inc()
            event(log, logging.WARNING, "upstream_error", kind="stream_broken", error=str(exc))
            raise
        finally:
            if watcher is not None:
                watcher.cancel()


async def _wait_disconnect(receive: Receive | None) -> None:
    assert receive is not None
    while (await receive())["type"] != "http.disconnect":
        pass


class _RequestBody:
    """The caller's request body: bytes when it came in one piece, else a stream sent up as it arrives."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self.complete = False

    async def first(self) -> bytes | AsyncIterator[bytes] | None:
        message = await self._receive()
        if message["type"] == "http.disconnect":
            raise asyncio.CancelledError("client disconnected before sending its request")
        body: bytes = message.get("body", b"")
        if not message.get("more_body", False):
            self.complete = True
            return body or None
        return self._rest(body)

    async def _rest(self, first: bytes) -> AsyncIterator[bytes]:
        if first:
            yield first
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise ConnectionAbortedError("client disconnected while sending its request")
            chunk = message.get("body", b"")
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                self.complete = True
                return
