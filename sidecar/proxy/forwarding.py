"""Headers across the proxy: what is forwarded, what is dropped, what is added.

Hop-by-hop headers (RFC 9110 section 7.6.1: ``Connection`` and every header it names, ``Keep-Alive``,
``Proxy-*``, ``TE``, ``Trailer``, ``Transfer-Encoding``, ``Upgrade``) describe one connection and never
cross the proxy in either direction. ``Host`` becomes the upstream's, the caller's goes into
``X-Forwarded-Host``; the caller's address is appended to ``X-Forwarded-For``; ``X-Forwarded-Proto`` and
``X-Forwarded-Host`` set by a load balancer in front are kept. Everything else, the caller's credential
included, is forwarded as sent: the sidecar adds no credential of its own on this path, ever.

A WebSocket handshake (``handshake_request_headers``) goes up the same way, less what the client towards
LiteLLM writes itself: ``Host`` and the handshake's own ``Sec-WebSocket-*`` (the caller's subprotocols go
with it as a list), and less the caller's body framing, as a request the sidecar builds (below): a handshake
has no body; its ``X-Forwarded-Proto`` is the handshake request's, ``http`` or ``https``.

A request the sidecar builds itself on a caller's behalf (the discovery forward, the budget probe, the budget
view's call: ``built_request_headers``) carries no body, so it says so: the caller's framing
(``Content-Length``, ``Expect``; ``Transfer-Encoding`` is hop-by-hop anyway) never goes with it. Copied, a
declared body that is never sent would leave LiteLLM waiting for it, or an upstream that does not wait
would read the next request on that connection as the missing body.
"""

from __future__ import annotations

from collections.abc import Iterable

from sidecar.types import RawHeaders, Scope

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
_REQUEST_DROPPED = HOP_BY_HOP | {b"host", b"x-forwarded-for"}
_FRAMING = frozenset({b"content-length", b"expect"})  # a request's body, never that of a request we build
_BUILT_DROPPED = _REQUEST_DROPPED | _FRAMING
# A WebSocket handshake's own headers: the client towards LiteLLM writes its own (the caller's subprotocols
# go with it as a list), and ``Host``, which it writes from the upstream's URL; a handshake has no body,
# so no framing either.
_HANDSHAKE_DROPPED = _BUILT_DROPPED | {
    b"sec-websocket-key",
    b"sec-websocket-version",
    b"sec-websocket-extensions",
    b"sec-websocket-protocol",
}
# ``X-Forwarded-Proto`` by the scheme ASGI gives: a WebSocket's is ws or wss, the proto of its request http
# or https.
_PROTO = {"http": b"http", "https": b"https", "ws": b"http", "wss": b"https"}
_REPLACED_IN_REPLY = frozenset({b"content-length", b"content-type", b"content-encoding", b"etag"})


def _connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    """The headers ``Connection`` names (lower-cased), from headers whose names are lower-case already
    (ASGI's, or an answer's once lowered); a plain loop, no generator: every request passes here."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            tokens.update(token.strip().lower() for token in value.split(b","))
    return tokens


def upstream_request_headers(scope: Scope, upstream_host: bytes) -> RawHeaders:
    """The caller's headers as they go upstream."""
    return _upstream(scope, upstream_host, _REQUEST_DROPPED)


def built_request_headers(scope: Scope, upstream_host: bytes) -> RawHeaders:
    """The caller's headers for a body-less request the sidecar builds on its behalf: no framing."""
    return _upstream(scope, upstream_host, _BUILT_DROPPED)


def handshake_request_headers(scope: Scope) -> RawHeaders:
    """The caller's headers for a WebSocket handshake with LiteLLM, less those the client there writes
    itself (``Host`` and the handshake's own)."""
    return _upstream(scope, None, _HANDSHAKE_DROPPED)


def _upstream(scope: Scope, upstream_host: bytes | None, dropped: frozenset[bytes]) -> RawHeaders:
    raw: RawHeaders = scope["headers"]
    tokens = _connection_tokens(raw)
    if tokens:
        dropped = dropped | tokens
    out: RawHeaders = []
    host = forwarded_for = None
    has_proto = has_host = False
    for name, value in raw:
        if name in dropped:
            if name == b"host":
                host = value
            elif name == b"x-forwarded-for":
                forwarded_for = value
            continue
        if name == b"x-forwarded-proto":
            has_proto = True
        elif name == b"x-forwarded-host":
            has_host = True
        out.append((name, value))
    if upstream_host is not None:
        out.append((b"host", upstream_host))
    client = scope.get("client")
    if client:
        chain = forwarded_for + b", " if forwarded_for else b""
        out.append((b"x-forwarded-for", chain + str(client[0]).encode("latin-1")))
    elif forwarded_for:
        out.append((b"x-forwarded-for", forwarded_for))
    if not has_proto:
        scheme = scope.get("scheme", "http")
        out.append((b"x-forwarded-proto", _PROTO.get(scheme) or scheme.encode("latin-1")))
    if not has_host and host:
        out.append((b"x-forwarded-host", host))
    return out


def downstream_headers(raw: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The upstream's response headers as they go to the caller: lower-cased, hop-by-hop ones removed.
    (Every answer passes here: each name is lower-cased once, and ``Connection`` looked into only when
    the answer has one.)"""
    lowered = [(name.lower(), value) for name, value in raw]
    tokens = _connection_tokens(lowered)
    dropped = HOP_BY_HOP | tokens if tokens else HOP_BY_HOP
    return [header for header in lowered if header[0] not in dropped]


def relocated(headers: RawHeaders, upstream_host: bytes, prefix: bytes) -> RawHeaders:
    """``headers`` with a ``Location`` that points at LiteLLM itself made relative: the caller resolves it
    against the URL it asked, so it stays on the scheme, host and port the caller used.

    LiteLLM writes an absolute ``Location`` from the ``Host`` it was sent - the upstream's, on this path
    (Starlette's 307 from ``/mcp`` to ``/mcp/``, LiteLLM before 1.110: ``http://127.0.0.1:4000/mcp/``).
    Followed as it is, it would take the caller past the sidecar to an address that may not be reachable
    from where the caller is; and its scheme is LiteLLM's, ``http`` behind a TLS terminator, so a client
    would repeat a POST, key and all, in the clear. A relative reference (RFC 9110 10.2.2) keeps what the
    caller used; the upstream's path prefix goes, query and fragment stay. A ``Location`` anywhere else is
    left alone."""
    out = []
    for name, value in headers:
        if name == b"location":
            _, sep, rest = value.partition(b"://")
            end = len(rest)
            for mark in (b"/", b"?", b"#"):
                at = rest.find(mark)
                if 0 <= at < end:
                    end = at
            authority, path = rest[:end], rest[end:]
            inside = not prefix or path == prefix or path.startswith((prefix + b"/", prefix + b"?"))
            if sep and authority.lower() == upstream_host.lower() and inside:
                value = path[len(prefix) :]
                if not value.startswith(b"/"):
                    value = b"/" + value
        out.append((name, value))
    return out


def reply_headers(upstream: RawHeaders, extra: Iterable[tuple[bytes, bytes]]) -> RawHeaders:
    """Headers for an answer the sidecar wrote itself, keeping the upstream's others (date, server, ...)."""
    return [*((n, v) for n, v in upstream if n not in _REPLACED_IN_REPLY), *extra]
