"""The pass-through: byte for byte, streamed both ways, no state shared between callers."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from sidecar.proxy.upstream import LeavingCaller
from tests.conftest import SidecarFactory, bearer
from tests.fake_litellm import KEYS, FakeLiteLLM


def raw_http(url: str, request: bytes, timeout: float = 5) -> bytes:
    """Send bytes as they are (no client normalising the path) and read the whole answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_method_path_query_headers_and_body_arrive_as_sent(
    fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client
) -> None:
    url = sidecar()
    body = b'{"model": "free-model", "messages": [{"role": "user", "content": "h\\u00e9"}]}'
    answer = client.request(
        "PATCH",
        url + "/echo/a%20b/c?x=1&x=2&y=%2F&z",
        content=body,
        headers={**bearer("KEY_HEALTHY"), "X-Custom": "v1", "Content-Type": "application/json"},
    )
    echoed = answer.json()
    assert echoed["method"] == "PATCH"
    assert echoed["target"] == "/echo/a%20b/c?x=1&x=2&y=%2F&z"
    assert echoed["body"].encode("latin-1") == body
    headers = dict(echoed["headers"])
    assert headers["authorization"] == f"Bearer {KEYS['KEY_HEALTHY']}"
    assert headers["x-custom"] == "v1"
    assert headers["content-type"] == "application/json"
    assert headers["content-length"] == str(len(body))
    assert headers["host"] == fake.url.removeprefix("http://")
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-host"] == url.removeprefix("http://")
    assert "user-agent" in headers and headers["user-agent"].startswith("python-httpx")  # the caller's own


def test_hop_by_hop_headers_do_not_cross(fake: FakeLiteLLM, sidecar: SidecarFactory) -> None:
    url = sidecar()
    answer = raw_http(
        url,
        b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close, X-Drop-Me\r\nX-Drop-Me: 1\r\nKeep-Alive: 5\r\n"
        b"TE: trailers\r\nProxy-Authorization: Basic abc\r\nX-Forwarded-For: 10.9.9.9\r\nX-Keep: yes\r\n\r\n",
    )
    echoed = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    names = {name for name, _ in echoed["headers"]}
    assert names.isdisjoint({"x-drop-me", "keep-alive", "te", "proxy-authorization"})
    assert dict(echoed["headers"])["x-keep"] == "yes"
    assert dict(echoed["headers"])["x-forwarded-for"] == "10.9.9.9, 127.0.0.1"
    assert dict(echoed["headers"]).get("connection") in (None, "keep-alive")


def test_admin_credential_is_never_added_on_pass_through(
    fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client
) -> None:
    url = sidecar()
    client.post(url + "/echo", content=b"{}")  # no credential at all
    client.get(url + "/key/info?key=x", headers=bearer("KEY_HEALTHY"))
    for seen in fake.seen:
        assert KEYS["MASTER"] not in json.dumps(seen.headers)


@pytest.mark.parametrize(
    "target",
    [
        b"/v1/models/../key/info",
        b"/v1/models/%2e%2e/key/info",
        b"/v1/models/..%2Fkey%2Finfo",
        b"//v1/models",
        b"/v1//models",
        b"/v1/models/./free-model",
    ],
)
def test_hostile_paths_go_upstream_as_sent_with_the_callers_key_only(
    fake: FakeLiteLLM, sidecar: SidecarFactory, target: bytes
) -> None:
    url = sidecar()
    raw_http(
        url,
        b"GET "
        + target
        + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + KEYS["KEY_TEAM_BROKE"].encode()
        + b"\r\nConnection: close\r\n\r\n",
    )
    assert [s.target for s in fake.seen] == [target.decode()]
    assert fake.admin_requests() == []


def test_request_body_is_streamed_up_not_buffered(
    fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client
) -> None:
    url = sidecar()

    def body() -> Iterator[bytes]:
        for _ in range(8):
            yield b"x" * 65536
            time.sleep(0.05)

    answer = client.post(
        url + "/upload", content=body(), headers={"Content-Type": "application/octet-stream"}
    )
    counted = answer.json()
    assert counted["bytes"] == 8 * 65536
    assert counted["chunks"] > 1


def test_sse_arrives_chunk_by_chunk(fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client) -> None:
    url = sidecar()
    arrivals = []
    with client.stream("GET", url + "/sse") as stream:
        assert stream.headers["content-type"] == "text/event-stream"
        for chunk in stream.iter_raw():
            arrivals.append((time.monotonic(), chunk))
    data = b"".join(chunk for _, chunk in arrivals)
    assert data == b"".join(f"data: {i}\n\n".encode() for i in range(5)) + b"data: [DONE]\n\n"
    assert arrivals[0][1] == b"data: 0\n\n"
    assert arrivals[-1][0] - arrivals[0][0] > 0.6  # the first event came long before the stream ended


