"""A small pooled HTTP/1.1 client for the pass-through: asyncio protocol + httptools' parser.

Why not aiohttp: measured on the pass-through, aiohttp's request machinery took about 53 % of the
sidecar's CPU; this client does the same work - send the caller's request as is, hand back status, headers
and body chunks as they arrive - for about a tenth of aiohttp's CPU per request (0.006 against 0.08 ms, see
the README). It does only what a reverse proxy needs and nothing a shared client must not do: no cookie
jar, no redirects, no proxy or netrc from the environment, no decompression, no headers of its own. The
request goes out exactly as given, the answer comes back as sent (chunked framing removed; the server
re-frames it; trailer fields are dropped, as a proxy may).

The rules it keeps, the ones httpcore and h11 keep:

- **Reuse only at a clean message boundary.** A connection goes back to the pool only when the parser
  stands exactly at the end of one complete answer, the whole request was sent by the framing its own head
  declares (``Content-Length`` or chunked; a head that declares a body it does not carry never leaves its
  connection reusable), both sides keep the
  connection alive and no byte came after the answer. Anything else closes it: bytes after the end of an
  answer (in the same read or later), bytes arriving while it sits idle, an answer cut short or abandoned,
  an answer to HEAD (the parser cannot be told it has no body), an early answer during an upload. Nothing
  the parser sees after the end of an answer is given to anyone.
- **An early answer is the answer.** An upstream may answer before it has read the request body (413 for
  an upload too large, 401): the body stops there - at once, whether the upload waits for the caller's
  next bytes or for the upstream to read - the answer goes to the caller, and the connection is closed,
  never pooled: the upstream still expects the rest of the body (h11 too takes an answer while the body
  is being sent, and reuses a connection only once both sides have finished their message). An upstream
  that closes such a connection resets it; what it answered first is still read, as httpcore reads the
  answer after a failed write (``_Connection._read_what_is_left``).
- **Retry only what provably did no harm, once.** A request is sent again only if its method is
  idempotent (GET, HEAD, OPTIONS), its body is in memory, it went out on a *reused* connection and that
  connection closed before any byte of an answer came back (the upstream had dropped it while idle). The
  retry goes out once, on a new connection. Anything else - a POST above all: an LLM request executed
  twice is paid twice - fails with :class:`UpstreamClosed` and is sent exactly once.
- **Bounded.** ``connect_timeout`` bounds connecting, ``read_timeout`` every wait for the next bytes of
  the answer, ``max_header_bytes`` the status line and headers of an answer (more is an
  :class:`UpstreamProtocolError`); reading pauses while more than 1 MiB of the answer waits unread
  (back-pressure to the upstream). An idle connection older than ``idle_timeout`` (default 4 s, under
  uvicorn's 5 s keep-alive) is closed by a timer, not only when next taken.
- **Refuse what a proxy cannot pass on honestly**: ``101 Switching Protocols`` (the sidecar never asks for
  an upgrade), a transfer coding other than ``chunked``, a malformed answer - each an
  :class:`UpstreamProtocolError` that names the cause.
- **Abandon on request**: a :class:`Cancel` given to :meth:`ConnectionPool.request` lets another task
  close the exchange at once (the caller went away), while the request waits for headers or streams.
"""

from __future__ import annotations

import asyncio
import copy
import errno
import os
import ssl
import time
from collections.abc import AsyncIterator

import httptools

from sidecar.proxy.capacity import LOCAL_ERRNOS

_HIGH_WATER = 1024 * 1024
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS"})


class UpstreamError(Exception):
    """The upstream could not be reached or broke off the answer."""


class UpstreamTimeout(UpstreamError):
    """The upstream did not connect or answer within its timeout."""


class UpstreamClosed(UpstreamError):
    """The upstream closed the connection before or while answering."""


class LocalExhausted(UpstreamError):
    """The sidecar itself ran out of descriptors or memory to connect: not LiteLLM's fault."""


class UpstreamProtocolError(UpstreamError):
    """The upstream's answer cannot be passed on: malformed, too large a head, an unasked-for upgrade."""


class Cancelled(Exception):
    """The exchange was abandoned through its :class:`Cancel` (the caller went away)."""


class _Stale(UpstreamClosed):
    """The connection closed before any byte of the answer came back."""


class _Stray(Exception):
    """Raised inside the parser to stop it: a byte came after the end of the answer."""


