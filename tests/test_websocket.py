"""WebSockets through the sidecar: the handshake, every message both ways, closes, bounds, hostile ends.

Upstreams are either a real ``websockets`` server (``WsUpstream``) or a scripted one writing raw frames
(``ScriptedUpstream`` with ``wsraw.accept``); callers are the ``websockets`` client or a raw socket
(``wsraw.RawCaller``) that sends exactly the frames a test builds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qsl

import httpx
import pytest
import uvicorn
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.http11 import Response
from websockets.sync.client import connect

from sidecar.metrics import Metrics
from sidecar.proxy.websocket import WebSocketRelay
from tests.conftest import SidecarFactory
from tests.fake_litellm import KEYS, FakeLiteLLM
from tests.scripted import Handler, ScriptedUpstream
from tests.servers import ServerThread
from tests.test_collector import cycles_left_by
from tests.test_operations import _env, closed_port, metric
from tests.wsraw import (
    BINARY,
    CLOSE,
    CONTINUATION,
    PING,
    PONG,
    TEXT,
    RawCaller,
    accept,
    close_code,
    close_frame,
    frame,
    read_frame,
    unused_port,
)

Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter


class WsUpstream:
    """A well-behaved WebSocket server in a thread of its own; each connection runs ``handler``."""

    def __init__(self, handler: Any, **options: Any) -> None:
        self.seen: list[ServerConnection] = []
        self.closes: list[tuple[int | None, str | None, float]] = []
        self._handler = handler
        self._options = options
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.url = ""

    async def _serve(self, connection: ServerConnection) -> None:
        self.seen.append(connection)
        try:
            await self._handler(connection)
        finally:
            await connection.wait_closed()
            self.closes.append((connection.close_code, connection.close_reason, time.monotonic()))

    def __enter__(self) -> WsUpstream:
        self._thread.start()

        async def start() -> Any:
            return await serve(self._serve, "127.0.0.1", 0, **self._options)

        self._server = asyncio.run_coroutine_threadsafe(start(), self._loop).result(5)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    def __exit__(self, *exc: Any) -> None:
        async def stop() -> None:
            self._server.close()
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def wait_closed(self, count: int = 1, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while len(self.closes) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return len(self.closes) >= count


async def echo(connection: ServerConnection) -> None:
    async for message in connection:
        await connection.send(message)


@pytest.fixture
def echoing() -> Iterator[WsUpstream]:
    with WsUpstream(echo) as upstream:
        yield upstream


def in_turn(*answers: bytes) -> Handler:
    """An upstream that reads each connection's request head, answers it with the next of ``answers`` as
    given (bytes on the wire) and closes."""
    left = iter(answers)

    async def answer(reader: Reader, writer: Writer) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(next(left))
        await writer.drain()
        writer.close()

    return answer


def ws(url: str) -> str:
    return url.replace("http://", "ws://", 1)


def refusal(uri: str, **options: Any) -> Response:
    """The HTTP answer to a WebSocket handshake that was refused (by LiteLLM or by the sidecar)."""
    with pytest.raises(InvalidStatus) as refused:
        connect(uri, **options)
    return refused.value.response


def test_messages_go_both_ways_in_order_text_and_binary(sidecar: SidecarFactory, echoing: WsUpstream) -> None:
    url = sidecar(upstream_url=echoing.url)
    with connect(ws(url) + "/v1/realtime?model=gpt-realtime") as caller:
        sent: list[str | bytes] = [
            *(f'{{"type":"event","n":{n}}}' for n in range(50)),
            b"\x00\xff" * 5000,
            "é",
        ]
        for message in sent:
            caller.send(message)
        assert [caller.recv() for _ in sent] == sent
    assert echoing.seen[0].request is not None
    assert echoing.seen[0].request.path == "/v1/realtime?model=gpt-realtime"


def test_the_handshake_carries_the_callers_credentials_and_headers(sidecar: SidecarFactory) -> None:
    async def hold_open(connection: ServerConnection) -> None:
        await connection.send(connection.subprotocol or "")
        await connection.wait_closed()

    with WsUpstream(hold_open, subprotocols=["realtime", "openai-insecure-api-key.sk-caller"]) as upstream:
        url = sidecar(upstream_url=upstream.url)
        headers = {
            "Authorization": "Bearer sk-caller",
            "api-key": "sk-azure-style",
            "OpenAI-Beta": "realtime=v1",
            "Origin": "https://app.example",
            "User-Agent": "caller-agent/1",
            "Keep-Alive": "timeout=5",
            "X-Forwarded-For": "10.0.0.9",
        }
        subprotocols: Any = ["realtime", "openai-insecure-api-key.sk-caller", "openai-beta.realtime-v1"]
        with connect(
            ws(url) + "/openai/v1/realtime?model=m&x=%2F",
            additional_headers=headers,
            subprotocols=subprotocols,
            user_agent_header=None,
        ) as caller:
            assert caller.subprotocol == "realtime"  # LiteLLM's choice, passed back
            assert caller.recv() == "realtime"
        request = upstream.seen[0].request
        assert request is not None
        got = request.headers
        assert request.path == "/openai/v1/realtime?model=m&x=%2F"
        assert got["authorization"] == "Bearer sk-caller"
        assert got["api-key"] == "sk-azure-style"
        assert got["openai-beta"] == "realtime=v1"
        assert got["origin"] == "https://app.example"
        assert got["user-agent"] == "caller-agent/1"
        assert got.get_all("sec-websocket-protocol") == [", ".join(subprotocols)]
        assert got["x-forwarded-for"] == "10.0.0.9, 127.0.0.1"
        assert got["x-forwarded-proto"] == "http"
        assert got["x-forwarded-host"].startswith("127.0.0.1:")
        assert got["host"] == upstream.url.removeprefix("http://")
        assert len(got.get_all("host")) == 1
        assert "keep-alive" not in got


def test_close_codes_and_reasons_go_both_ways(sidecar: SidecarFactory) -> None:
    async def closes_on_request(connection: ServerConnection) -> None:
        async for message in connection:
            if message == "close me":
                await connection.close(1011, "Pre-call error")

    with WsUpstream(closes_on_request) as upstream:
        url = sidecar(upstream_url=upstream.url)
        with connect(ws(url) + "/v1/realtime") as caller:
            caller.send("close me")
            with pytest.raises(ConnectionClosed) as closed:
                caller.recv()
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1011, "Pre-call error")

        with connect(ws(url) + "/v1/realtime") as caller:
            caller.close(4000, "caller done")
        assert upstream.wait_closed(2)
        assert upstream.closes[1][:2] == (4000, "caller done")


def test_a_refused_handshake_reaches_the_caller_as_litellms_answer(sidecar: SidecarFactory) -> None:
    refuses = in_turn(
        b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nx-litellm-call-id: abc\r\n\r\n",
        b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 22\r\n\r\n"
        b'{"detail":"Not Found"}',
    )
    with ScriptedUpstream(refuses) as upstream:
        url = sidecar(upstream_url=upstream.url)
        answer = refusal(ws(url) + "/v1/realtime?model=realtime-paid-model")
        assert answer.status_code == 403
        assert answer.body == b""
        assert answer.headers["x-litellm-call-id"] == "abc"
        answer = refusal(ws(url) + "/v1/nothing-here")
        assert answer.status_code == 404
        assert answer.body == b'{"detail":"Not Found"}'


def test_litellm_unreachable_is_a_502_with_an_openai_error(sidecar: SidecarFactory) -> None:
    url = sidecar(upstream_url=f"http://127.0.0.1:{unused_port()}")
    answer = refusal(ws(url) + "/v1/realtime")
    assert answer.status_code == 502
    assert json.loads(answer.body)["error"]["code"] == "502"


def test_a_message_over_the_bound_closes_both_sides_with_1009(
    sidecar: SidecarFactory, echoing: WsUpstream
) -> None:
    url = sidecar(upstream_url=echoing.url, ws_max_message_bytes=4096)
    with connect(ws(url) + "/v1/realtime", max_size=None) as caller:
        caller.send("x" * 4096)
        assert caller.recv() == "x" * 4096
        caller.send("x" * 4097)
        with pytest.raises(ConnectionClosed) as closed:
            caller.recv()
    assert closed.value.sent is None or closed.value.rcvd is not None
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    assert echoing.wait_closed()
    assert echoing.closes[0][0] == 1009


def test_an_oversize_frame_from_litellm_closes_both_sides_with_1009(sidecar: SidecarFactory) -> None:
    upstream_saw: list[Any] = []

    async def oversize(reader: Reader, writer: Writer) -> None:
        await accept(reader, writer)
        writer.write(frame(BINARY, b"", mask=False, length=1 << 30)[:10])  # a 1 GiB frame's head
        await writer.drain()
        upstream_saw.append(await read_frame(reader, bytearray()))

    with ScriptedUpstream(oversize) as upstream:
        url = sidecar(upstream_url=upstream.url, ws_max_message_bytes=4096)
        with RawCaller(url) as caller:
            assert caller.status == 101
            got = caller.next_frame()
            assert got is not None and got[0] == CLOSE and close_code(got[2])[0] == 1009
            assert upstream.wait_for(lambda _: bool(upstream_saw))
            assert upstream_saw[0] is not None and close_code(upstream_saw[0][2])[0] == 1009


def test_garbage_from_litellm_closes_the_caller_with_a_protocol_error(sidecar: SidecarFactory) -> None:
    async def garbage(reader: Reader, writer: Writer) -> None:
        await accept(reader, writer)
        writer.write(frame(TEXT, b"fine", mask=False) + b"\x8f\x03abc")  # opcode 0xF does not exist
        await writer.drain()
        await reader.read()

    with ScriptedUpstream(garbage) as upstream, RawCaller(sidecar(upstream_url=upstream.url)) as caller:
        assert caller.next_frame() == (TEXT, True, b"fine")
        got = caller.next_frame()
        assert got is not None and got[0] == CLOSE and close_code(got[2])[0] == 1002


def test_garbage_from_the_caller_is_refused_and_litellm_is_told(
    sidecar: SidecarFactory, echoing: WsUpstream
) -> None:
    with RawCaller(sidecar(upstream_url=echoing.url)) as caller:
        caller.send(frame(TEXT, b"ok"))
        assert caller.next_frame() == (TEXT, True, b"ok")
        caller.send(frame(TEXT, b"unmasked", mask=False))  # a caller's frames must be masked
        got = caller.next_frame()
        assert got is not None and got[0] == CLOSE and close_code(got[2])[0] == 1002
        assert echoing.wait_closed()
        assert echoing.closes[0][0] == 1002


def test_fragments_pings_and_unsolicited_binary(sidecar: SidecarFactory) -> None:
    got_up: list[tuple[int, bool, bytes] | None] = []

    async def scripted(reader: Reader, writer: Writer) -> None:
        await accept(reader, writer)
        writer.write(frame(BINARY, b"\x01\x02unasked", mask=False))  # before the caller said anything
        writer.write(frame(TEXT, b"hel", fin=False, mask=False) + frame(CONTINUATION, b"lo", mask=False))
        await writer.drain()
        buffer = bytearray()
        while (found := await read_frame(reader, buffer)) is not None:
            got_up.append(found)
            if found[0] == CLOSE:
                writer.write(frame(CLOSE, found[2], mask=False))
                await writer.drain()
                return

    with ScriptedUpstream(scripted) as upstream, RawCaller(sidecar(upstream_url=upstream.url)) as caller:
        assert caller.next_frame() == (BINARY, True, b"\x01\x02unasked")
        assert caller.next_frame() == (TEXT, True, b"hello")  # one message, as the caller reads it
        caller.send(frame(PING, b"are you there"))
        assert caller.next_frame() == (PONG, True, b"are you there")
        caller.send(frame(TEXT, b'{"type":', fin=False) + frame(CONTINUATION, b'"x"}'))
        caller.send(close_frame(1000, "done"))
        got = caller.next_frame()
        assert got is not None and got[0] == CLOSE and close_code(got[2]) == (1000, "done")
        assert upstream.wait_for(lambda _: len(got_up) >= 2)
    assert got_up[0] == (TEXT, True, b'{"type":"x"}')
    assert got_up[1] is not None and got_up[1][0] == CLOSE and close_code(got_up[1][2]) == (1000, "done")


def test_a_caller_that_vanishes_mid_message_closes_litellms_socket_at_once(sidecar: SidecarFactory) -> None:
    got_up: list[tuple[int, bool, bytes] | None] = []
    ended: list[float] = []

    async def listens(reader: Reader, writer: Writer) -> None:
        await accept(reader, writer)
        buffer = bytearray()
        while (found := await read_frame(reader, buffer)) is not None:
            got_up.append(found)
            if found[0] == CLOSE:
                ended.append(time.monotonic())
                writer.write(frame(CLOSE, found[2], mask=False))
                await writer.drain()

    with ScriptedUpstream(listens) as upstream, RawCaller(sidecar(upstream_url=upstream.url)) as caller:
        caller.send(frame(TEXT, b"whole"))
        time.sleep(0.1)
        caller.send(frame(TEXT, b"x" * 1000)[:300])  # a message cut short
        left = time.monotonic()
        caller.close()
        assert upstream.wait_for(lambda _: bool(ended), timeout=3)
    assert ended[0] - left < 0.5  # told with a close frame at once, not left waiting
    assert got_up[0] == (TEXT, True, b"whole")
    assert got_up[-1] is not None and got_up[-1][0] == CLOSE


def test_litellm_that_never_closes_is_cut_off(sidecar: SidecarFactory) -> None:
    ended: list[float] = []

    async def never_closes(reader: Reader, writer: Writer) -> None:
        await accept(reader, writer)
        while await reader.read(65536):
            pass  # reads the close frame, never answers it
        ended.append(time.monotonic())

    with ScriptedUpstream(never_closes) as upstream, RawCaller(sidecar(upstream_url=upstream.url)) as caller:
        caller.send(close_frame(1000))
        got = caller.next_frame()
        assert got is not None and got[0] == CLOSE
        left = time.monotonic()
        assert upstream.wait_for(lambda _: bool(ended), timeout=5)
    assert ended[0] - left < 3.0  # CLOSE_TIMEOUT, 2 s


def test_litellm_that_vanishes_closes_the_caller(sidecar: SidecarFactory) -> None:
    async def vanishes(reader: Reader, writer: Writer) -> None:
        await accept(reader, writer)
        writer.write(frame(TEXT, b"bye", mask=False))
        await writer.drain()
        writer.transport.abort()

    with ScriptedUpstream(vanishes) as upstream, RawCaller(sidecar(upstream_url=upstream.url)) as caller:
        assert caller.next_frame() == (TEXT, True, b"bye")
        left = time.monotonic()
        assert caller.ended(timeout=2)
        assert time.monotonic() - left < 0.5


def test_an_idle_socket_is_closed_on_both_sides(sidecar: SidecarFactory, echoing: WsUpstream) -> None:
    url = sidecar(upstream_url=echoing.url, ws_idle_timeout=0.5)
    with connect(ws(url) + "/v1/realtime") as caller:
        caller.send("a")
        assert caller.recv() == "a"
        with pytest.raises(ConnectionClosed) as closed:
            caller.recv(timeout=3)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1001, "idle timeout")
    assert echoing.wait_closed()
    assert echoing.closes[0][:2] == (1001, "idle timeout")


def test_a_caller_that_does_not_read_holds_litellm_back(sidecar: SidecarFactory) -> None:
    written: list[int] = [0]
    cut: list[bool] = []

    async def floods(reader: Reader, writer: Writer) -> None:
        await accept(reader, writer)
        chunk = frame(BINARY, b"\x00" * 65536, mask=False)
        try:
            while written[0] < 1 << 30:
                writer.write(chunk)
                await writer.drain()
                written[0] += 65536
        except ConnectionError:
            cut.append(True)
        writer.close()

    with ScriptedUpstream(floods) as upstream:
        with RawCaller(sidecar(upstream_url=upstream.url)):  # reads nothing
            time.sleep(1.5)
            first = written[0]
            time.sleep(0.5)
            assert written[0] == first  # LiteLLM's writes wait: nothing reads ahead without bound
            assert first < 64 * 1024 * 1024
        assert upstream.wait_for(lambda _: bool(cut))  # and the caller's leaving frees LiteLLM


def test_metrics_count_sockets_messages_bytes_and_closes(
    sidecar: SidecarFactory, echoing: WsUpstream
) -> None:
    url = sidecar(upstream_url=echoing.url)
    with connect(ws(url) + "/v1/realtime") as caller:
        caller.send("12345")
        assert caller.recv() == "12345"
        caller.send(b"123")
        assert caller.recv() == b"123"
        text = httpx.get(url + "/sidecar/metrics").text
        assert metric(text, "sidecar_websockets_open") == 1
        caller.close(4001, "")
    deadline = time.monotonic() + 5
    while metric(text := httpx.get(url + "/sidecar/metrics").text, "sidecar_websockets_open") and (
        time.monotonic() < deadline
    ):
        time.sleep(0.02)
    assert metric(text, "sidecar_websockets_open") == 0
    for direction in ("up", "down"):
        assert metric(text, f'sidecar_websocket_messages_total{{direction="{direction}"}}') == 2
        assert metric(text, f'sidecar_websocket_bytes_total{{direction="{direction}"}}') == 8
    assert metric(text, 'sidecar_websocket_closes_total{by="caller",code="4xxx"}') == 1
    assert metric(text, 'sidecar_requests_total{route="websocket",status="101"}') == 1


class RealtimeLiteLLM:
    """The fake LiteLLM, with LiteLLM's WebSocket auth in front of a realtime session: a spent key asking a
    paid realtime model, or any key asking a model it may not use, is refused before the upgrade with 403
    and an empty body, the answer LiteLLM gives both (its HTTP routes are the fake's)."""

    SPENT = frozenset({KEYS["KEY_TEAM_BROKE"], KEYS["KEY_KEY_BROKE"]})

    def __init__(self, fake: FakeLiteLLM) -> None:
        self.fake = fake
        self.asked: list[str] = []  # the models of the handshakes that reached it

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            await self.fake(scope, receive, send)
            return
        await receive()
        headers = dict(scope["headers"])
        # LiteLLM's WebSocket auth (user_api_key_auth_websocket): Authorization, else api-key, else the
        # browser's openai-insecure-api-key.<key> subprotocol.
        protocols = headers.get(b"sec-websocket-protocol", b"").decode().split(",")
        browser = [p.strip().removeprefix("openai-insecure-api-key.") for p in protocols if "api-key." in p]
        key = headers.get(b"authorization", b"").removeprefix(b"Bearer ").decode()
        key = key or headers.get(b"api-key", b"").decode() or (browser[0] if browser else "")
        model = dict(parse_qsl(scope["query_string"].decode())).get("model")
        self.asked.append(f"{model} {scope['query_string'].decode()}")
        refused_too = model == "free-model" and key == KEYS["KEY_KEY_BROKE"]  # a retry LiteLLM refuses
        wrong_key = key not in KEYS.values()  # the same empty 403
        spent = model == "realtime-paid-model" and key in self.SPENT
        if wrong_key or model == "not-allowed" or spent or refused_too:
            await send({"type": "websocket.close", "code": 1008})  # uvicorn: 403, empty body
            return
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": '{"type":"session.created"}'})
        await receive()


@pytest.fixture
def realtime_litellm(fake: FakeLiteLLM) -> RealtimeLiteLLM:
    return RealtimeLiteLLM(fake)


@pytest.fixture
def realtime(realtime_litellm: RealtimeLiteLLM) -> Iterator[str]:
    config = uvicorn.Config(
        realtime_litellm, ws="websockets-sansio", http="h11", lifespan="off", log_config=None
    )
    with ServerThread(config) as server:
        yield server.url


def test_a_spent_callers_refused_handshake_is_marked_and_counted(
    sidecar: SidecarFactory, realtime: str
) -> None:
    url = sidecar(upstream_url=realtime)
    spent = {"Authorization": f"Bearer {KEYS['KEY_TEAM_BROKE']}"}
    httpx.get(url + "/v1/models", headers=spent)  # a client lists its models first: the sidecar knows it
    counted = 'sidecar_budget_refusals_total{scope="team",verdict="spent"}'
    before = metric(httpx.get(url + "/sidecar/metrics").text, counted)  # the list's own refusal, on 1.88
    answer = refusal(ws(url) + "/v1/realtime?model=realtime-paid-model", additional_headers=spent)
    assert (answer.status_code, answer.body) == (403, b"")  # LiteLLM's, unchanged
    assert answer.headers["x-sidecar-budget-exceeded"] == "true"
    assert answer.headers["x-sidecar-budget-scope"] == "team"
    text = httpx.get(url + "/sidecar/metrics").text
    assert metric(text, counted) == before + 1
    with connect(ws(url) + "/v1/realtime?model=realtime-model", additional_headers=spent) as caller:
        assert json.loads(caller.recv())["type"] == "session.created"  # the free model: served


def test_a_browser_callers_refused_handshake_is_marked_too(sidecar: SidecarFactory, realtime: str) -> None:
    """A browser cannot set headers on a WebSocket: its key rides in a subprotocol, where LiteLLM reads it
    (``openai-insecure-api-key.<key>``), and so does the sidecar; an Azure client's ``api-key`` alike."""
    url = sidecar(upstream_url=realtime)
    for key in ("KEY_KEY_BROKE", "KEY_TEAM_BROKE"):  # each lists its models first
        httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {KEYS[key]}"})
    browser = cast(Any, ["realtime", f"openai-insecure-api-key.{KEYS['KEY_KEY_BROKE']}"])
    answer = refusal(ws(url) + "/v1/realtime?model=realtime-paid-model", subprotocols=browser)
    assert (answer.status_code, answer.body) == (403, b"")
    assert (answer.headers["x-sidecar-budget-exceeded"], answer.headers["x-sidecar-budget-scope"]) == (
        "true",
        "key",
    )
    azure = {"api-key": KEYS["KEY_TEAM_BROKE"]}
    answer = refusal(ws(url) + "/v1/realtime?model=realtime-paid-model", additional_headers=azure)
    assert answer.headers["x-sidecar-budget-scope"] == "team"


def test_a_realtime_only_callers_refusal_is_marked_once_litellm_upgraded_it(
    sidecar: SidecarFactory, realtime: str
) -> None:
    """A client that never lists models: the session LiteLLM upgraded on the free model made its key
    known, so its refused handshake on the paid one is judged and marked."""
    url = sidecar(upstream_url=realtime)
    spent = {"Authorization": f"Bearer {KEYS['KEY_TEAM_BROKE']}"}
    with connect(ws(url) + "/v1/realtime?model=realtime-model", additional_headers=spent) as caller:
        assert json.loads(caller.recv())["type"] == "session.created"
    answer = refusal(ws(url) + "/v1/realtime?model=realtime-paid-model", additional_headers=spent)
    assert (answer.status_code, answer.body) == (403, b"")
    assert (answer.headers["x-sidecar-budget-exceeded"], answer.headers["x-sidecar-budget-scope"]) == (
        "true",
        "team",
    )


def test_a_strangers_refused_handshake_costs_litellm_nothing_more(
    sidecar: SidecarFactory, realtime: str, realtime_litellm: RealtimeLiteLLM
) -> None:
    """LiteLLM refuses a wrong key's handshake with the same empty 403 as a spent one's: for a credential it
    has not admitted lately, the sidecar asks nothing (a probe would be a second key lookup per random
    key), and the 403 goes back as it came."""
    url = sidecar(upstream_url=realtime)
    for n in range(5):
        stranger = {"Authorization": f"Bearer sk-random-{n:04d}"}
        answer = refusal(ws(url) + "/v1/realtime?model=realtime-paid-model", additional_headers=stranger)
        assert (answer.status_code, answer.body) == (403, b"")
        assert "x-sidecar-budget-exceeded" not in answer.headers
    assert len(realtime_litellm.asked) == 5
    assert [seen.target for seen in realtime_litellm.fake.seen] == []  # no probe, no look-up


def test_a_refused_handshake_within_budget_is_not_marked(sidecar: SidecarFactory, realtime: str) -> None:
    url = sidecar(upstream_url=realtime)
    healthy = {"Authorization": f"Bearer {KEYS['KEY_HEALTHY']}"}
    for headers in (healthy, {}):  # a caller within budget; no credential, no one to look up
        answer = refusal(ws(url) + "/v1/realtime?model=not-allowed", additional_headers=headers)
        assert (answer.status_code, answer.body) == (403, b"")
        assert "x-sidecar-budget-exceeded" not in answer.headers
    text = httpx.get(url + "/sidecar/metrics").text
    assert "sidecar_budget_refusals_total{" not in text


@pytest.mark.parametrize("level", ["info", "debug"])
def test_the_log_has_one_line_per_socket_without_keys_or_queries(
    fake: FakeLiteLLM, tmp_path: Path, level: str
) -> None:
    """Not at debug either: uvicorn's WebSocket protocol and the websockets client log every handshake
    header there (``< authorization: Bearer sk-...``)."""
    with WsUpstream(echo) as upstream:
        port, log = closed_port(), tmp_path / "sidecar.log"
        with log.open("wb") as stderr:
            env = _env(fake, port=str(port), upstream_url=upstream.url, log_level=level)
            proc = subprocess.Popen([sys.executable, "-m", "sidecar"], env=env, stderr=stderr)
        secret = KEYS["KEY_HEALTHY"]
        try:  # the sidecar stops whatever happens
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 15
            while not _listening(url):
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
            with connect(
                ws(url) + "/v1/realtime?model=m&note=query-text",
                additional_headers={"Authorization": f"Bearer {secret}"},
                subprotocols=cast(Any, ["realtime", f"openai-insecure-api-key.{secret}"]),
            ) as caller:
                caller.send("x")
                assert caller.recv() == "x"
                caller.close(4001, "done")
            assert upstream.wait_closed()
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
    text = log.read_text()
    closed = [line for line in map(json.loads, text.splitlines()) if line.get("event") == "websocket_closed"]
    assert len(closed) == 1
    assert (closed[0]["path"], closed[0]["closed_by"], closed[0]["code"]) == ("/v1/realtime", "caller", 4001)
    assert secret not in text and "query-text" not in text  # no key, no access log with the query


def test_a_paid_realtime_model_refused_for_budget_falls_back(
    sidecar: SidecarFactory, realtime: str, realtime_litellm: RealtimeLiteLLM
) -> None:
    url = sidecar(upstream_url=realtime, fallback={"realtime-paid-model": "free-model"})
    for key in ("KEY_TEAM_BROKE", "KEY_KEY_BROKE"):  # each lists its models first: the sidecar knows it
        httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {KEYS[key]}"})
    spent = {"Authorization": f"Bearer {KEYS['KEY_TEAM_BROKE']}", "OpenAI-Beta": "realtime=v1"}
    query = "model=realtime-paid-model&x=1&note=caf%C3%A9+%2B&raw=%FF"  # the rest goes as the caller sent it
    with connect(ws(url) + "/v1/realtime?" + query, additional_headers=spent) as caller:
        assert json.loads(caller.recv())["type"] == "session.created"
        response = caller.response
        assert response is not None
        assert response.headers["x-sidecar-fallback-from"] == "realtime-paid-model"
        assert response.headers["x-sidecar-fallback-model"] == "free-model"
    assert realtime_litellm.asked == [
        f"realtime-paid-model {query}",
        "free-model model=free-model&x=1&note=caf%C3%A9+%2B&raw=%FF",
    ]

    refused_twice = {"Authorization": f"Bearer {KEYS['KEY_KEY_BROKE']}"}
    answer = refusal(ws(url) + "/v1/realtime?model=realtime-paid-model", additional_headers=refused_twice)
    assert (answer.status_code, answer.body) == (403, b"")  # the first refusal, marked
    assert answer.headers["x-sidecar-budget-scope"] == "key"
    assert "x-sidecar-fallback-model" not in answer.headers
    text = httpx.get(url + "/sidecar/metrics").text
    for outcome in ("served", "refused"):
        sample = f'from="realtime-paid-model",outcome="{outcome}",to="free-model"'
        assert metric(text, f"sidecar_fallbacks_total{{{sample}}}") == 1


def test_past_the_connection_bound_a_websocket_gets_503(sidecar: SidecarFactory, echoing: WsUpstream) -> None:
    url = sidecar(upstream_url=echoing.url, max_connections=1)
    with connect(ws(url) + "/v1/realtime") as first:
        answer = refusal(ws(url) + "/v1/realtime")
        assert (answer.status_code, answer.headers["retry-after"]) == (503, "1")
        assert json.loads(answer.body)["error"]["code"] == "503"
        first.send("still served")
        assert first.recv() == "still served"
    assert len(echoing.seen) == 1  # the refused one never reached LiteLLM


def _listening(url: str) -> bool:
    try:
        httpx.get(url + "/healthz", timeout=1)
    except httpx.TransportError:
        return False
    return True


def test_a_redirect_from_litellm_reaches_the_caller_and_is_never_followed(sidecar: SidecarFactory) -> None:
    """The HTTP pass-through never follows a redirect; a handshake's neither: the caller's credential
    would go wherever ``Location`` points."""
    target_saw: list[bytes] = []

    async def target(reader: Reader, writer: Writer) -> None:
        target_saw.append(await accept(reader, writer))
        await reader.read()

    with ScriptedUpstream(target) as elsewhere:
        there = ws(elsewhere.url).replace("127.0.0.1", "localhost").encode()
        redirects = in_turn(
            b"HTTP/1.1 302 Found\r\nlocation: %s/x\r\ncontent-length: 5\r\n\r\nmoved" % there,
            b"HTTP/1.1 307 Temporary Redirect\r\nlocation: http://elsewhere.example/x\r\n"
            b"content-length: 0\r\n\r\n",
        )
        with ScriptedUpstream(redirects) as upstream:
            url = sidecar(upstream_url=upstream.url)
            with RawCaller(url, headers=b"api-key: sk-caller\r\nx-litellm-api-key: sk-caller\r\n") as caller:
                assert caller.status == 302
                assert b"location: " + there + b"/x" in caller.head.lower()
                assert caller.ended() and caller.buffer == b"moved"
            with RawCaller(url) as caller:
                assert caller.status == 307  # not a 500: a Location of any scheme is only passed on
                assert b"location: http://elsewhere.example/x" in caller.head.lower()
        time.sleep(0.2)
    assert target_saw == []


def test_a_handshake_that_cannot_go_to_litellm_is_refused_not_crashed(
    sidecar: SidecarFactory, echoing: WsUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    """An absolute-form target (``GET http://evil.example/x``) names no path on LiteLLM: 400, and no
    handshake leaves; a target the client towards LiteLLM refuses (a fragment) is LiteLLM not reached:
    502 and a warning, as for any upstream error, never an ASGI crash."""
    url = sidecar(upstream_url=echoing.url)
    with caplog.at_level(logging.INFO):
        with RawCaller(url, path="http://evil.example/x") as caller:
            assert caller.status == 400
            assert caller.ended()
            error = json.loads(caller.buffer)["error"]
            assert (error["type"], error["code"]) == ("invalid_request_error", "400")
        with RawCaller(url, path="/v1/realtime#fragment") as caller:
            assert caller.status == 502
            assert caller.ended()
            assert json.loads(caller.buffer)["error"]["code"] == "502"
    assert echoing.seen == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    warned = [f for r in caplog.records if (f := getattr(r, "fields", {})).get("event") == "upstream_error"]
    assert [f["kind"] for f in warned] == ["unreachable"]
    text = httpx.get(url + "/sidecar/metrics").text
    assert metric(text, 'sidecar_requests_total{route="websocket",status="400"}') == 1
    assert metric(text, 'sidecar_requests_total{route="websocket",status="502"}') == 1


def test_permessage_deflate_is_off_towards_callers_unless_asked_for(
    sidecar: SidecarFactory, echoing: WsUpstream
) -> None:
    """Compressed, 16 KB from a caller is 16 MiB for the relay to inflate on the shared loop: off by
    default; ``ws_per_message_deflate`` turns it on."""
    offer = b"sec-websocket-extensions: permessage-deflate; client_max_window_bits\r\n"
    with RawCaller(sidecar(upstream_url=echoing.url), headers=offer) as caller:
        assert caller.status == 101
        assert b"sec-websocket-extensions" not in caller.head.lower()
        caller.send(frame(TEXT, b"plain"))
        assert caller.next_frame() == (TEXT, True, b"plain")
    with RawCaller(sidecar(upstream_url=echoing.url, ws_per_message_deflate=True), headers=offer) as caller:
        assert caller.status == 101
        assert b"sec-websocket-extensions: permessage-deflate" in caller.head.lower()


def big_frame(size: int) -> bytes:
    """A caller's binary frame of ``size`` zero bytes, masked with a zero key (no Python loop over it)."""
    return bytes([0x80 | BINARY, 0x80 | 127]) + struct.pack("!Q", size) + b"\x00" * (4 + size)


def open_sockets(url: str, timeout: float = 5.0) -> float | None:
    """``sidecar_websockets_open`` once it is 0, or as it is after ``timeout``."""
    deadline = time.monotonic() + timeout
    while (count := metric(httpx.get(url + "/sidecar/metrics").text, "sidecar_websockets_open")) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.05)
    return count


def test_a_caller_that_reads_nothing_is_given_up_on(sidecar: SidecarFactory) -> None:
    """uvicorn's send waits while the caller's socket is full, a close included: past ``ws_idle_timeout``
    without a message taken, the caller's connection is cut, LiteLLM told, the socket counted closed."""
    got_up: list[tuple[int, bool, bytes] | None] = []

    async def floods(reader: Reader, writer: Writer) -> None:
        await accept(reader, writer)
        chunk = frame(BINARY, b"\x00" * 65536, mask=False)
        with contextlib.suppress(TimeoutError):
            while True:  # until the sockets between are full
                writer.write(chunk)
                await asyncio.wait_for(writer.drain(), 0.5)
        got_up.append(await read_frame(reader, bytearray()))

    with ScriptedUpstream(floods) as upstream:
        url = sidecar(upstream_url=upstream.url, ws_idle_timeout=1.0)
        with RawCaller(url) as caller:  # reads nothing
            assert upstream.wait_for(lambda _: bool(got_up), timeout=6)
            assert got_up[0] is not None and close_code(got_up[0][2]) == (1001, "caller stalled")
            assert caller.ended(timeout=2)  # cut, not left open behind a full buffer
        assert open_sockets(url) == 0
        text = httpx.get(url + "/sidecar/metrics").text
        assert metric(text, 'sidecar_websocket_closes_total{by="caller_stalled",code="1001"}') == 1


def test_litellm_that_reads_nothing_is_given_up_on(sidecar: SidecarFactory) -> None:
    cut: list[bool] = []

    async def deaf(reader: Reader, writer: Writer) -> None:
        await accept(reader, writer)
        await asyncio.sleep(10)  # reads nothing
        cut.append(True)

    with ScriptedUpstream(deaf) as upstream:
        url = sidecar(upstream_url=upstream.url, ws_idle_timeout=1.0)
        with RawCaller(url) as caller:
            caller.send(big_frame(16 << 20))  # more than LiteLLM's socket takes unread
            got = caller.next_frame(timeout=6)
            assert got is not None and got[0] == CLOSE
            assert close_code(got[2]) == (1001, "upstream stalled")
        assert open_sockets(url) == 0
        text = httpx.get(url + "/sidecar/metrics").text
        assert metric(text, 'sidecar_websocket_closes_total{by="upstream_stalled",code="1001"}') == 1
        assert upstream.stats.connections == 1


def test_a_caller_leaving_while_litellm_takes_nothing_is_noticed(sidecar: SidecarFactory) -> None:
    ended: list[float] = []

    async def deaf(reader: Reader, writer: Writer) -> None:
        await accept(reader, writer)
        await asyncio.sleep(1.5)  # reads nothing for a while, then everything to the end
        with contextlib.suppress(ConnectionError):
            while await reader.read(1 << 20):
                pass
        ended.append(time.monotonic())

    with ScriptedUpstream(deaf) as upstream:
        url = sidecar(upstream_url=upstream.url)
        with RawCaller(url) as caller:
            caller.send(big_frame(16 << 20))
            time.sleep(0.5)
            caller.send(close_frame(1000, "bye"))
            left = time.monotonic()
            got = caller.next_frame()
            assert got is not None and got[0] == CLOSE
        assert open_sockets(url, timeout=3) == 0
        assert time.monotonic() - left < 2.5  # not held until LiteLLM reads
        assert upstream.wait_for(lambda _: bool(ended))
        text = httpx.get(url + "/sidecar/metrics").text
        assert metric(text, 'sidecar_websocket_closes_total{by="caller",code="1000"}') == 1


def test_a_caller_uvicorn_closed_itself_is_a_caller_gone(caplog: pytest.LogCaptureFixture) -> None:
    """uvicorn closes a caller itself when it answers no ping (keepalive timeout); a send after that
    raises its RuntimeError ("Unexpected ASGI message ... after sending 'websocket.close'"): the caller
    is gone, LiteLLM is told, nothing crashes. (The relay driven directly: uvicorn's ping bounds are 20 s.)"""
    got_up: list[tuple[int, bool, bytes] | None] = []

    async def talks(reader: Reader, writer: Writer) -> None:
        await accept(reader, writer)
        writer.write(frame(TEXT, b"session.created", mask=False))
        await writer.drain()
        got_up.append(await read_frame(reader, bytearray()))

    metrics = Metrics()
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if not sent:
            return {"type": "websocket.connect"}
        await asyncio.Event().wait()  # the caller says nothing more
        raise AssertionError

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)
        if message["type"] != "websocket.accept":
            raise RuntimeError(
                f"Unexpected ASGI message '{message['type']}', after sending 'websocket.close'."
            )

    async def main(url: str) -> None:
        relay = WebSocketRelay(
            url, connect_timeout=5, idle_timeout=30, max_message_bytes=1 << 20, metrics=metrics
        )
        scope = {"type": "websocket", "raw_path": b"/v1/realtime", "headers": [], "client": ("127.0.0.1", 1)}
        await asyncio.wait_for(relay.handle(scope, receive, send), 5)

    with ScriptedUpstream(talks) as upstream, caplog.at_level(logging.INFO):
        asyncio.run(main(upstream.url))
        assert upstream.wait_for(lambda _: bool(got_up))
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.send"]
    assert got_up[0] is not None and got_up[0][0] == CLOSE
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    closes = {"by": "caller", "code": "1005"}
    assert metrics.registry.get_sample_value("sidecar_websocket_closes_total", closes) == 1


