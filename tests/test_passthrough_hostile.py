"""The real sidecar (uvicorn, production settings) between raw clients and a scripted upstream."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from asyncio import StreamReader as Reader
from asyncio import StreamWriter as Writer

import httpx

from tests.conftest import SidecarFactory
from tests.scripted import ScriptedUpstream, connect, ok, read_answer, read_request, read_response


def test_a_request_head_over_the_bound_gets_431_and_never_goes_upstream(sidecar: SidecarFactory) -> None:
    async def handler(reader: Reader, writer: Writer) -> None:
        while True:
            await read_request(reader)
            writer.write(ok(b"fine"))

    with ScriptedUpstream(handler) as upstream:
        url = sidecar(upstream_url=upstream.url, policy="blocked", admin_key=None, max_header_bytes=4096)
        with connect(url) as sock:
            sock.sendall(b"GET /v1/chat HTTP/1.1\r\nhost: x\r\nx-big: " + b"v" * 8192 + b"\r\n\r\n")
            answer = read_answer(sock)
        assert answer.startswith(b"HTTP/1.1 431 ")
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "431"
        with httpx.Client(timeout=5) as client:  # a head under the bound passes, on a new connection
            assert client.get(url + "/v1/chat", headers={"x-big": "v" * 3000}).text == "fine"
        assert len(upstream.stats.requests) == 1


def test_a_huge_request_head_is_cut_off_early_and_others_are_served(sidecar: SidecarFactory) -> None:
    url = sidecar(policy="blocked", admin_key=None)
    with connect(url) as sock, httpx.Client(timeout=5) as client:
        sock.sendall(b"GET /x HTTP/1.1\r\nhost: x\r\nx-big: ")
        sent, refused = 0, False
        try:
            while sent < 128 * 1024 * 1024:
                sock.sendall(b"v" * 65536)
                sent += 65536
        except OSError:
            refused = True  # the sidecar closed the connection long before 128 MiB
        assert refused and sent < 8 * 1024 * 1024
        assert client.get(url + "/healthz").status_code == 200


def test_a_caller_that_leaves_before_the_headers_frees_the_upstream(sidecar: SidecarFactory) -> None:
    async def silent(reader: Reader, writer: Writer) -> None:
        await read_request(reader)
        await reader.read()  # a model thinking; only the sidecar's closing ends this

    with ScriptedUpstream(silent) as upstream:
        url = sidecar(upstream_url=upstream.url, policy="blocked", admin_key=None, read_timeout=60)
        with connect(url) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}")
            assert upstream.wait_for(lambda stats: len(stats.requests) == 1)
        assert upstream.wait_for(lambda stats: len(stats.closed_by_client) == 1, timeout=5)


def test_a_caller_that_leaves_mid_stream_frees_the_upstream(sidecar: SidecarFactory) -> None:
    async def streams_then_stalls(reader: Reader, writer: Writer) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n7\r\ndata: 1\r\n")
        await writer.drain()
        await reader.read()

    with ScriptedUpstream(streams_then_stalls) as upstream:
        url = sidecar(upstream_url=upstream.url, policy="blocked", admin_key=None, read_timeout=60)
        with connect(url) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}")
            assert b"data: 1" in sock.recv(65536)
        assert upstream.wait_for(lambda stats: len(stats.closed_by_client) == 1, timeout=5)


def test_a_post_on_a_dead_pooled_connection_is_a_502_and_sent_once(sidecar: SidecarFactory) -> None:
    async def answers_once_then_drops(reader: Reader, writer: Writer) -> None:
        await read_request(reader)
        writer.write(ok(b"fine"))
        await writer.drain()
        await read_request(reader)  # the next request arrives, and the upstream hangs up

    with ScriptedUpstream(answers_once_then_drops) as upstream, httpx.Client(timeout=5) as client:
        url = sidecar(upstream_url=upstream.url, policy="blocked", admin_key=None)
        assert client.get(url + "/warm").text == "fine"
        answer = client.post(url + "/v1/chat/completions", content=b"{}")
        assert answer.status_code == 502
        assert answer.json()["error"]["type"] == "upstream_error"
        assert upstream.stats.count(b"POST /v1/chat/completions") == 1


def test_a_304_keeps_the_callers_connection(sidecar: SidecarFactory) -> None:
    async def not_modified(reader: Reader, writer: Writer) -> None:
        while True:
            await read_request(reader)
            writer.write(b'HTTP/1.1 304 Not Modified\r\netag: "1"\r\ncontent-length: 1234\r\n\r\n')

    with ScriptedUpstream(not_modified) as upstream, httpx.Client(timeout=5) as client:
        url = sidecar(upstream_url=upstream.url, policy="blocked", admin_key=None)
        for _ in range(3):
            assert client.get(url + "/files/x").status_code == 304
        assert upstream.stats.connections == 1


def test_an_unsolicited_101_and_an_unknown_transfer_coding_are_502(sidecar: SidecarFactory) -> None:
    replies = {
        b"/upgrade": b"HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\n\r\n",
        b"/gzip": b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    }

    async def hostile(reader: Reader, writer: Writer) -> None:
        request = await read_request(reader)
        writer.write(replies[request.split(b" ")[1]])
        await writer.drain()
        await reader.read()

    with ScriptedUpstream(hostile) as upstream, httpx.Client(timeout=5) as client:
        url = sidecar(upstream_url=upstream.url, policy="blocked", admin_key=None)
        for path in ("/upgrade", "/gzip"):
            answer = client.get(url + path)
            assert answer.status_code == 502
            assert "cannot be passed on" in answer.json()["error"]["message"]


def test_pipelined_requests_are_answered_in_order(sidecar: SidecarFactory) -> None:
    """uvicorn queues pipelined requests: each is answered, first come first."""

    async def echo_path(reader: Reader, writer: Writer) -> None:
        while True:
            head = await read_request(reader)
            path = head.split(b" ", 2)[1]
            writer.write(ok(path))

    with ScriptedUpstream(echo_path) as upstream:
        url = sidecar(upstream_url=upstream.url, policy="blocked", admin_key=None)
        with connect(url) as sock:
            sock.sendall(b"".join(b"GET /p%d HTTP/1.1\r\nhost: x\r\n\r\n" % i for i in range(3)))
            data = b""
            while data.count(b"HTTP/1.1 200") < 3 or not data.endswith(b"/p2"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        assert [part[-3:] for part in data.split(b"HTTP/1.1 200")[1:]] == [b"/p0", b"/p1", b"/p2"]


def test_an_upload_litellm_refuses_early_gets_its_413_while_the_caller_still_sends(
    sidecar: SidecarFactory,
) -> None:
    """LiteLLM's ``max_request_size_mb`` answers 413 from the head alone and does not read the upload; an
    upstream that then closes the connection resets it under the upload still flowing through the
    sidecar. The caller, still sending, gets that 413 as LiteLLM wrote it, each time - not a 502."""
    too_large = b'{"error":{"message":"Request size is too large","code":"413"}}'

    async def refuses_early(reader: Reader, writer: Writer) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: %d\r\n\r\n%s" % (len(too_large), too_large)
        )
        await writer.drain()  # and closes, the upload unread

    size = 16 * 1024 * 1024
    with ScriptedUpstream(refuses_early) as upstream:
        url = sidecar(upstream_url=upstream.url, policy="blocked", admin_key=None)
        for _ in range(10):  # the reset races the upload's writes: every round must see the 413
            with connect(url) as sock:
                sock.sendall(b"POST /v1/files HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % size)
                pump = threading.Thread(target=send_quietly, args=(sock, size), daemon=True)
                pump.start()
                status, _, body = read_response(sock)
                pump.join(10)
            assert (status, body) == (413, too_large)
        with httpx.Client(timeout=5) as client:  # and the sidecar serves the next caller
            assert client.post(url + "/v1/files", content=b"small").status_code == 413
        assert upstream.stats.connections == 11  # no refused upload's connection was used again


def send_quietly(sock: socket.socket, size: int) -> None:
    """Send ``size`` bytes of an upload, as a caller that does not look at the answer while sending; stop
    when the sidecar closes the connection."""
    chunk = b"x" * 65536
    with contextlib.suppress(OSError):
        for _ in range(size // len(chunk)):
            sock.sendall(chunk)


def test_an_upload_the_upstream_does_not_read_yet_holds_the_caller_back(sidecar: SidecarFactory) -> None:
    """A 128 MiB streamed upload (``/v1/files``) to an upstream that reads nothing for a second: the sidecar
    buffers a bounded amount and holds the caller back (what the caller got to send is what the kernel's
    socket buffers and the sidecar's bounded queues hold, far below the upload); then every byte arrives."""
    size = 128 * 1024 * 1024
    reading = threading.Event()

    async def reads_later(reader: Reader, writer: Writer) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(1.0)
        reading.set()
        got = 0
        while got < size and (data := await reader.read(1 << 20)):
            got += len(data)
        body = b'{"object":"file","bytes":%d}' % got
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()

    with ScriptedUpstream(reads_later) as upstream:
        url = sidecar(upstream_url=upstream.url, policy="blocked", admin_key=None)
        with connect(url) as sock:
            sock.settimeout(30)
            sock.sendall(b"POST /v1/files HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % size)
            sent = [0]

            def upload() -> None:
                chunk = b"x" * 65536
                while sent[0] < size:
                    sock.sendall(chunk)
                    sent[0] += len(chunk)

            pump = threading.Thread(target=upload, daemon=True)
            pump.start()
            assert reading.wait(10)
            held_back_at = sent[0]
            status, _, body = read_response(sock)
            pump.join(10)
        assert held_back_at < 48 * 1024 * 1024, held_back_at  # not the upload: bounded buffering
        assert (status, json.loads(body)["bytes"]) == (200, size)


def test_an_early_answer_reaches_a_caller_that_paused_its_upload(sidecar: SidecarFactory) -> None:
    async def refuses_early(reader: Reader, writer: Writer) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 2\r\n\r\n{}")
        await writer.drain()
        await reader.read()

    with ScriptedUpstream(refuses_early) as upstream:
        url = sidecar(upstream_url=upstream.url, policy="blocked", admin_key=None)
        with connect(url) as sock:
            sock.settimeout(2)  # the caller sends no more: the answer must not wait for it
            sock.sendall(
                b"POST /v1/files HTTP/1.1\r\nhost: x\r\ncontent-length: 1048576\r\n\r\n" + b"x" * 65536
            )
            assert read_response(sock)[::2] == (401, b"{}")
        assert upstream.wait_for(lambda stats: len(stats.closed_by_client) == 1)  # that connection is done


def test_a_streams_head_reaches_the_caller_before_its_first_chunk(sidecar: SidecarFactory) -> None:
    """The answer's head is held only while its body is at hand: a stream whose first chunk takes its
    time (a model thinking) gets its head at once, the chunk when it comes."""
    first_chunk = threading.Event()

    async def thinks(reader: Reader, writer: Writer) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        await writer.drain()
        await asyncio.get_running_loop().run_in_executor(None, first_chunk.wait, 10)
        writer.write(b"7\r\ndata: 1\r\n0\r\n\r\n")
        await writer.drain()

    with ScriptedUpstream(thinks) as upstream:
        url = sidecar(upstream_url=upstream.url, policy="blocked", admin_key=None)
        with connect(url) as sock:
            sock.settimeout(5)
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}")
            head = b""
            while b"\r\n\r\n" not in head:
                head += sock.recv(65536)  # a head held for the body would time out here
            assert head.startswith(b"HTTP/1.1 200 ") and b"data: 1" not in head
            first_chunk.set()
            rest = head.split(b"\r\n\r\n", 1)[1]
            while not rest.endswith(b"0\r\n\r\n"):
                rest += sock.recv(65536)
        assert b"data: 1" in rest
