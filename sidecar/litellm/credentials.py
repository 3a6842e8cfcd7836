"""How LiteLLM names a caller: where it reads the virtual key and the end user, the token it stores, a label
safe for logs.

The sidecar must read a request exactly as LiteLLM does, or it keeps budget state for a caller LiteLLM does
not see: the rows below are LiteLLM's own, read from its source on every version in the suite (1.83.3,
1.88.6, 1.106.2, 1.109.1, 1.110.2; the same order on all five), ``UAKA`` being
``litellm/proxy/auth/user_api_key_auth.py``:

- **The key** (``get_api_key``: UAKA:394 @1.83.3, :497 @1.88.6, :837 @1.106.2, :1446 @1.109.1, :1509
  @1.110.2), first source present wins, ``KEY_SOURCES``. ``Authorization`` and ``x-litellm-api-key`` lose a
  ``Bearer ``/``bearer ``/``Basic `` prefix (case-sensitive); an ``Authorization`` with any other scheme
  gives LiteLLM an empty key (a 401) and later headers are not tried: the sidecar then sees no credential.
  The other headers are taken raw. Not followed: ``?key=`` on Gemini ``generateContent`` routes (never
  discovery), pass-through endpoints' own headers, and ``general_settings.litellm_key_header_name`` (an
  operator setting the sidecar does not read: a deployment using it is seen as sending no key, so its
  discovery is LiteLLM's own answer).
- **The key of a WebSocket handshake** (``user_api_key_auth_websocket``: UAKA:267 @1.83.3, :370 @1.88.6,
  :707 @1.106.2, :1298 @1.109.1, :1361 @1.110.2) is read by a rule of its own, ``websocket_key``:
  ``Authorization`` (only as ``Bearer <key>``; any other scheme is refused, later sources not tried), else
  ``api-key``, else the browser's ``openai-insecure-api-key.<key>`` subprotocol; the other headers are not
  read there.
- **The end user** (``get_end_user_id_from_request_body``, ``proxy/auth/auth_utils.py``:770 @1.83.3,
  :1173 @1.88.6, :1709 @1.106.2, :1961 @1.109.1, :1996 @1.110.2): ``x-litellm-customer-id`` *before*
  ``x-litellm-end-user-id`` (``STANDARD_CUSTOMER_ID_HEADERS``, ``constants.py``:1257 @1.83.3 ... :1733
  @1.110.2), then the operator's ``user_header_mappings`` entries with role ``customer`` (or the older
  ``user_header_name``): the sidecar's ``end_user_headers`` setting names the same headers; then the body's
  ``user``. A discovery request has no body, but LiteLLM copies the query string into the request data
  first (``populate_request_with_path_params``), so ``?user=`` names the end user there; then
  ``safety_identifier``. Blank values are skipped; values are stripped (1.88.6 on).
"""

from __future__ import annotations

import hashlib
from urllib.parse import parse_qsl

from sidecar.types import Scope

# (header, prefixes LiteLLM strips) in LiteLLM's order; a header given with none of its prefixes is taken
# raw, except ``authorization`` (``_NO_FALL_THROUGH``).
_BEARER = ("Bearer ", "bearer ", "Basic ")
KEY_SOURCES: tuple[tuple[bytes, tuple[str, ...]], ...] = (
    (b"x-litellm-api-key", _BEARER),  # UAKA:416 @1.83.3, :1531 @1.110.2
    (b"authorization", _BEARER),  # UAKA:419 @1.83.3, :1534 @1.110.2
    (b"api-key", ()),  # Azure; UAKA:422 @1.83.3, :1537 @1.110.2
    (b"x-api-key", ()),  # Anthropic; UAKA:425 @1.83.3, :1540 @1.110.2
    (b"x-goog-api-key", ()),  # UAKA:428 @1.83.3, :1543 @1.110.2
    (b"ocp-apim-subscription-key", ()),  # Azure APIM; UAKA:431 @1.83.3, :1546 @1.110.2
)
_NO_FALL_THROUGH = b"authorization"  # an unknown scheme there is an empty key, not a reason to look further
# Where LiteLLM reads the end user a request names, before any operator mapping (constants.py,
# STANDARD_CUSTOMER_ID_HEADERS: the same order on every version from 1.83 to 1.110).
END_USER_HEADERS = (b"x-litellm-customer-id", b"x-litellm-end-user-id")
# Query parameters LiteLLM reads as the end user on a request without a body, in its order.
_END_USER_PARAMS = ("user", "safety_identifier")

