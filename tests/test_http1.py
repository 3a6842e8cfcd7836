"""The pass-through's HTTP/1.1 client against scripted servers: keep-alive, stale connections, framing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sidecar.proxy.http1 import ConnectionPool, UpstreamError, UpstreamTimeout, _Connection
from tests.scripted import GET, Stats, ok, read_request, run


async def keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        await read_request(reader)
        writer.write(ok(b"hello"))
        await writer.drain()


def test_connections_are_kept_alive_and_reused() -> None:
    async def test(pool: ConnectionPool, stats: Stats) -> None:
        for _ in range(5):
            response = await pool.request(GET, None)
            assert (response.status, await response.read()) == (200, b"hello")
            response.release()

    assert run(keep_alive, test)["connections"] == 1


def test_concurrent_requests_use_separate_connections() -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            await asyncio.sleep(0.05)
            writer.write(ok(b"x"))

    async def test(pool: ConnectionPool, stats: Stats) -> None:
        async def one() -> bytes:
            response = await pool.request(GET, None)
            body = await response.read()
            response.release()
            return body

        assert await asyncio.gather(*(one() for _ in range(10))) == [b"x"] * 10

    assert run(slow, test)["connections"] == 10


def test_a_get_on_a_connection_the_server_dropped_while_idle_is_retried_on_a_new_one() -> None:
    async def closes_after_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(ok(b"first"))
        await writer.drain()
        await reader.read(1)  # the next request arrives ... and the server hangs up without a word

    async def test(pool: ConnectionPool, stats: Stats) -> None:
        for expected in (b"first", b"first"):
            response = await pool.request(GET, None)
            assert await response.read() == expected
            response.release()

    assert run(closes_after_one, test)["connections"] == 2


def test_a_streamed_body_is_never_sent_twice() -> None:
    async def closes_after_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(ok(b"first"))
        await writer.drain()
        await reader.read(1)

    async def body() -> AsyncIterator[bytes]:
        yield b"part"

    async def test(pool: ConnectionPool, stats: Stats) -> None:
        response = await pool.request(GET, None)
        await response.read()
        response.release()
        head = b"POST /x HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"
        with pytest.raises(UpstreamError):
            await pool.request(head, body(), chunked=True)

    run(closes_after_one, test)


def test_idle_connections_older_than_the_idle_timeout_are_not_reused() -> None:
    async def test(pool: ConnectionPool, stats: Stats) -> None:
        for _ in range(2):
            response = await pool.request(GET, None)
            await response.read()
            response.release()
            await asyncio.sleep(0.15)

    assert run(keep_alive, test, idle_timeout=0.1)["connections"] == 2


def test_body_until_close_when_the_answer_has_no_length() -> None:
    async def until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\npart one, ")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"part two")

    async def test(pool: ConnectionPool, stats: Stats) -> None:
        response = await pool.request(GET, None)
        assert await response.read() == b"part one, part two"
        response.release()

    run(until_close, test)


def test_chunked_answers_arrive_chunk_by_chunk_without_framing() -> None:
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for part in (b"data: 1\n\n", b"data: 2\n\n"):
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
            await writer.drain()
            await asyncio.sleep(0.05)
        writer.write(b"0\r\n\r\n")

    async def test(pool: ConnectionPool, stats: Stats) -> None:
        response = await pool.request(GET, None)
        assert [c async for c in response.chunks()] == [b"data: 1\n\n", b"data: 2\n\n"]
        response.release()

    run(chunked, test)


def test_head_answers_end_at_their_headers() -> None:
    async def head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n")
        await asyncio.sleep(1)

    async def test(pool: ConnectionPool, stats: Stats) -> None:
        response = await pool.request(b"HEAD /x HTTP/1.1\r\n\r\n", None, method="HEAD")
        assert (response.status, await response.read()) == (200, b"")
        assert dict(response.headers)[b"content-length"] == b"1234"
        response.release()

    run(head, test)


def test_interim_100_continue_is_skipped() -> None:
    async def continues(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"done"))

    async def test(pool: ConnectionPool, stats: Stats) -> None:
        response = await pool.request(b"POST /x HTTP/1.1\r\ncontent-length: 1\r\n\r\n", b"x")
        assert (response.status, await response.read()) == (200, b"done")

    run(continues, test)


def test_streamed_request_bodies_are_chunk_framed() -> None:
    received: list[bytes] = []

    async def records(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await read_request(reader))
        writer.write(ok(b""))

    async def body() -> AsyncIterator[bytes]:
        yield b"hello "
        yield b"world"

    async def test(pool: ConnectionPool, stats: Stats) -> None:
        head = b"POST /x HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"
        response = await pool.request(head, body(), chunked=True)
        await response.read()

    run(records, test)
    assert received[0].endswith(b"\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n")


def test_silence_is_a_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(2)

    async def test(pool: ConnectionPool, stats: Stats) -> None:
        with pytest.raises(UpstreamTimeout):
            await pool.request(GET, None)

    run(silent, test, read_timeout=0.2)


def test_the_read_timeout_bounds_each_wait_not_the_whole_stream() -> None:
    """A stream whose chunks come more often than the timeout runs on past it; a silence longer than the
    timeout in the middle of the stream ends it, measured from the last chunk."""

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for _ in range(8):  # 0.8 s of chunks, each 0.1 s after the last: four timeouts' worth in all
            await asyncio.sleep(0.1)
            writer.write(b"1\r\nx\r\n")
            await writer.drain()
        await asyncio.sleep(2)  # then silence

    async def test(pool: ConnectionPool, stats: Stats) -> None:
        loop = asyncio.get_running_loop()
        response = await pool.request(GET, None)
        received = b""
        with pytest.raises(UpstreamTimeout):
            while True:
                received += await response.chunk()
                last = loop.time()
        assert received == b"x" * 8
        assert 0.2 <= loop.time() - last < 0.6

    run(trickle, test, read_timeout=0.2)


def test_a_timer_that_fires_while_no_one_waits_does_not_time_out_the_next_wait() -> None:
    """The caller is slow to ask for the next chunk (longer than the timeout): the chunk that is already
    there is handed over, and the wait after it gets its full timeout."""

    async def two_parts(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\na\r\n")
        await writer.drain()
        await asyncio.sleep(0.45)
        writer.write(b"1\r\nb\r\n0\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(2)

    async def test(pool: ConnectionPool, stats: Stats) -> None:
        response = await pool.request(GET, None)
        assert await response.chunk() == b"a"
        await asyncio.sleep(0.3)  # the timer armed for the head's wait fires now, with no wait pending
        assert await response.chunk() == b"b"  # 0.15 s later: within the timeout of this wait
        assert await response.chunk() == b""
        response.release()

    run(two_parts, test, read_timeout=0.25)


def test_an_answer_cut_short_is_an_error_not_an_end() -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part")
        await writer.drain()

    async def test(pool: ConnectionPool, stats: Stats) -> None:
        response = await pool.request(GET, None)
        assert await response.chunk() == b"only part"
        with pytest.raises(UpstreamError):
            await response.chunk()

    run(cut, test)


def test_refused_connection_is_an_upstream_error() -> None:
    async def main() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        pool = ConnectionPool("127.0.0.1", port, False, 1.0, 1.0)
        with pytest.raises(UpstreamError) as raised:
            await pool.request(GET, None)
        assert not isinstance(raised.value, UpstreamTimeout)

    asyncio.run(main())


def test_closing_a_released_answer_leaves_its_pooled_connection_alone() -> None:
    async def test(pool: ConnectionPool, stats: Stats) -> None:
        first = await pool.request(GET, None)
        await first.read()
        first.release()
        first.close()  # e.g. a late disconnect callback: must not close what the pool now owns
        second = await pool.request(GET, None)
        assert await second.read() == b"hello"
        second.release()

    assert run(keep_alive, test)["connections"] == 1


def test_https_upstreams_are_verified_and_spoken_to(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A LiteLLM behind TLS: the certificate is checked against the trusted CAs (here, a test CA)."""
    import shutil
    import ssl
    import subprocess

    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make the test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)

    async def main(trusted: bool) -> None:
        server = await asyncio.start_server(keep_alive, "127.0.0.1", 0, ssl=server_tls)
        port = server.sockets[0].getsockname()[1]
        if trusted:
            monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        pool = ConnectionPool("localhost", port, True, 2.0, 2.0)
        try:
            if trusted:
                response = await pool.request(GET, None)
                assert (response.status, await response.read()) == (200, b"hello")
                response.release()
            else:
                with pytest.raises(UpstreamError):  # an unknown certificate is refused, not ignored
                    await pool.request(GET, None)
        finally:
            pool.close()
            server.close()

    asyncio.run(main(trusted=False))
    asyncio.run(main(trusted=True))