def _copy_of(error: BaseException) -> BaseException:
    """A copy of ``error`` (its class, arguments and attributes), or ``error`` itself if it cannot be
    copied (a constructor that takes other arguments than it keeps)."""
    try:
        return copy.copy(error)
    except Exception:  # noqa: BLE001 - the error itself will do
        return error


class Cancel:
    """Lets another task abandon one exchange: :meth:`cancel` closes its connection at once, and the
    waiting :meth:`ConnectionPool.request` or :meth:`Response.chunk` raises :class:`Cancelled`."""

    __slots__ = ("_connection", "_exchange", "cancelled")

    def __init__(self) -> None:
        self._connection: _Connection | None = None
        self._exchange = 0
        self.cancelled = False

    def _bind(self, connection: _Connection) -> None:
        self._connection, self._exchange = connection, connection.exchange

    def cancel(self) -> None:
        """Idempotent; does nothing once the connection went back to the pool or on to another exchange."""
        self.cancelled = True
        connection = self._connection
        if connection is not None and connection.in_use and connection.exchange == self._exchange:
            connection.fail(Cancelled("the exchange was abandoned"))


class _Connection(asyncio.Protocol):
    # One per open stream, for the whole stream: slots, and no buffer kept when none is waiting.
    __slots__ = (
        "_body",
        "_buffered",
        "_codings",
        "_deadline",
        "_drained",
        "_eof_delimited",
        "_error",
        "_fd",
        "_has_length",
        "_head_bytes",
        "_loop",
        "_max_header_bytes",
        "_parser",
        "_paused",
        "_timer",
        "_uploader",
        "_waiter",
        "_write_paused",
        "_write_timeout",
        "closed",
        "complete",
        "exchange",
        "head_request",
        "headers",
        "headers_done",
        "idle_since",
        "in_use",
        "received_any",
        "request_sent",
        "status",
        "transport",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, write_timeout: float, max_header_bytes: int) -> None:
        self._loop = loop
        self._write_timeout = write_timeout
        self._max_header_bytes = max_header_bytes
        self._write_paused = False
        self._drained: asyncio.Future[None] | None = None
        self.transport: asyncio.Transport | None = None
        self._fd = -1  # the socket, read directly only for what a reset left unread (plain TCP only)
        self.closed = False  # never to be reused: closed, or not at a clean message boundary
        self.idle_since = 0.0
        self.exchange = 0  # counts the exchanges on this connection
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[None] | None = None
        self._deadline = 0.0  # when the pending wait times out
        self._timer: asyncio.TimerHandle | None = None  # fires at or before ``_deadline``
        self._uploader: asyncio.Task[object] | None = None  # the task sending a streamed body, meanwhile
        self.begin(False)
        self.in_use = False

    def begin(self, head_request: bool) -> None:
        """Start an exchange on this connection."""
        self.in_use = True
        self.exchange += 1
        self.head_request = head_request
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.complete = False
        self.received_any = False
        self.request_sent = False
        self._head_bytes = 0  # every byte received before the head was whole: at least the head's size
        self._codings: list[bytes] = []  # the answer's transfer codings
        self._has_length = False  # whether it declared a content-length
        self._eof_delimited = False
        self._body: list[bytes] = []
        self._buffered = 0
        self._paused = False
        self._error: BaseException | None = None

    # --- asyncio.Protocol -------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None and transport.get_extra_info("sslcontext") is None:
            self._fd = sock.fileno()

    def data_received(self, data: bytes) -> None:
        if not self.in_use or self.complete:  # bytes while idle, or after the end of the answer
            self._poison()
            return
        self.received_any = True
        if not self.headers_done:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _Stray):
                self._poison()  # the answer is whole; what came after it is nobody's
            else:
                self.fail(
                    exc.__context__ or UpstreamProtocolError(f"upstream sent a malformed answer: {exc}")
                )
        except httptools.HttpParserUpgrade:
            self.fail(UpstreamProtocolError("upstream switched protocols unasked"))
        except httptools.HttpParserError as exc:
            self.fail(UpstreamProtocolError(f"upstream sent a malformed answer: {exc}"))
        else:
            if not self.headers_done and self._head_bytes > self._max_header_bytes:
                self.fail(self._head_too_large())

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            self._lost(exc)
        finally:
            # The parser calls this connection's methods, so each holds the other: a reference cycle that
            # only a full collection (``collector.py``) would free, with the transport and the answer's
            # buffers. Nothing is parsed after the connection is lost; as uvicorn does with its own.
            self._parser = None  # type: ignore[assignment]

    def discard(self) -> None:
        """Let go of a connection whose connect was given up after it was made (uvloop closes its socket
        without telling it). Each of the parser and the transport refers back to it; dropped, it is freed
        at once rather than by a full collection."""
        self.closed = True
        self.transport = None
        self._parser = None  # type: ignore[assignment]

    def _lost(self, exc: Exception | None) -> None:
        if exc is not None and self.in_use and not self.complete:
            self._read_what_is_left()
        self._stop_upload()
        self.closed = True
        self.resume_writing()
        if not self.in_use or self.complete:
            return
        if self.headers_done and self._eof_delimited:
            self.complete = True  # the body of an answer without length ends with the connection
            self._wake()
        elif not self.received_any:
            self.fail(_Stale("upstream closed the connection before answering"))
        else:
            self.fail(UpstreamClosed("upstream closed the connection in the middle of its answer"))

    def _read_what_is_left(self) -> None:
        """Read what the upstream sent before the connection broke, still in the kernel's receive buffer.

        An upstream that answers a request early (``413`` before reading an upload) and closes a
        connection it has not read to the end makes its kernel reset it. The next write fails, and the
        transport stops reading at once, before the answer that came first was read: the caller would get
        502 "closed before answering" for an answer that is there. A blocking client reads it after the
        failed write (httpcore does; Linux keeps received bytes readable after a reset); here the socket
        is still open while the transport reports the loss, so the bytes are read from it then, at most
        ``_LEFT_OVER`` of them, and parsed as if they had come the usual way. Not through TLS, whose
        records only the transport could decrypt."""
        fd, left = self._fd, _LEFT_OVER
        while fd >= 0 and left > 0 and not self.complete and self._error is None:
            try:
                data = os.read(fd, min(left, 65536))
            except OSError:  # nothing more (EAGAIN), or the reset itself once the bytes are read
                return
            if not data:
                return
            left -= len(data)
            self.data_received(data)

    def _stop_upload(self) -> None:
        """The upstream answered, or went, while a streamed request body was being sent: the task sending
        it stops at once - whether it waits for the caller's next bytes or for the upstream to read - and
        the answer (or the failure) is the caller's now (``ConnectionPool._send``)."""
        task, self._uploader = self._uploader, None
        if task is not None:
            task.cancel()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        drained = self._drained
        if drained is not None and not drained.done():
            drained.set_result(None)

    async def drain(self) -> None:
        """Wait until the transport's write buffer is low again (a slow upstream reading an upload)."""
        if self._write_paused and not self.closed:
            self._drained = self._loop.create_future()
            timer = self._loop.call_later(self._write_timeout, _time_out, self._drained)
            try:
                await self._drained
            finally:
                timer.cancel()
                self._drained = None

    # --- httptools callbacks ----------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.complete:
            raise _Stray  # a second message on the heels of the answer: stop the parser here

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.headers_done:  # after the head they are trailer fields: not passed on
            self.headers.append((name, value))
            if len(name) in _FRAMING_NAME_LENGTHS:  # the framing, noted as it passes: no second loop
                lowered = name.lower()
                if lowered == b"transfer-encoding":
                    self._codings.append(value.strip().lower())
                elif lowered == b"content-length":
                    self._has_length = True

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        limit = self._max_header_bytes
        # Every byte received so far fitting the bound, the head does too: it is measured only when not.
        if self._head_bytes > limit and _head_size(self.headers) > limit:
            raise self._head_too_large()
        if 100 <= status < 200 and status != 101:  # 100 Continue and friends: the real answer follows
            # What was counted stays an upper bound of the next head's size (see ``data_received``).
            self._head_bytes -= _head_size(self.headers)
            self.headers = []
            self._codings = []
            self._has_length = False
            return
        codings, has_length = self._codings, self._has_length
        if status == 101:
            raise UpstreamProtocolError("upstream switched protocols unasked (101)")
        if codings and codings != [b"chunked"]:
            shown = b", ".join(codings).decode("latin-1")
            raise UpstreamProtocolError(
                f"upstream used a transfer coding the sidecar cannot pass on ({shown})"
            )
        self.status = status
        self.headers_done = True
        self._stop_upload()  # an early answer: the upload stops here
        self._eof_delimited = (
            not codings and not has_length and status not in (204, 304) and not self.head_request
        )
        if self.head_request:  # no body follows, whatever the headers say
            self.complete = True
            self.closed = True  # the parser cannot be told; never reuse this connection
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self.complete:
            raise _Stray  # a body after an answer to HEAD
        self._body.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if not self.headers_done:  # the end of a 1xx answer
            return
        self.complete = True
        if not self._parser.should_keep_alive():
            self.closed = True
        self._wake()

    # --- used by the pool and Response ------------------------------------------------------------------
    def _head_too_large(self) -> UpstreamProtocolError:
        return UpstreamProtocolError(f"upstream sent more than {self._max_header_bytes} bytes of headers")

    def _poison(self) -> None:
        self.closed = True
        self.disarm()
        if self.transport is not None:
            self.transport.close()

    def fail(self, error: BaseException) -> None:
        if self._error is None:  # the first cause is the real one; what follows is its consequence
            self._error = error
        self._poison()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None  # a done future kept here could tie its awaiter's frames to this connection
            if not waiter.done():
                waiter.set_result(None)

    def arrival(self, timeout: float) -> asyncio.Future[None]:
        """A future done when something new happens (headers, body, end, error), at most ``timeout``
        seconds from now (then it fails with ``UpstreamTimeout``). A future, not a coroutine: a stream
        waits once per chunk, and each coroutine frame in the wait would be one more object the cycle
        collector's young generation walks per open stream (``collector.py``).

        Rather than a timer per wait (made, then cancelled a moment later when the chunk comes - at
        thousands of open streams a good part of the loop's work), one timer per connection stays armed,
        and a wait only moves the deadline. When the timer fires before the deadline of the wait then
        pending, it is armed again for that deadline; with no wait pending it lapses, and the next wait
        arms it. The timer outlives the exchange too: a pooled connection keeps it until it lapses, so a
        kept-alive connection serving request after request makes no timer per request (one made and
        cancelled per request - a libuv timer started, stopped and closed - was about 8 % of a JSON
        pass-through's CPU); only a closed connection drops it (``disarm``)."""
        loop = self._loop
        waiter = self._waiter = loop.create_future()
        deadline = self._deadline = loop.time() + timeout
        timer = self._timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self._timer = loop.call_at(deadline, self._on_timer)
        return waiter

    def _on_timer(self) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._loop.time() >= self._deadline:
            self._waiter = None
            waiter.set_exception(UpstreamTimeout("upstream did not answer in time"))
        else:
            self._timer = self._loop.call_at(self._deadline, self._on_timer)

    def disarm(self) -> None:
        """Drop the read timer, and a wait's future that is over: a closed connection holds neither (one
        still pending is for ``_wake`` to end)."""
        waiter = self._waiter
        if waiter is not None and waiter.done():
            self._waiter = None
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def take_body(self) -> bytes:
        body = self._body
        data = b"".join(body) if len(body) != 1 else body[0]
        body.clear()  # a list frees its storage here (a deque would take a new 0.5 KiB block)
        self._buffered = 0
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    def raise_error(self) -> None:
        error = self._error
        if error is not None:
            # A copy goes up: the kept one would gather the frames it passes through, this connection's
            # among them - a reference cycle per failed or abandoned exchange, holding the connection, its
            # transports and the caller's request until a full collection (``collector.py``). Not bound
            # to a name here: this frame, in the copy's traceback, would hold it.
            raise _copy_of(error)

    @property
    def reusable(self) -> bool:
        return self.complete and self.request_sent and not self.closed and not self._body


