"""WebSockets passed through to LiteLLM: the handshake with the caller's own credentials, then every message.

Every WebSocket upgrade, whatever its path, goes to LiteLLM, which decides what it serves: the routes
differ by version (in its source: ``/v1/realtime`` and ``/realtime`` from 1.83.3, ``/openai/v1/realtime``
from 1.88.6, ``/v1/responses`` and ``/responses`` throughout, ``/vertex_ai/live``, ``/anthropic/ws``, the
``/openai/{path}`` and ``/deepgram`` pass-throughs from 1.106.2, ``/v1/live/sessions`` from 1.109.1,
``/v1/realtime/translations`` in 1.110.2), and a list here would lag the next one.

The handshake carries the caller's headers as the HTTP pass-through forwards them
(``forwarding.handshake_request_headers``: its credential - ``Authorization``, ``api-key``, the
``openai-insecure-api-key.*`` subprotocol -, ``OpenAI-Beta``, ``Origin``, minus hop-by-hop, plus
``X-Forwarded-*``) and the caller's subprotocols; LiteLLM's choice among them goes back to the caller. A
refusal before the upgrade (LiteLLM answers 403 with an empty body to a spent key on a paid realtime model;
a redirect, never followed, alike) reaches the caller as LiteLLM's HTTP answer, status, headers and
body, through ASGI's ``websocket.http.response`` extension, shown first to ``hold`` as any passed-through
refusal (the budget marks), then to ``rescue``, which may name another handshake to try instead (a
``Detour``: the budget fallback's free model). LiteLLM unreachable, or a handshake the client towards it
refuses to send: 502; no handshake answer within ``connect_timeout``: 504; a request target that is not a
path (absolute-form, ``GET http://elsewhere/``): 400.

After the upgrade each message goes on as it came, in order, text as text and binary as binary; a close
code and reason go on to the other side (a caller that vanishes without a close frame: an empty close
frame upstream at once; LiteLLM's connection lost without one: the caller's is closed the same way). Bounds,
with clear close codes: a message over ``max_message_bytes`` closes both sides with 1009; no message either
way for ``idle_timeout`` seconds closes both with 1001 "idle timeout"; a side that takes no message for
``idle_timeout`` (its socket full: a send waits until it drains) is given up on, the other closed with 1001
"caller stalled" or "upstream stalled"; a side that does not answer a close within ``CLOSE_TIMEOUT`` seconds,
or cannot even be written it, has its connection cut (the caller's through uvicorn's protocol: closed
the ordinary way, a transport would first write out all it holds, forever to a caller that reads nothing).
In flight per direction: the message being relayed, plus at most ``UPSTREAM_QUEUE`` frames read ahead
from LiteLLM, or the caller's next message (read while one waits to go to LiteLLM, so that a caller that
leaves is noticed at once; uvicorn reads no further until it is taken), and the sockets' write buffers
(a send waits while they are full): a slow reader slows its writer down, nothing queues without bound.

Relay, not tunnel. A byte tunnel after LiteLLM's 101 (nginx's way) has no per-message work and lets the
two ends negotiate extensions; but to count messages, bound their size and relay close codes it would parse
every frame header anyway, and only the sidecar's own HTTP protocol could hand over the raw socket. The
relay speaks WebSocket on both sides with ``websockets`` (uvicorn's ``websockets-sansio`` protocol for the
caller, its asyncio client towards LiteLLM - the library the ``openai`` client's realtime support uses
too): frames are checked on each hop (garbage, bad UTF-8, oversize: each side gets the close code the
RFC names), pings are answered on each hop (uvicorn pings the caller, the client pings LiteLLM, each
every 20 s), and permessage-deflate is never negotiated towards LiteLLM (beside the sidecar, compression
would cost CPU for nothing) and with a caller only if ``ws_per_message_deflate`` allows it (off by default:
16 KB compressed inflate to 16 MiB, some 57 ms of CPU on the shared loop per message, and a socket whose
LiteLLM does not read could hold ~72 MiB). Measured on one connection, 20,000 pipelined echoes through each
(uvloop, 2 shared cores; /tmp scripts, not bench/): 300-byte text messages cost the relay 19 µs of CPU per
message and a bare asyncio byte tunnel 5 µs (14,100 vs 25,800 round trips/s); 16 KB messages 36 vs 26 µs;
each adds about 150 µs to a round trip at the median. A realtime session sends tens of messages a second,
so a core relays hundreds of busy sessions; the relay's extra ~14 µs per message buys the bounds above.
Memory: some 40 KiB per open socket (1,000 more sockets, the process's RSS), 80 KiB where
``ws_per_message_deflate`` lets the caller negotiate compression.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.asyncio.client import ClientConnection, connect
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from sidecar.logs import event
from sidecar.metrics import Metrics
from sidecar.proxy.forwarding import downstream_headers, handshake_request_headers
from sidecar.proxy.upstream import Answer, Hold, UpstreamUnavailable
from sidecar.types import RawHeaders, Receive, Scope, Send

log = logging.getLogger("sidecar.proxy.websocket")

CLOSE_TIMEOUT = 2.0  # seconds LiteLLM has to answer a close before its connection is cut
UPSTREAM_QUEUE = 4  # frames read ahead from LiteLLM before reading pauses
PING_INTERVAL = 20.0  # seconds between keep-alive pings to LiteLLM (uvicorn's default towards the caller)

IDLE = 1001  # the close code of an idle timeout (going away), to both sides
_NO_STATUS = 1005  # a close frame without a code (uvicorn also says it of a caller that vanished)
_ABNORMAL = 1006  # LiteLLM's connection lost without a close frame: the caller's is closed alike
_NOT_A_PATH = json.dumps(
    {
        "error": {
            "message": "the request target must be a path",
            "type": "invalid_request_error",
            "param": None,
            "code": "400",
        }
    },
    separators=(",", ":"),
).encode()
# Handshake headers LiteLLM's 101 carries that belong to its hop: the caller's come from its own handshake.
_OWN_HANDSHAKE = frozenset(
    {b"sec-websocket-accept", b"sec-websocket-extensions", b"sec-websocket-protocol", b"content-length"}
)


def _sendable(code: int) -> bool:
    """Whether a close frame may carry ``code`` (RFC 6455 section 7.4: not 1005, 1006, 1015, ...)."""
    return code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014) or (
        3000 <= code < 5000
    )


def _code_label(code: int) -> str:
    """A close code as a metric label: the RFC's codes as they are, the ranges anyone may pick from
    (3000-3999 registered, 4000-4999 private) as ``3xxx`` and ``4xxx``: a series per code a caller
    chooses would be thousands. (The log line has the code itself.)"""
    return f"{code // 1000}xxx" if 3000 <= code < 5000 else str(code)


@dataclass(frozen=True, slots=True)
class Detour:
    """Another handshake to try for one LiteLLM refused (the budget fallback's): its scope, the headers
    the caller's upgrade gets when LiteLLM accepts it, and ``ended``, told ``served`` or ``refused``."""

    scope: Scope
    marks: RawHeaders
    ended: Callable[[str], None]


Rescue = Callable[[Scope, Answer], Awaitable[Detour | None]]


class _UpstreamConnection(ClientConnection):
    """The client towards LiteLLM, which does not wait for LiteLLM to hang up after a frame it had to
    refuse (garbage, bad UTF-8, oversize): its close frame is written, the connection closed at once and
    the caller told (the library, as a client should, would wait for the server's TCP close)."""

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.protocol.parser_exc is not None and not self.transport.is_closing():
            self.transport.close()


class _Handshake(connect):
    """``connect`` that never follows a redirect: a 3xx from LiteLLM is a refusal like any other, passed
    to the caller as LiteLLM sent it (the HTTP pass-through never follows one either). Followed, the
    caller's ``api-key``, ``x-litellm-api-key`` and key subprotocol would go wherever ``Location`` points:
    the library strips only ``Authorization`` and cookies on a cross-origin redirect."""

    def process_redirect(self, exc: Exception) -> Exception:
        return exc


class WebSocketRelay:
    """Passes callers' WebSockets through to LiteLLM, a relay per socket; nothing shared between them."""

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float,
        idle_timeout: float,
        max_message_bytes: int,
        metrics: Metrics,
    ) -> None:
        parts = urlsplit(base_url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        self._base = (
            f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}"  # Host: its netloc, as upstream_host
        )
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_message_bytes = max_message_bytes
        self._metrics = metrics

    async def handle(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        hold: Hold | None = None,
        rescue: Rescue | None = None,
        accepted: Callable[[Scope], None] | None = None,
    ) -> None:
        """One caller's WebSocket: the handshake with LiteLLM, then the relay until either side closes. A
        refused handshake is shown to ``hold``, then to ``rescue``, which may name another to try; one
        LiteLLM upgrades is told to ``accepted``."""
        if (await receive())["type"] != "websocket.connect":
            return  # the caller left before its handshake was read through
        path = scope["raw_path"].decode("latin-1")
        if not path.startswith("/"):  # absolute-form (``GET http://elsewhere/ HTTP/1.1``): no path on LiteLLM
            self._metrics.request("websocket", 400)
            await self.answer(scope, send, _json_answer(400, _NOT_A_PATH))
            return
        marks: RawHeaders = []
        try:
            upstream = await self._open(scope)
        except InvalidStatus as refused:
            response = refused.response
            answer = Answer(response.status_code, _answer_headers(response.headers), bytes(response.body))
            self._metrics.request("websocket", answer.status)
            shown = await _shown(scope, answer, hold)
            if shown is None:
                return
            detour = await rescue(scope, shown) if rescue is not None else None
            detoured = await self._detour(detour) if detour is not None else None
            if detoured is None:
                await self.answer(scope, send, shown)
                return
            upstream, marks = detoured
        except UpstreamUnavailable as failed:
            self._metrics.request("websocket", failed.status)
            self._metrics.upstream_errors.labels(failed.kind).inc()
            event(log, logging.WARNING, "upstream_error", kind=failed.kind, path=path, error=failed.detail)
            await self.answer(scope, send, _json_answer(failed.status, failed.body()))
            return
        self._metrics.request("websocket", 101)
        if accepted is not None:
            accepted(scope)
        switching = upstream.response
        given = _answer_headers(switching.headers) if switching is not None else []
        accept = [(name, value) for name, value in given if name not in _OWN_HANDSHAKE] + marks
        message: dict[str, Any] = {"type": "websocket.accept", "headers": accept}
        if upstream.subprotocol is not None:
            message["subprotocol"] = upstream.subprotocol
        try:
            await send(message)
        except OSError:  # the caller left during the handshake
            await upstream.close()
            return
        opened = self._metrics.websockets_open
        opened.inc()
        started = time.monotonic()
        try:
            side, code = await _Session(self, receive, send, upstream).run()
        finally:
            opened.dec()
        self._metrics.websocket_closes.labels(side, _code_label(code)).inc()
        event(
            log,
            logging.INFO,
            "websocket_closed",
            path=path,
            closed_by=side,
            code=code,
            seconds=round(time.monotonic() - started, 3),
        )

    async def _open(self, scope: Scope) -> ClientConnection:
        """The handshake with LiteLLM; ``InvalidStatus`` for any answer but 101, a redirect included."""
        query = scope.get("query_string", b"")
        uri = (
            self._base
            + scope["raw_path"].decode("latin-1")
            + ("?" + query.decode("latin-1") if query else "")
        )
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in handshake_request_headers(scope)
        ]
        try:
            return await _Handshake(
                uri,
                additional_headers=headers,
                subprotocols=scope.get("subprotocols") or None,
                user_agent_header=None,  # the caller's own goes with its headers
                proxy=None,  # never a proxy from the environment
                compression=None,
                open_timeout=self.connect_timeout,
                ping_interval=PING_INTERVAL,
                ping_timeout=PING_INTERVAL,
                close_timeout=CLOSE_TIMEOUT,
                max_size=self.max_message_bytes,
                max_queue=UPSTREAM_QUEUE,
                create_connection=_UpstreamConnection,
            )
        except InvalidStatus:
            raise
        except TimeoutError as exc:
            raise UpstreamUnavailable(
                504, "upstream LiteLLM did not answer in time", "timeout", str(exc)
            ) from None
        except InvalidHandshake as exc:
            message = "upstream LiteLLM sent an answer that cannot be passed on"
            raise UpstreamUnavailable(502, message, "invalid", str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - OSError, or a handshake the client will not send
            raise UpstreamUnavailable(
                502, "upstream LiteLLM is unreachable", "unreachable", str(exc)
            ) from None

    async def _detour(self, detour: Detour) -> tuple[ClientConnection, RawHeaders] | None:
        """The handshake ``detour`` names, if LiteLLM accepts it; whoever asked for it is told how it went."""
        try:
            upstream = await self._open(detour.scope)
        except (InvalidStatus, UpstreamUnavailable):
            detour.ended("refused")
            return None
        detour.ended("served")
        return upstream, detour.marks

    async def answer(self, scope: Scope, send: Send, answer: Answer) -> None:
        """An HTTP answer instead of the upgrade (``websocket.http.response``), or - under a server without
        that extension - a plain refusal of the handshake."""
        try:
            if "websocket.http.response" in scope.get("extensions", {}):
                start = {
                    "type": "websocket.http.response.start",
                    "status": answer.status,
                    "headers": answer.headers,
                }
                await send(start)
                await send({"type": "websocket.http.response.body", "body": answer.body})
            else:
                await send({"type": "websocket.close", "code": 1008})
        except OSError:
            pass  # the caller left before its answer


async def _shown(scope: Scope, answer: Answer, hold: Hold | None) -> Answer | None:
    """``answer`` as ``hold`` returns it, when it names its status (``upstream.Hold``)."""
    if hold is None or answer.status not in hold.statuses:
        return answer
    try:
        return await hold.hook(scope, answer)
    except Exception:
        log.exception("answer observer failed")
        return answer


class _Session:
    """One open relay: a task per direction, until one side closes, goes silent too long or breaks."""

    def __init__(
        self, relay: WebSocketRelay, receive: Receive, send: Send, upstream: ClientConnection
    ) -> None:
        self._relay = relay
        self._receive = receive
        self._send = send
        self._upstream = upstream
        self._last = time.monotonic()  # when a message last came, or went, either way
        self._sending = 0  # messages on their way: the socket is not idle, if one stalls that is its bound
        self._up_since = 0.0  # when the message going up now started to (0: none), for ``run``'s bound
        self._down_since = 0.0  # the same for the message going down
        metrics = relay._metrics
        self._count_up = metrics.websocket_messages.labels("up").inc
        self._bytes_up = metrics.websocket_bytes.labels("up").inc
        self._count_down = metrics.websocket_messages.labels("down").inc
        self._bytes_down = metrics.websocket_bytes.labels("down").inc

    async def run(self) -> tuple[str, int]:
        """Relay until the end; who ended it (caller, upstream, idle, or the side given up on for not
        reading: caller_stalled, upstream_stalled) and the close code it gave."""
        up: asyncio.Future[tuple[int, str] | None] | None = asyncio.ensure_future(self._caller_to_upstream())
        down = asyncio.ensure_future(self._upstream_to_caller())
        idle = self._relay.idle_timeout
        try:
            while True:
                now = time.monotonic()
                if self._down_since and now - self._down_since >= idle:  # the caller reads nothing
                    down.cancel()
                    self._abort_caller()
                    await self._cut_upstream(IDLE, "caller stalled")
                    return "caller_stalled", IDLE
                if self._up_since and now - self._up_since >= idle and up is not None:  # nor LiteLLM
                    up.cancel()
                    await self._close_caller(IDLE, "upstream stalled")
                    await self._cut_upstream(IDLE, "upstream stalled")
                    return "upstream_stalled", IDLE
                wait = self._last + idle - now
                sending = self._sending or self._up_since or self._down_since
                if wait <= 0 and sending:
                    since = [t for t in (self._up_since, self._down_since) if t]
                    wait = min(since) + idle - now if since else idle  # on its way: not idleness
                elif wait <= 0:
                    await self._close_caller(IDLE, "idle timeout")
                    await self._cut_upstream(IDLE, "idle timeout")
                    return "idle", IDLE
                tasks = (down,) if up is None else (up, down)
                done, _ = await asyncio.wait(tasks, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
                if down in done:
                    ended = down.result()
                    if ended is None:  # the caller left while a message went down
                        await self._cut_upstream(None)
                        return "caller", _NO_STATUS
                    code, reason = ended  # LiteLLM closed, or its connection broke: the caller is told
                    if _sendable(code):
                        await self._close_caller(code, reason)
                    elif code == _NO_STATUS:  # ASGI's close always has a code: the plain one
                        await self._close_caller(1000, "")
                    return "upstream", code
                if up is not None and up in done:
                    try:
                        left = up.result()
                    except _Stalled:  # LiteLLM reads nothing: the caller is told, LiteLLM cut
                        await self._close_caller(IDLE, "upstream stalled")
                        await self._cut_upstream(IDLE, "upstream stalled")
                        return "upstream_stalled", IDLE
                    if left is None:  # LiteLLM closed while a message went up: its close comes down
                        up = None
                        continue
                    code, reason = left
                    # vanished, or closed without a code: an empty close frame, at once
                    await self._cut_upstream(code if _sendable(code) else None, reason)
                    return "caller", code
        finally:
            for task in (up, down):
                if task is not None:
                    task.cancel()
            await self._cut_upstream(None)  # nothing once closed

    async def _caller_to_upstream(self) -> tuple[int, str] | None:
        """Caller's messages up; its close code and reason when it leaves, ``None`` when LiteLLM closed;
        ``_Stalled`` when LiteLLM takes no message for ``idle_timeout``. A message that fits under LiteLLM's
        write buffer goes at once, with nothing made for it (a task and a timer per message doubled the
        relay's CPU per message); while one waits for LiteLLM to read, the caller's next one (or its leaving)
        is read already: a caller that leaves is noticed at once."""
        receive, upstream, idle = self._receive, self._upstream, self._relay.idle_timeout
        incoming: asyncio.Future[Any] | None = None
        sending: asyncio.Future[None] | None = None
        high = upstream.transport.get_write_buffer_limits()[1]
        try:
            while True:
                message = await (incoming if incoming is not None else receive())
                incoming = None
                kind = message["type"]
                if kind == "websocket.disconnect":
                    return message.get("code", _NO_STATUS), message.get("reason") or ""
                if kind != "websocket.receive":
                    continue
                data = message.get("text")
                if data is None:
                    data = message.get("bytes") or b""
                self._last = time.monotonic()
                self._count_up()
                self._bytes_up(len(data))
                if not upstream.paused and len(data) + upstream.transport.get_write_buffer_size() < high:
                    # The usual case: LiteLLM reads, and the message fits under the write buffer's high
                    # mark, so the send cannot wait for it to drain: no task, no timer. ``run`` still bounds
                    # it (``_up_since``).
                    self._up_since = self._last
                    try:
                        await upstream.send(data)
                    except ConnectionClosed:
                        return None
                    finally:
                        self._up_since = 0.0
                    self._last = time.monotonic()
                    continue
                # LiteLLM pushes back: the caller's next message (or its leaving) is read meanwhile.
                incoming = asyncio.ensure_future(receive())
                started = time.monotonic()
                sending = asyncio.ensure_future(upstream.send(data))
                self._sending += 1
                try:
                    await asyncio.wait((sending, incoming), timeout=idle, return_when=asyncio.FIRST_COMPLETED)
                    if not sending.done():
                        if incoming.done() and incoming.result()["type"] == "websocket.disconnect":
                            continue  # the caller left: its close goes up at once, not after the send
                        await asyncio.wait((sending,), timeout=started + idle - time.monotonic())
                        if not sending.done():
                            raise _Stalled
                finally:
                    self._sending -= 1
                self._last = time.monotonic()
                try:
                    sending.result()
                except ConnectionClosed:
                    return None
        finally:
            if incoming is not None:
                incoming.cancel()
            if sending is not None:
                sending.cancel()

    async def _upstream_to_caller(self) -> tuple[int, str] | None:
        """LiteLLM's messages down; the close code and reason to give the caller when it closes (the
        code the client closed with itself for a broken frame or an oversize message), ``None`` when the
        caller left (or uvicorn closed it itself: its send then raises ``RuntimeError``). A caller that
        takes no message for ``idle_timeout`` is given up on by ``run`` (``_down_since``)."""
        upstream, send = self._upstream, self._send
        try:
            while True:
                data = await upstream.recv()
                self._last = time.monotonic()
                self._count_down()
                self._bytes_down(len(data))
                message = (
                    {"type": "websocket.send", "text": data}
                    if isinstance(data, str)
                    else {"type": "websocket.send", "bytes": data}
                )
                # uvicorn's send waits while the caller reads nothing: ``run`` bounds it (``_down_since``)
                self._down_since = self._last
                try:
                    await send(message)
                except RuntimeError:  # uvicorn closed the caller itself (no pong in time, a bad frame)
                    return None
                finally:
                    self._down_since = 0.0
                self._last = time.monotonic()
        except ConnectionClosed as closed:
            frame = closed.rcvd if closed.rcvd is not None else closed.sent
            if frame is None:
                return _ABNORMAL, ""
            return int(frame.code), frame.reason
        except OSError:  # uvicorn's ClientDisconnected
            return None

    async def _close_caller(self, code: int, reason: str) -> None:
        """The caller's close frame, unless it left already; a caller that reads nothing gets it within
        ``CLOSE_TIMEOUT`` or has its connection cut (uvicorn's send waits until the socket drains)."""
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self._send({"type": "websocket.close", "code": code, "reason": reason})
        except (OSError, RuntimeError):  # the caller left already, or uvicorn closed it itself
            pass
        except TimeoutError:
            self._abort_caller()

    def _abort_caller(self) -> None:
        """Cut the caller's connection. uvicorn closes it when the relay returns, but a transport closed
        that way first writes out what it holds, forever to a caller that reads nothing; an abort drops
        it. The transport is reached as ``inbound.watch_disconnect`` reaches HTTP's: ``receive`` is a
        method of uvicorn's protocol; another server's (or a wrapped ``receive``) is left to its own
        close."""
        protocol = getattr(self._receive, "__self__", None)
        if isinstance(protocol, WebSocketsSansIOProtocol):
            protocol.transport.abort()

    async def _cut_upstream(self, code: int | None, reason: str = "") -> None:
        """LiteLLM's close frame (``None``: an empty one), and its connection cut if the close is not
        answered, or cannot even be written (LiteLLM reads nothing), within ``CLOSE_TIMEOUT``."""
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self._upstream.close(cast(int, code), reason)
        except TimeoutError:
            self._upstream.transport.abort()


class _Stalled(Exception):
    """A side took no message for ``idle_timeout``: the relay gives up on it."""


def _answer_headers(headers: Headers) -> RawHeaders:
    """LiteLLM's handshake answer's headers as they go to the caller (``downstream_headers``)."""
    return downstream_headers(
        (name.encode("latin-1"), value.encode("latin-1")) for name, value in headers.raw_items()
    )


def _json_answer(status: int, body: bytes) -> Answer:
    headers: RawHeaders = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    return Answer(status, headers, body)