def test_a_connect_that_never_completes_is_a_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """(An address that swallows SYNs cannot be made on loopback: the connect is held by a stand-in.)"""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        held: list[asyncio.Future[None]] = []

        async def never(*args: object, **kwargs: object) -> None:
            held.append(loop.create_future())
            await held[-1]

        monkeypatch.setattr(loop, "create_connection", never)
        pool = ConnectionPool("127.0.0.1", 9, False, connect_timeout=0.2, read_timeout=5.0)
        started = loop.time()
        with pytest.raises(UpstreamTimeout, match="could not connect"):
            await pool.request(GET, None)
        assert 0.2 <= loop.time() - started < 1.0
        assert held[0].cancelled()  # the connect attempt itself was abandoned

    asyncio.run(main())


class _Odd(Exception):
    """An error whose constructor takes other arguments than it keeps: it cannot be copied."""

    def __init__(self, message: str, extra: int) -> None:
        super().__init__(message)
        self.extra = extra


def test_the_error_that_ended_an_exchange_is_raised_each_time_it_is_asked_for() -> None:
    """The error kept on a connection goes up as a copy (the kept one would gather the frames it passes
    through: a reference cycle), the same class and message every time; one that cannot be copied goes
    up itself."""
    loop = asyncio.new_event_loop()
    try:
        for error in (UpstreamTimeout("upstream did not answer in time"), _Odd("odd", 1)):
            connection = _Connection(loop, 1.0, 65536)
            connection.fail(error)
            raised = []
            for _ in range(2):
                with pytest.raises(type(error), match=str(error)) as caught:
                    connection.raise_error()
                raised.append(caught.value)
            if isinstance(error, UpstreamTimeout):
                assert all(each is not error for each in raised)
                assert error.__traceback__ is None  # the kept one gathered no frames
            else:
                assert all(each is error for each in raised)
    finally:
        loop.close()