_end_user_headers: tuple[bytes, ...] = END_USER_HEADERS
_read: frozenset[bytes] = frozenset(name for name, _ in KEY_SOURCES) | frozenset(END_USER_HEADERS)


def configure(end_user_headers: tuple[str, ...] = ()) -> None:
    """The operator's ``user_header_mappings`` (role ``customer``) or ``user_header_name``, in LiteLLM's
    config order: read after LiteLLM's standard headers, as LiteLLM reads them."""
    global _end_user_headers, _read
    extra = tuple(name.strip().lower().encode("latin-1") for name in end_user_headers if name.strip())
    _end_user_headers = END_USER_HEADERS + tuple(h for h in extra if h not in END_USER_HEADERS)
    _read = frozenset(name for name, _ in KEY_SOURCES) | frozenset(_end_user_headers)


def _credential_headers(scope: Scope) -> dict[bytes, bytes]:
    """The first value of each header LiteLLM reads a caller from, in one pass over the request's."""
    found: dict[bytes, bytes] = {}
    read = _read
    for name, value in scope["headers"]:
        if name in read and name not in found:
            found[name] = value
    return found


def caller(scope: Scope) -> tuple[str | None, str | None]:
    """The key and the end user LiteLLM reads from this request (``caller_key``, ``end_user_of``)."""
    headers = _credential_headers(scope)
    key = _key(headers) if scope.get("type") != "websocket" else websocket_key(scope)
    return key, (_end_user(scope, headers) if key is not None else None)


_SUBPROTOCOL = "openai-insecure-api-key."


def websocket_key(scope: Scope) -> str | None:
    """The key LiteLLM reads from a WebSocket handshake (its own rule: see above), or ``None``."""
    found: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        if name in (b"authorization", b"api-key", b"sec-websocket-protocol") and name not in found:
            found[name] = value
    authorization = found.get(b"authorization", b"").decode("latin-1")
    if authorization:
        key = authorization[len("Bearer ") :].strip() if authorization.startswith("Bearer ") else ""
        return key or None
    api_key = found.get(b"api-key", b"").decode("latin-1")
    if api_key:
        return api_key
    for protocol in found.get(b"sec-websocket-protocol", b"").decode("latin-1").split(","):
        protocol = protocol.strip()
        if protocol.startswith(_SUBPROTOCOL):
            return protocol[len(_SUBPROTOCOL) :] or None
    return None


def caller_key(scope: Scope) -> str | None:
    """The key LiteLLM reads from this request, or ``None`` where it reads none (or an empty one)."""
    return _key(_credential_headers(scope))


def _key(headers: dict[bytes, bytes]) -> str | None:
    for name, prefixes in KEY_SOURCES:
        raw = headers.get(name)
        if not raw:
            continue
        text = raw.decode("latin-1")
        for prefix in prefixes:
            if text.startswith(prefix):
                return text[len(prefix) :].strip() or None
        if name == _NO_FALL_THROUGH:
            return None
        return text.strip() or None
    return None


# LiteLLM's token and the sidecar's label start from these states (copying a hash state is cheaper than
# making a new one: OpenSSL looks the algorithm up each time).
_TOKEN = hashlib.sha256()
_LABEL = hashlib.sha256(b"litellm-budget-sidecar:")


def key_hash(key: str) -> str:
    """LiteLLM's token for a virtual key: the SHA-256 hex of the key, usable only by an admin look-up."""
    digest = _TOKEN.copy()
    digest.update(key.encode("utf-8"))
    return digest.hexdigest()


def key_label(key: str) -> str:
    """A short, non-reversible label for logs: 12 hex digits of a hash distinct from LiteLLM's token."""
    return token_label(key_hash(key))


def token_label(token: str) -> str:
    """``key_label`` of the key whose ``key_hash`` is ``token``: a hash of the token (so that a label is
    made only when a line is written, from what a principal keeps), never the token itself."""
    digest = _LABEL.copy()
    digest.update(token.encode("ascii"))
    return digest.hexdigest()[:12]


def end_user_of(scope: Scope) -> str | None:
    """The end user (LiteLLM's customer) LiteLLM reads from this request's headers or query, or ``None``."""
    return _end_user(scope, _credential_headers(scope))


def _end_user(scope: Scope, headers: dict[bytes, bytes]) -> str | None:
    for name in _end_user_headers:
        raw = headers.get(name)
        if raw and (text := raw.decode("latin-1").strip()):
            return text
    query = scope.get("query_string") or b""
    if query:
        params: dict[str, str] = dict(parse_qsl(query.decode("latin-1")))
        for param in _END_USER_PARAMS:
            found = params.get(param, "").strip()
            if found:
                return found
    return None