_CHUNKED = -1
_LEFT_OVER = 1024 * 1024  # the most bytes read from a socket after its transport broke (an early answer)
_FRAMING_NAME_LENGTHS = (len(b"content-length"), len(b"transfer-encoding"))


def _head_size(headers: list[tuple[bytes, bytes]]) -> int:
    """The size of a head's fields as counted against ``max_header_bytes``."""
    return sum(len(name) + len(value) + 4 for name, value in headers)


def _declared_length(head: bytes) -> int:
    """The body length a request head declares: its ``Content-Length``, ``_CHUNKED``, or 0 for none.
    Header names are matched lower-case, as ASGI servers give them and ``Upstream`` writes them (a
    name in another case is not found: the request is then held to declare no body)."""
    if b"\r\ntransfer-encoding:" in head:
        return _CHUNKED
    at = head.find(b"\r\ncontent-length:")
    if at < 0:
        return 0
    value = head[at + 17 : head.find(b"\r\n", at + 17)]
    try:
        return int(value)
    except ValueError:
        return -2  # matches nothing that was sent: the connection is never reused


def _whole(declared: int, sent: int, chunked: bool) -> bool:
    """Whether a request went out whole by the framing its own head declared. One that did not (a length
    declared and not sent, a chunked body sent raw) leaves the upstream reading the next request on that
    connection as the rest of this one: such a connection is never reused."""
    return declared == _CHUNKED if chunked else declared == sent