def test_client_disconnect_closes_the_upstream_stream(fake: FakeLiteLLM, sidecar: SidecarFactory) -> None:
    url = sidecar()
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"GET /sse HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        while b"data: 0" not in received:
            received += sock.recv(65536)
    deadline = time.monotonic() + 3
    while "sse-disconnected" not in fake.events and time.monotonic() < deadline:
        time.sleep(0.02)
    assert fake.events == ["sse-disconnected"]


def test_compressed_bodies_stay_compressed(fake: FakeLiteLLM, sidecar: SidecarFactory) -> None:
    url = sidecar()
    answer = raw_http(
        url, b"GET /gzip HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n"
    )
    head, body = answer.split(b"\r\n\r\n", 1)
    assert b"content-encoding: gzip" in head.lower()
    assert gzip.decompress(body) == b'{"compressed": true}'


def test_cookies_of_one_caller_never_reach_another(fake: FakeLiteLLM, sidecar: SidecarFactory) -> None:
    url = sidecar()
    with httpx.Client() as caller_a:
        answer = caller_a.get(url + "/set-cookie")
        assert answer.headers["set-cookie"].startswith("session=caller-a-secret")  # passed to its caller
    with httpx.Client() as caller_b:
        echoed = caller_b.get(url + "/echo").json()
    assert "cookie" not in {name for name, _ in echoed["headers"]}


def test_redirects_are_returned_not_followed(
    fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client
) -> None:
    answer = client.get(sidecar() + "/redirect")
    assert answer.status_code == 307
    assert answer.headers["location"] == "http://127.0.0.1:9/elsewhere"
    assert [s.target for s in fake.seen] == ["/redirect"]


def test_no_doubled_server_or_date_headers(fake: FakeLiteLLM, sidecar: SidecarFactory) -> None:
    answer = raw_http(sidecar(), b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head = answer.split(b"\r\n\r\n", 1)[0].lower()
    assert head.count(b"\r\ndate:") == 1
    assert head.count(b"\r\nserver:") == 1


def test_unreachable_upstream_is_a_502(sidecar: SidecarFactory, client: httpx.Client) -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    url = sidecar(upstream_url=f"http://127.0.0.1:{port}")
    for path in ("/v1/chat/completions", "/v1/models"):
        answer = client.post(url + path, json={}) if "chat" in path else client.get(url + path)
        assert answer.status_code == 502
        assert answer.json()["error"]["type"] == "upstream_error"


def test_slow_upstream_is_a_504(fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client) -> None:
    fake.delay = 1.0
    url = sidecar(read_timeout=0.2)
    for path in ("/echo", "/v1/models"):
        answer = client.get(url + path, headers=bearer("KEY_HEALTHY"))
        assert answer.status_code == 504
        assert answer.json()["error"]["type"] == "upstream_error"


def test_healthz_answers_without_asking_the_upstream(
    fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client
) -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    url = sidecar(upstream_url=f"http://127.0.0.1:{port}")  # nothing listens upstream
    answer = client.get(url + "/healthz")
    assert (answer.status_code, answer.json()) == (200, {"status": "ok"})


def test_concurrent_streams_then_more_streams_all_complete(
    fake: FakeLiteLLM, sidecar: SidecarFactory
) -> None:
    """Connections go back to the pool after a stream; none may be closed under a later request."""
    import concurrent.futures

    url = sidecar()

    def stream() -> bytes:
        with httpx.Client(timeout=10) as own:
            return own.get(url + "/sse?n=2").content

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        for _ in range(3):
            bodies = list(pool.map(lambda _: stream(), range(10)))
            assert all(body == b"data: 0\n\ndata: 1\n\ndata: [DONE]\n\n" for body in bodies)
    assert "sse-disconnected" not in fake.events


# --- a caller leaving, under another ASGI server than the sidecar's -----------------------------------


def _served_until_left(outside_cancel: bool) -> tuple[str | None, bool]:
    """Work done for a caller the way discovery does it, under a server whose ``receive`` is a plain
    function (no ``RequestResponseCycle``): the caller leaves, or the task is cancelled from outside."""

    async def run() -> tuple[str | None, bool]:
        said: asyncio.Queue[dict[str, str]] = asyncio.Queue()

        async def work() -> str | None:
            leaving = LeavingCaller(said.get)
            try:
                await asyncio.sleep(30)  # LiteLLM slow
                return "answered"
            except asyncio.CancelledError:
                if not leaving.gone():
                    raise
                return None
            finally:
                leaving.stop()

        task = asyncio.ensure_future(work())
        await asyncio.sleep(0.01)
        if outside_cancel:
            task.cancel()
        else:
            await said.put({"type": "http.disconnect"})
        try:
            return await asyncio.wait_for(task, 5), False
        except asyncio.CancelledError:
            return None, True

    return asyncio.run(run())


def test_work_for_a_caller_that_leaves_under_another_server_stops_and_says_so() -> None:
    assert _served_until_left(outside_cancel=False) == (None, False)  # stopped, not cancelled


def test_a_cancellation_that_is_not_the_caller_leaving_goes_on_up() -> None:
    assert _served_until_left(outside_cancel=True) == (None, True)
