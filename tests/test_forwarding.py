"""Headers across the proxy (``sidecar/proxy/forwarding.py``), as plain data."""

from __future__ import annotations

import pytest

from sidecar.proxy.forwarding import downstream_headers, relocated


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


UPSTREAM = b"127.0.0.1:4000"


@pytest.mark.parametrize(
    ("prefix", "location", "caller_gets"),
    [
        # LiteLLM's 307 from /mcp to /mcp/, built from the Host the sidecar sent: relative, so the caller
        # stays on its own scheme, host and port
        (b"", b"http://127.0.0.1:4000/mcp/", b"/mcp/"),
        (b"", b"https://127.0.0.1:4000/mcp/?a=1#f", b"/mcp/?a=1#f"),
        (b"", b"HTTP://127.0.0.1:4000", b"/"),
        # LiteLLM mounted under a path: the caller never saw it
        (b"/litellm", b"http://127.0.0.1:4000/litellm/mcp/", b"/mcp/"),
        (b"/litellm", b"http://127.0.0.1:4000/litellm?x=1", b"/?x=1"),
        # anything else is left alone: another host or port, outside the prefix, a relative reference
        (b"", b"http://127.0.0.1:4001/mcp/", b"http://127.0.0.1:4001/mcp/"),
        (b"", b"https://login.example.com/authorize", b"https://login.example.com/authorize"),
        (b"/litellm", b"http://127.0.0.1:4000/litellmx/a", b"http://127.0.0.1:4000/litellmx/a"),
        (b"", b"/mcp/", b"/mcp/"),
        (b"", b"http://127.0.0.1:4000.evil/x", b"http://127.0.0.1:4000.evil/x"),
    ],
)
def test_a_location_at_litellm_itself_is_made_relative(
    prefix: bytes, location: bytes, caller_gets: bytes
) -> None:
    headers = [(b"content-length", b"0"), (b"location", location), (b"vary", b"Origin")]
    assert relocated(headers, UPSTREAM, prefix) == [
        (b"content-length", b"0"),
        (b"location", caller_gets),
        (b"vary", b"Origin"),
    ]