def test_application_close_codes_are_grouped_in_the_metrics(
    sidecar: SidecarFactory, echoing: WsUpstream
) -> None:
    """Codes 3000-4999 are anyone's to pick: one series each would be ~2,000 per side per worker."""
    url = sidecar(upstream_url=echoing.url)
    for code in (3000, 3999, 4000, 4999, 1000):
        with connect(ws(url) + "/v1/realtime") as caller:
            caller.close(code)
    assert echoing.wait_closed(5)
    assert open_sockets(url) == 0
    text = httpx.get(url + "/sidecar/metrics").text
    assert metric(text, 'sidecar_websocket_closes_total{by="caller",code="3xxx"}') == 2
    assert metric(text, 'sidecar_websocket_closes_total{by="caller",code="4xxx"}') == 2
    assert metric(text, 'sidecar_websocket_closes_total{by="caller",code="1000"}') == 1
    assert 'code="3000"' not in text and 'code="4999"' not in text


def test_the_handshake_carries_no_body_framing_from_the_caller(sidecar: SidecarFactory) -> None:
    """A handshake has no body: the caller's ``Content-Length`` and ``Expect`` would declare one to
    LiteLLM that never comes (as for any request the sidecar builds itself)."""
    heads: list[bytes] = []

    async def records(reader: Reader, writer: Writer) -> None:
        heads.append(await accept(reader, writer))
        await reader.read()

    with ScriptedUpstream(records) as upstream:
        framing = b"content-length: 0\r\nexpect: 100-continue\r\nopenai-beta: realtime=v1\r\n"
        with RawCaller(sidecar(upstream_url=upstream.url), headers=framing) as caller:
            assert caller.status == 101
        assert upstream.wait_for(lambda _: bool(heads))
    head = heads[0].lower()
    assert b"openai-beta: realtime=v1" in head
    assert b"content-length" not in head and b"expect" not in head and b"transfer-encoding" not in head


def test_sessions_closed_or_vanished_leave_no_cycles_for_the_full_collection(
    sidecar: SidecarFactory, echoing: WsUpstream
) -> None:
    """Full collections are rare (``gc_interval``, ``proxy/collector.py``): a relayed session, closed by
    its caller or vanished, leaves none of the sidecar's objects in a reference cycle - reference counting
    frees them as it ends."""
    url = sidecar(upstream_url=echoing.url)

    def sessions(count: int) -> None:
        for index in range(count):
            caller = RawCaller(url)
            assert caller.status == 101
            caller.send(frame(TEXT, b'{"type":"ping"}', mask=True))
            assert caller.next_frame() == (TEXT, True, b'{"type":"ping"}')
            if index % 2:
                caller.send(close_frame(1000, mask=True))
                assert caller.next_frame() is not None
            caller.sock.close()

    sessions(2)  # warm
    assert echoing.wait_closed(2)

    def more() -> None:
        sessions(10)
        assert echoing.wait_closed(12)
        time.sleep(0.3)

    ours = cycles_left_by(more)
    assert sum(ours.values()) < 5, f"left in cycles by 10 sessions: {ours}"