def _time_out(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(UpstreamTimeout("upstream did not answer in time"))


class Response:
    """An answer being received. Read its body with :meth:`chunks` or :meth:`read`, then :meth:`release`."""

    def __init__(self, pool: ConnectionPool, connection: _Connection) -> None:
        self._pool = pool
        self._connection: _Connection | None = connection
        self.status = connection.status
        self.headers = connection.headers

    @property
    def complete(self) -> bool:
        connection = self._connection
        return connection is None or (connection.complete and not connection._body)

    def ready(self) -> bytes | None:
        """The part of the body that arrived since the last (``b""`` at the end), or ``None`` if none did:
        then wait for ``arrival()``."""
        connection = self._connection
        if connection is None:
            raise UpstreamError("the answer was already released")
        if connection._body:
            return connection.take_body()
        if connection.complete:
            return b""
        if connection._error is not None:
            connection.raise_error()
        return None

    def arrival(self) -> asyncio.Future[None]:
        """Done when more of the answer came, or failed past the read timeout."""
        connection = self._connection
        if connection is None:
            raise UpstreamError("the answer was already released")
        return connection.arrival(self._pool.read_timeout)

    async def chunk(self) -> bytes:
        """The next part of the body as it arrived (``b""`` at the end)."""
        while (part := self.ready()) is None:
            await self.arrival()
        return part

    async def chunks(self) -> AsyncIterator[bytes]:
        while chunk := await self.chunk():
            yield chunk

    async def read(self) -> bytes:
        """The whole body. (Its own loop, no generator and coroutine per part: a small answer is most often
        whole by the time its head is, and discovery reads one per request.)"""
        parts = []
        while True:
            part = self.ready()
            if part is None:
                await self.arrival()
            elif part:
                parts.append(part)
            else:
                return parts[0] if len(parts) == 1 else b"".join(parts)

    def release(self) -> None:
        """Give the connection back if it stands at a clean message boundary, else close it. Idempotent."""
        connection = self._connection
        if connection is not None and connection.reusable:
            self._connection = None
            self._pool._put(connection)
        else:
            self.close()

    def close(self) -> None:
        """Abandon the answer: the connection is closed, never reused. Once the answer is released, the
        connection belongs to the pool again and this does nothing."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.in_use = False
            connection._poison()


class ConnectionPool:
    """Keep-alive connections to one upstream ``host:port`` (``https`` when ``tls``)."""

    def __init__(
        self,
        host: str,
        port: int,
        tls: bool,
        connect_timeout: float,
        read_timeout: float,
        idle_timeout: float = 4.0,
        max_idle: int = 512,
        max_header_bytes: int = 64 * 1024,
    ) -> None:
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.idle_timeout = idle_timeout
        self.max_idle = max_idle
        self.max_header_bytes = max_header_bytes
        self._ssl = ssl.create_default_context() if tls else None
        self._idle: list[_Connection] = []  # oldest first; taken from the end
        self._sweeper: asyncio.TimerHandle | None = None

    async def request(
        self,
        head: bytes,
        body: bytes | AsyncIterator[bytes] | None,
        chunked: bool = False,
        method: str = "GET",
        cancel: Cancel | None = None,
    ) -> Response:
        """Send ``head`` (request line and headers, ending in a blank line) and ``body``; await the answer.

        ``method`` is the request's (it decides whether a retry is safe, and HEAD has no body);
        ``chunked``: frame a streamed body with chunked transfer encoding (the head must say so)."""
        retry_allowed = method in IDEMPOTENT and (body is None or isinstance(body, bytes))
        fresh_only = False
        while True:
            connection = None if fresh_only else self._idle_connection()
            reused = connection is not None
            if connection is None:
                connection = await self._connect()
            connection.begin(method == "HEAD")
            if cancel is not None:
                if cancel.cancelled:
                    connection.in_use = False
                    connection._poison()
                    raise Cancelled("the exchange was abandoned")
                cancel._bind(connection)
            try:
                await self._send(connection, head, body, chunked)
                while not connection.headers_done:
                    connection.raise_error()
                    await connection.arrival(self.read_timeout)
                connection.raise_error()
                return Response(self, connection)
            except _Stale:
                connection.in_use = False
                if reused and retry_allowed:
                    fresh_only = True  # once, on a new connection
                    continue
                raise
            except BaseException:
                connection.in_use = False
                connection._poison()
                raise

    def _idle_connection(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            transport = connection.transport
            alive = not connection.closed and transport is not None and not transport.is_closing()
            if alive and now - connection.idle_since < self.idle_timeout:
                return connection
            connection._poison()
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        made: list[_Connection] = []  # what a connect given up at the last moment made, to let go of

        def connection() -> _Connection:
            made.append(_Connection(loop, self.read_timeout, self.max_header_bytes))
            return made[-1]

        connected = None
        try:
            # asyncio.timeout, not wait_for: no task of its own per connection (a stream opens one each)
            async with asyncio.timeout(self.connect_timeout):
                _, connected = await loop.create_connection(
                    connection,
                    self.host,
                    self.port,
                    ssl=self._ssl,
                    server_hostname=self.host if self._ssl else None,
                )
        except TimeoutError:
            raise UpstreamTimeout("could not connect to the upstream in time") from None
        except OSError as exc:
            if exc.errno in LOCAL_ERRNOS:
                cause = errno.errorcode[exc.errno]
                raise LocalExhausted(f"out of local resources to connect ({cause})") from None
            raise UpstreamError(f"could not connect to the upstream ({type(exc).__name__})") from None
        finally:
            if connected is None:  # connected, then given up (the caller left): uvloop closed the socket
                for each in made:
                    each.discard()
        return connected

    async def _send(
        self, connection: _Connection, head: bytes, body: bytes | AsyncIterator[bytes] | None, chunked: bool
    ) -> None:
        transport = connection.transport
        assert transport is not None
        if connection.closed or transport.is_closing():
            raise _Stale("upstream closed the connection before the request was sent")
        declared = _declared_length(head)
        if body is None or isinstance(body, bytes):
            transport.write(head + body if body else head)
            connection.request_sent = _whole(declared, len(body) if body else 0, chunked)
            return
        transport.write(head)
        sent = 0
        task = connection._uploader = asyncio.current_task()
        try:
            async for part in body:
                if connection.headers_done:
                    return  # an early answer (413, 401, ...): it is the answer; the rest is not sent
                if connection.closed:
                    connection.raise_error()
                    raise UpstreamClosed("upstream closed the connection while the request body was sent")
                if part:
                    sent += len(part)
                    transport.write(b"%x\r\n%s\r\n" % (len(part), part) if chunked else part)
                    await connection.drain()
        except asyncio.CancelledError:
            # Stopped by the connection (an answer came, or the connection went: ``_stop_upload``), and by
            # nothing else: the request is over as far as sending goes; its answer or failure follows.
            if connection._uploader is not None or task is None or task.uncancel():
                raise
            return
        finally:
            connection._uploader = None
        if chunked:
            transport.write(b"0\r\n\r\n")
        connection.request_sent = _whole(declared, sent, chunked)

    def _put(self, connection: _Connection) -> None:
        connection.in_use = False  # its read timer stays: the next exchange moves it (``wait``)
        connection.idle_since = time.monotonic()
        if len(self._idle) >= self.max_idle:
            self._idle.pop(0)._poison()
        self._idle.append(connection)
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(self.idle_timeout, self._sweep)

    def _sweep(self) -> None:
        """Close the connections idle longer than ``idle_timeout``; run again when the next one expires."""
        self._sweeper = None
        now = time.monotonic()
        idle = self._idle
        while idle and (idle[0].closed or now - idle[0].idle_since >= self.idle_timeout):
            idle.pop(0)._poison()
        if idle:
            delay = max(idle[0].idle_since + self.idle_timeout - now, 0.01)
            self._sweeper = asyncio.get_running_loop().call_later(delay, self._sweep)

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for connection in self._idle:
            connection._poison()
        self._idle.clear()
