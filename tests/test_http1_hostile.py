"""The pooled client against hostile upstreams, byte by byte: what nginx refuses, it refuses.

Each scripted upstream says exactly the bytes of a case found by a byte-level probe (issue 12): answers
followed by more bytes, bytes while a connection is idle, trailers, huge header blocks, an unasked-for
101, a transfer coding other than chunked, a connection dropped under a request. The last tests state the
reuse and retry rules as properties over random mixes of well-formed and hostile answers.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from asyncio import StreamReader as Reader
from asyncio import StreamWriter as Writer
from collections.abc import AsyncIterator

import pytest

from sidecar.proxy.http1 import (
    Cancel,
    Cancelled,
    ConnectionPool,
    UpstreamClosed,
    UpstreamError,
    UpstreamProtocolError,
)
from tests.scripted import GET, Handler, ScriptedUpstream, Stats, ok, read_request, run

POST = b"POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\n\r\n"


async def fill_pool(pool: ConnectionPool, count: int) -> None:
    """Leave ``count`` idle connections in the pool (concurrent requests need one each)."""

    async def one() -> None:
        response = await pool.request(GET, None)
        await response.read()
        response.release()

    await asyncio.gather(*(one() for _ in range(count)))


def answers_then_drops(answered: int) -> Handler:
    """Each connection answers its first ``answered`` requests, then takes the next one and hangs up."""

    async def handler(reader: Reader, writer: Writer) -> None:
        for _ in range(answered):
            await read_request(reader)
            await asyncio.sleep(0.02)  # let concurrent requests each take a connection of their own
            writer.write(ok(b"fine"))
            await writer.drain()
        await read_request(reader)

    return handler


# --- retries -------------------------------------------------------------------------------------------


def test_a_post_on_dead_pooled_connections_is_sent_exactly_once() -> None:
    async def test(pool: ConnectionPool, stats: Stats) -> None:
        await fill_pool(pool, 3)
        with pytest.raises(UpstreamClosed):
            await pool.request(POST, b"{}", method="POST")

    stats = run(answers_then_drops(1), test)
    assert stats.count(b"POST /v1/chat/completions") == 1
    assert stats.connections == 3  # no new connection was opened to send it again


def test_a_get_is_retried_once_on_a_new_connection_never_on_another_pooled_one() -> None:
    async def test(pool: ConnectionPool, stats: Stats) -> None:
        await fill_pool(pool, 3)
        response = await pool.request(b"GET /again HTTP/1.1\r\nhost: t\r\n\r\n", None)
        assert (response.status, await response.read()) == (200, b"fine")
        response.release()

    stats = run(answers_then_drops(1), test)
    assert stats.count(b"GET /again") == 2
    assert stats.connections == 4  # three pooled, one new for the single retry


def test_a_get_is_retried_at_most_once() -> None:
    async def test(pool: ConnectionPool, stats: Stats) -> None:
        await fill_pool(pool, 3)
        stats.requests.clear()
        with pytest.raises(UpstreamClosed):
            await pool.request(b"GET /again HTTP/1.1\r\nhost: t\r\n\r\n", None)

    calls = {"n": 0}

    async def first_answers_then_all_drop(reader: Reader, writer: Writer) -> None:
        calls["n"] += 1
        if calls["n"] <= 3:
            await read_request(reader)
            await asyncio.sleep(0.02)
            writer.write(ok(b"fine"))
        await read_request(reader)  # and hang up

    stats = run(first_answers_then_all_drop, test)
    assert stats.count(b"GET /again") == 2


def test_a_request_that_got_part_of_an_answer_is_never_retried() -> None:
    async def test(pool: ConnectionPool, stats: Stats) -> None:
        await fill_pool(pool, 1)
        with pytest.raises(UpstreamClosed):
            response = await pool.request(b"GET /again HTTP/1.1\r\nhost: t\r\n\r\n", None)
            await response.read()

    async def half(reader: Reader, writer: Writer) -> None:
        await read_request(reader)
        writer.write(ok(b"fine"))
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf")

    stats = run(half, test)
    assert stats.count(b"GET /again") == 1


# --- reuse only at a clean message boundary ------------------------------------------------------------


async def two_requests(pool: ConnectionPool) -> list[tuple[int, list[tuple[bytes, bytes]], bytes]]:
    seen = []
    for path in (b"/first", b"/second"):
        response = await pool.request(b"GET %s HTTP/1.1\r\nhost: t\r\n\r\n" % path, None)
        seen.append((response.status, list(response.headers), await response.read()))
        response.release()
        await asyncio.sleep(0.05)
    return seen


def answer_by_path(reply_first: bytes) -> Handler:
    """``/first`` gets ``reply_first`` (hostile); any other request a well-formed answer naming it."""

    async def handler(reader: Reader, writer: Writer) -> None:
        while True:
            request = await read_request(reader)
            if request.startswith(b"GET /first"):
                writer.write(reply_first)
            else:
                writer.write(ok(b"answer to " + request.split(b" ")[1]))
            await writer.drain()

    return handler


@pytest.mark.parametrize(
    "hostile",
    [
        pytest.param(ok(b"one") + b"HTTP/1.1 200 OK\r\ncontent-le", id="a partial second answer"),
        pytest.param(
            ok(b"one") + b"HTTP/1.1 200 EVIL\r\ncontent-length: 4\r\n\r\nEVIL", id="a second answer"
        ),
        pytest.param(ok(b"one") + b"garbage", id="garbage"),
    ],
)
def test_bytes_after_an_answer_close_its_connection(hostile: bytes) -> None:
    async def test(pool: ConnectionPool, stats: Stats) -> None:
        first, second = await two_requests(pool)
        assert first[0] == 200 and first[2] == b"one"
        assert second == (200, [(b"content-length", b"17")], b"answer to /second")

    stats = run(answer_by_path(hostile), test)
    assert stats.connections == 2  # the connection with stray bytes on it was not reused


def test_bytes_sent_while_a_connection_is_idle_close_it() -> None:
    poisoned = asyncio.Event()  # server and test share one loop (``run``)

    async def handler(reader: Reader, writer: Writer) -> None:
        request = await read_request(reader)
        writer.write(ok(b"answer to " + request.split(b" ")[1]))
        await writer.drain()
        await asyncio.sleep(0.02)  # then, unasked, the answer meant to poison the next caller
        writer.write(b"HTTP/1.1 200 EVIL\r\ncontent-length: 4\r\n\r\nEVIL")
        await writer.drain()
        poisoned.set()
        while True:
            request = await read_request(reader)
            writer.write(ok(b"answer to " + request.split(b" ")[1]))

    async def test(pool: ConnectionPool, stats: Stats) -> None:
        seen = []
        for path in (b"/first", b"/second"):
            response = await pool.request(b"GET %s HTTP/1.1\r\nhost: t\r\n\r\n" % path, None)
            seen.append(await response.read())
            response.release()
            # the next request only once the poison is out and has had time to arrive (not a race
            # between the server's sleep and ours, lost on a loaded machine)
            await asyncio.wait_for(poisoned.wait(), 5)
            await asyncio.sleep(0.05)
        assert seen == [b"answer to /first", b"answer to /second"]

    assert run(handler, test).connections == 2


def test_a_message_on_the_heels_of_a_204_is_nobodys_answer() -> None:
    second = b"HTTP/1.1 200 EVIL\r\nx-injected: yes\r\ncontent-length: 4\r\n\r\nEVIL"
    evil = b"HTTP/1.1 204 No Content\r\n\r\n" + second

    async def test(pool: ConnectionPool, stats: Stats) -> None:
        first, second = await two_requests(pool)
        assert first == (204, [], b"")
        assert second[2] == b"answer to /second"

    assert run(answer_by_path(evil), test).connections == 2


def test_a_header_set_after_a_content_length_body_is_not_merged_into_the_answer() -> None:
    evil = ok(b"one") + b"HTTP/1.1 200 OK\r\nx-injected: yes\r\ncontent-length: 0\r\n\r\n"

    async def test(pool: ConnectionPool, stats: Stats) -> None:
        first, _ = await two_requests(pool)
        assert first == (200, [(b"content-length", b"3")], b"one")

    run(answer_by_path(evil), test)


def test_trailer_fields_do_not_become_response_headers() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-trailer\r\n\r\n"
        b"3\r\none\r\n0\r\nx-trailer: injected\r\nset-cookie: stolen=1\r\n\r\n"
    )

    async def test(pool: ConnectionPool, stats: Stats) -> None:
        first, second = await two_requests(pool)
        assert first[2] == b"one"
        assert {name for name, _ in first[1]} == {b"transfer-encoding", b"trailer"}
        assert second[2] == b"answer to /second"

    assert run(answer_by_path(chunked), test).connections == 1  # a clean end: reused


# --- refused answers -----------------------------------------------------------------------------------


def refuse(reply: bytes) -> str:
    async def handler(reader: Reader, writer: Writer) -> None:
        await read_request(reader)
        writer.write(reply)
        await writer.drain()
        await reader.read()

    error: list[str] = []

    async def test(pool: ConnectionPool, stats: Stats) -> None:
        with pytest.raises(UpstreamProtocolError) as raised:
            response = await pool.request(GET, None)
            await response.read()
        error.append(str(raised.value))

    run(handler, test, max_header_bytes=64 * 1024)
    return error[0]


def test_an_upstream_header_block_over_the_bound_is_refused() -> None:
    many = b"".join(b"x-h%05d: %s\r\n" % (i, b"v" * 1000) for i in range(16384))
    assert "more than 65536 bytes of headers" in refuse(b"HTTP/1.1 200 OK\r\n" + many + b"\r\n")
    one_huge = b"HTTP/1.1 200 OK\r\nx-big: " + b"v" * (1 << 20) + b"\r\ncontent-length: 0\r\n\r\n"
    assert "more than 65536 bytes of headers" in refuse(one_huge)
    many_small = b"".join(b"x-%d: v\r\n" % i for i in range(20000))  # one read can hold them all
    assert "more than 65536 bytes of headers" in refuse(b"HTTP/1.1 200 OK\r\n" + many_small + b"\r\n")
    # ... after an interim answer in the same write, and with a body in the same write
    just_over = b"".join(b"x-%05d: %s\r\n" % (i, b"v" * 100) for i in range(620))  # 66,340 bytes
    after_1xx = (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n" + just_over + b"content-length: 2\r\n\r\n{}"
    )
    assert "more than 65536 bytes of headers" in refuse(after_1xx)
    with_body = b"HTTP/1.1 200 OK\r\n" + just_over + b"content-length: 10\r\n\r\n0123456789"
    assert "more than 65536 bytes of headers" in refuse(with_body)


def test_an_unsolicited_101_is_refused() -> None:
    assert "switched protocols" in refuse(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\n\r\n")


def test_a_transfer_coding_other_than_chunked_is_refused() -> None:
    reply = b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    assert "transfer coding" in refuse(reply) and "gzip" in refuse(reply)


def test_a_malformed_answer_is_reported_as_such_not_as_a_lost_connection() -> None:
    message = refuse(b"HTTP/1.1 200 OK\r\ncontent-length: nine\r\n\r\nnine")
    assert "malformed" in message and "connection" not in message


# --- idle connections, early answers, abandoning -------------------------------------------------------


def test_idle_connections_are_closed_by_a_timer() -> None:
    async def handler(reader: Reader, writer: Writer) -> None:
        await read_request(reader)
        await asyncio.sleep(0.02)
        writer.write(ok(b"fine"))
        await writer.drain()
        await reader.read()  # until the client closes

    async def test(pool: ConnectionPool, stats: Stats) -> None:
        await fill_pool(pool, 50)
        for _ in range(100):  # nothing else happens on the pool meanwhile
            if len(stats.closed_by_client) == 50:
                return
            await asyncio.sleep(0.02)

    stats = run(handler, test, idle_timeout=0.2)
    assert (stats.connections, len(stats.closed_by_client)) == (50, 50)


def test_an_early_answer_during_an_upload_is_the_answer() -> None:
    async def too_large(reader: Reader, writer: Writer) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = b'{"error":"request entity too large"}'
        writer.write(
            b"HTTP/1.1 413 Payload Too Large\r\nconnection: close\r\ncontent-length: %d\r\n\r\n" % len(body)
        )
        writer.write(body)
        await writer.drain()

    async def slow_upload() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b"x" * 65536
            await asyncio.sleep(0.01)

    async def test(pool: ConnectionPool, stats: Stats) -> None:
        head = b"POST /upload HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n"
        response = await pool.request(head, slow_upload(), chunked=True, method="POST")
        assert (response.status, await response.read()) == (413, b'{"error":"request entity too large"}')
        response.release()

    run(too_large, test)


TOO_LARGE = b'{"error":{"message":"Request size is too large","code":"413"}}'
EARLY_413 = b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: %d\r\n\r\n%s" % (len(TOO_LARGE), TOO_LARGE)
# A 64 MiB upload's head, and an upload of it that sends 64 KiB, then pauses (a caller on a slow link).
_UPLOAD_HEAD = b"POST /v1/files HTTP/1.1\r\nhost: t\r\ncontent-length: %d\r\n\r\n" % (64 * 1024 * 1024)


async def _pausing_upload() -> AsyncIterator[bytes]:
    yield b"x" * 65536
    await asyncio.sleep(30)
    yield b"x" * 65536


async def endless_upload(size: int = 64 * 1024 * 1024) -> AsyncIterator[bytes]:
    """An upload that goes on while the upstream answers: a caller still sending."""
    for _ in range(size // 65536):
        yield b"x" * 65536
        await asyncio.sleep(0)


def test_an_early_answer_is_the_answer_when_the_upstream_resets_the_upload() -> None:
    """LiteLLM's ``max_request_size_mb`` answers 413 from the head alone; an upstream that then closes the
    connection with the upload unread resets it, and the next write of the upload fails before the
    answer - already received - was read (here forced: the upload writes on while the loop has not looked
    at the socket). The answer is still what the caller gets, never a 502, and the connection is gone."""
    closed = threading.Event()

    async def answers_and_resets(reader: Reader, writer: Writer) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(EARLY_413)
        writer.close()  # the upload unread: the close is a reset
        await writer.wait_closed()
        closed.set()

    async def upload() -> AsyncIterator[bytes]:
        yield b"x" * 65536
        assert closed.wait(5)
        for _ in range(3):  # the answer and the reset are in; the loop has not read them yet
            time.sleep(0.05)
            yield b"x" * 65536

    async def test(port: int) -> None:
        pool = ConnectionPool("127.0.0.1", port, False, 2.0, 2.0)
        try:
            response = await pool.request(_UPLOAD_HEAD, upload(), method="POST")
            assert (response.status, await response.read()) == (413, TOO_LARGE)
            response.release()
            assert not pool._idle  # never pooled
        finally:
            pool.close()

    with ScriptedUpstream(answers_and_resets) as upstream:
        asyncio.run(test(int(upstream.url.rsplit(":", 1)[1])))


def test_an_early_answer_ends_an_upload_the_upstream_no_longer_reads() -> None:
    """An upstream that answers early and stops reading (the connection open): the upload waiting for it
    to read stops at once, the answer is given, and that connection is never used again."""

    async def answers_then_stops_reading(reader: Reader, writer: Writer) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        if request.startswith(b"GET"):
            writer.write(ok(b"fine"))
            await writer.drain()
            return
        await asyncio.sleep(0.3)  # the upload fills every buffer and waits for it to read
        writer.write(EARLY_413)
        await writer.drain()
        await asyncio.sleep(30)  # reads nothing more; holds the connection open

    async def test(pool: ConnectionPool, stats: Stats) -> None:
        started = asyncio.get_running_loop().time()
        response = await pool.request(_UPLOAD_HEAD, endless_upload(), method="POST")
        assert (response.status, await response.read()) == (413, TOO_LARGE)
        response.release()
        assert asyncio.get_running_loop().time() - started < 1.0  # not after the 5 s write timeout
        second = await pool.request(GET, None)
        assert await second.read() == b"fine"
        second.release()

    stats = run(answers_then_stops_reading, test, read_timeout=5.0)
    assert stats.connections == 2  # the answered upload's connection went nowhere but closed


def test_an_early_answer_does_not_wait_for_a_caller_that_pauses_its_upload() -> None:
    """The caller sends part of its upload, then nothing for a while (a slow link, a client that waits):
    an answer the upstream gives meanwhile is given at once, not when the caller sends on."""

    async def answers_early(reader: Reader, writer: Writer) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(EARLY_413)
        await writer.drain()
        await reader.read()  # reads on, without closing: only the client's closing ends this

    async def test(pool: ConnectionPool, stats: Stats) -> None:
        started = asyncio.get_running_loop().time()
        response = await pool.request(_UPLOAD_HEAD, _pausing_upload(), method="POST")
        assert (response.status, await response.read()) == (413, TOO_LARGE)
        response.release()
        assert asyncio.get_running_loop().time() - started < 1.0
        for _ in range(100):  # and the connection, the upstream still waiting for the rest, is closed
            if stats.closed_by_client:
                return
            await asyncio.sleep(0.01)

    assert len(run(answers_early, test, read_timeout=30.0).closed_by_client) == 1


def test_a_connection_dropped_while_the_caller_pauses_its_upload_fails_at_once() -> None:
    async def hangs_up(reader: Reader, writer: Writer) -> None:
        await reader.readuntil(b"\r\n\r\n")  # and closes, answering nothing

    async def test(pool: ConnectionPool, stats: Stats) -> None:
        started = asyncio.get_running_loop().time()
        with pytest.raises(UpstreamClosed):
            await pool.request(_UPLOAD_HEAD, _pausing_upload(), method="POST")
        assert asyncio.get_running_loop().time() - started < 1.0

    run(hangs_up, test, read_timeout=30.0)


def test_a_task_cancelled_during_an_upload_stays_cancelled() -> None:
    """Only the connection's own stop ends an upload quietly: the caller's task cancelled from elsewhere
    (shutdown, a disconnect) is cancelled, as it was asked."""

    async def reads(reader: Reader, writer: Writer) -> None:
        await reader.read()

    async def pausing_upload() -> AsyncIterator[bytes]:
        yield b"x" * 65536
        await asyncio.sleep(30)
        yield b"x"

    async def test(pool: ConnectionPool, stats: Stats) -> None:
        head = b"POST /v1/files HTTP/1.1\r\nhost: t\r\ncontent-length: 65537\r\n\r\n"
        sending = asyncio.ensure_future(pool.request(head, pausing_upload(), method="POST"))
        await asyncio.sleep(0.1)
        sending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sending

    run(reads, test, read_timeout=30.0)


def test_a_cancelled_exchange_closes_its_connection_at_once() -> None:
    async def silent(reader: Reader, writer: Writer) -> None:
        await read_request(reader)
        await reader.read()  # never answers; waits for the client to go

    async def test(pool: ConnectionPool, stats: Stats) -> None:
        cancel = Cancel()
        asyncio.get_running_loop().call_later(0.1, cancel.cancel)
        with pytest.raises(Cancelled):
            await pool.request(POST, b"{}", method="POST", cancel=cancel)
        for _ in range(50):
            if stats.closed_by_client:
                return
            await asyncio.sleep(0.01)

    stats = run(silent, test, read_timeout=30.0)
    assert len(stats.closed_by_client) == 1


def test_a_cancel_after_release_leaves_the_pooled_connection_alone() -> None:
    async def keep_alive(reader: Reader, writer: Writer) -> None:
        while True:
            await read_request(reader)
            writer.write(ok(b"fine"))

    async def test(pool: ConnectionPool, stats: Stats) -> None:
        cancel = Cancel()
        response = await pool.request(GET, None, cancel=cancel)
        await response.read()
        response.release()
        second = await pool.request(GET, None)  # another caller, the same connection
        cancel.cancel()  # the first caller's late disconnect
        assert await second.read() == b"fine"
        second.release()

    assert run(keep_alive, test).connections == 1


# --- the rules as properties ---------------------------------------------------------------------------

BEHAVIOURS = (
    "good",
    "good+close",
    "good+second",
    "good+partial",
    "chunked+trailers",
    "204+second",
    "drop",
    "half",
    "malformed",
    "101",
)


def scripted_by_request() -> tuple[Handler, dict[bytes, str]]:
    """An upstream whose answer to each request is planned by its path. It runs in the test's own event
    loop, so bytes written together arrive together: the races of bytes in flight while a connection is
    taken again are left to the deterministic test of idle bytes above."""
    plan: dict[bytes, str] = {}

    async def handler(reader: Reader, writer: Writer) -> None:
        while True:
            request = await read_request(reader)
            rid = request.split(b" ")[1]
            behave = plan[rid]
            mine = b"for " + rid
            if behave == "drop":
                return
            if behave == "half":
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + mine)
                return
            if behave == "malformed":
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n")
                return
            if behave == "101":
                writer.write(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: evil\r\n\r\nEVIL")
                return
            if behave == "chunked+trailers":
                writer.write(
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\nx-evil: 1\r\n\r\n"
                    % (len(mine), mine)
                )
            elif behave == "204+second":
                writer.write(b"HTTP/1.1 204 No Content\r\n\r\n" + ok(b"EVIL"))
            else:
                writer.write(ok(mine, b"connection: close\r\n" if behave == "good+close" else b""))
            if behave == "good+second":
                writer.write(ok(b"EVIL"))
            elif behave == "good+partial":
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nEV")
            await writer.drain()
            if behave == "good+close":
                return

    return handler, plan


@pytest.mark.parametrize("seed", range(6))
def test_no_caller_ever_gets_another_callers_bytes_and_no_post_is_sent_twice(seed: int) -> None:
    rng = random.Random(seed)
    handler, plan = scripted_by_request()
    outcomes: dict[bytes, str] = {}

    async def caller(pool: ConnectionPool, worker: int) -> None:
        for n in range(40):
            rid = b"/w%d-%d" % (worker, n)
            plan[rid] = rng.choice(BEHAVIOURS)
            method = rng.choice(("GET", "POST"))
            head = b"%s %s HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\n\r\n" % (method.encode(), rid)
            try:
                response = await pool.request(head, b"{}", method=method)
                body = await response.read()
                response.release()
            except UpstreamError as exc:
                outcomes[rid] = f"error {type(exc).__name__}"
                continue
            assert b"EVIL" not in body and not any(b"evil" in name for name, _ in response.headers)
            if response.status == 204:
                assert body == b""
            else:
                assert (response.status, body) == (200, b"for " + rid)
            outcomes[rid] = "answered"
            if rng.random() < 0.3:
                await asyncio.sleep(0.01)  # let idle bytes arrive on pooled connections

    async def test(pool: ConnectionPool, stats: Stats) -> None:
        await asyncio.gather(*(caller(pool, worker) for worker in range(6)))

    stats = run(handler, test)
    for rid, behave in plan.items():
        sent = stats.count(b" %s HTTP/1.1" % rid)
        post = any(r.startswith(b"POST %s " % rid) for r in stats.requests)
        assert sent <= (1 if post else 2), (rid, behave, sent)
        if behave in ("good", "good+close", "good+second", "good+partial", "chunked+trailers"):
            assert outcomes[rid] == "answered", (rid, behave, outcomes[rid])
    assert set(outcomes) == set(plan)


def test_a_head_under_the_bound_arriving_with_a_large_body_in_one_write_is_passed_on() -> None:
    just_under = b"".join(b"x-%05d: %s\r\n" % (i, b"v" * 100) for i in range(580))  # 62,060 bytes
    body = b"b" * 200_000

    async def handler(reader: Reader, writer: Writer) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"
            + just_under
            + b"content-length: %d\r\n\r\n%s" % (len(body), body)
        )
        await writer.drain()
        await reader.read()

    async def test(pool: ConnectionPool, stats: Stats) -> None:
        response = await pool.request(GET, None)
        assert (response.status, len(response.headers), await response.read()) == (200, 581, body)

    run(handler, test, max_header_bytes=64 * 1024)
