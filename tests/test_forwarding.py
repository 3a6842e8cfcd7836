"""Headers across the proxy (``sidecar/proxy/forwarding.py``), as plain data."""

from __future__ import annotations

import pytest

from sidecar.proxy.forwarding import downstream_headers


@pytest.mark.parametrize(
    ("upstream", "caller_gets"),
    [
        # LiteLLM's own answer: lower-case names, nothing hop-by-hop
        (
            [(b"content-type", b"application/json"), (b"x-litellm-call-id", b"c1")],
            [(b"content-type", b"application/json"), (b"x-litellm-call-id", b"c1")],
        ),
        # names lower-cased, order and repeats kept
        (
            [(b"Set-Cookie", b"a=1"), (b"X-Id", b"7"), (b"set-cookie", b"b=2")],
            [(b"set-cookie", b"a=1"), (b"x-id", b"7"), (b"set-cookie", b"b=2")],
        ),
        # hop-by-hop headers never cross, in any case
        (
            [
                (b"Connection", b"keep-alive"),
                (b"Keep-Alive", b"timeout=5"),
                (b"Transfer-Encoding", b"chunked"),
                (b"TE", b"trailers"),
                (b"Trailer", b"x-sum"),
                (b"Upgrade", b"h2c"),
                (b"Proxy-Authenticate", b"Basic"),
                (b"content-length", b"2"),
            ],
            [(b"content-length", b"2")],
        ),
        # nor the headers Connection names, in whatever case either is written
        (
            [
                (b"CONNECTION", b"close, X-Per-Hop ,x-other"),
                (b"x-per-hop", b"1"),
                (b"X-Other", b"2"),
                (b"x-e2e", b"3"),
            ],
            [(b"x-e2e", b"3")],
        ),
        # two Connection headers: the tokens of both count
        (
            [
                (b"connection", b"x-a"),
                (b"connection", b"x-b"),
                (b"x-a", b"1"),
                (b"x-b", b"2"),
                (b"x-c", b"3"),
            ],
            [(b"x-c", b"3")],
        ),
    ],
)
def test_downstream_headers(
    upstream: list[tuple[bytes, bytes]], caller_gets: list[tuple[bytes, bytes]]
) -> None:
    assert downstream_headers(upstream) == caller_gets
