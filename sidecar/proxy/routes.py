"""Which requests are model discovery, decided on the raw request path and nothing else.

Only an exact, canonical path is a discovery route. The raw bytes the client sent are checked before any
decoding: a doubled slash, a ``.`` or ``..`` segment, a percent-encoded dot, slash or backslash, a
backslash or a NUL makes the request *not* discovery, so it is passed through to LiteLLM as sent, with the
caller's own credential. That way no caller-chosen path can be turned into a look-up the sidecar makes
with its admin credential; those look-ups use fixed URLs built in ``admin.py``. Model ids may contain
``/`` (``/v1/models/openai/gpt-4o``): everything after the prefix is the id.

A ``GET`` or ``HEAD`` that carries a body (``Content-Length`` other than 0, or any ``Transfer-Encoding``)
is not discovery either (``carries_body``): it is passed through whole, body included, as any other
request, and the caller gets LiteLLM's own answer. No client library sends one; what such a request means
is LiteLLM's to say, and discovery's answers are built from requests that carry no body (a body declared on
them and never sent would leave the upstream waiting for it, or reading the next request as it).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from urllib.parse import unquote


class RouteKind(enum.Enum):
    MODELS = "models"  # /v1/models, /models, /claude_code_gateway/v1/models
    MODEL = "model"  # /v1/models/{id}, /models/{id}
    MODEL_INFO = "model_info"  # /model/info, /v1/model/info
    MODEL_INFO_V2 = "model_info_v2"  # /v2/model/info
    MODEL_GROUP_INFO = "model_group_info"  # /model_group/info
    CURSOR_MODELS = "cursor_models"  # /cursor/v1/models, the list Cursor reads


@dataclass(frozen=True, slots=True)
class DiscoveryRoute:
    kind: RouteKind
    model_id: str | None = None


_EXACT = {
    b"/v1/models": RouteKind.MODELS,
    b"/models": RouteKind.MODELS,
    # LiteLLM >= 1.106's Claude Code gateway: the same handler as /v1/models, where the gateway is enabled
    b"/claude_code_gateway/v1/models": RouteKind.MODELS,
    b"/model/info": RouteKind.MODEL_INFO,
    b"/v1/model/info": RouteKind.MODEL_INFO,
    b"/v2/model/info": RouteKind.MODEL_INFO_V2,
    b"/model_group/info": RouteKind.MODEL_GROUP_INFO,
    b"/cursor/v1/models": RouteKind.CURSOR_MODELS,
}
_MODEL_PREFIXES = (b"/v1/models/", b"/models/")
# For deployments that route discovery apart from inference (deploy/nginx, deploy/kubernetes).
DISCOVERY_PATHS = frozenset(_EXACT)
MODEL_PREFIXES = _MODEL_PREFIXES

_HOSTILE = re.compile(rb"//|\\|%2e|%2f|%5c|%00|\x00|(^|/)\.{1,2}(/|$)", re.IGNORECASE)

DISCOVERY_METHODS = frozenset({"GET", "HEAD"})


def match_discovery(method: str, raw_path: bytes) -> DiscoveryRoute | None:
    """The discovery route ``raw_path`` names exactly, or ``None`` for everything to pass through."""
    if method not in DISCOVERY_METHODS:
        return None
    kind = _EXACT.get(raw_path)
    if kind is not None:
        return DiscoveryRoute(kind)
    for prefix in _MODEL_PREFIXES:
        if raw_path.startswith(prefix):
            rest = raw_path[len(prefix) :]
            if not rest or rest.endswith(b"/") or _HOSTILE.search(raw_path):
                return None
            try:
                model_id = unquote(rest.decode("ascii"), errors="strict")
            except (UnicodeDecodeError, ValueError):
                return None
            return DiscoveryRoute(RouteKind.MODEL, model_id)
    return None


def carries_body(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a request's head announces a body (ASGI servers give header names lower-cased)."""
    for name, value in headers:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False
