"""How LiteLLM names a caller: where it reads the virtual key, the token it stores, a label safe for logs."""

from __future__ import annotations

import hashlib

from sidecar.types import Scope

# Where LiteLLM reads the end user a request is made for, besides the body's ``user`` (read without any
# configuration on every version from 1.83 to 1.110).
END_USER_HEADERS = (b"x-litellm-end-user-id", b"x-litellm-customer-id")

# Where LiteLLM looks for a virtual key, in the order the sidecar trusts them.
_KEY_HEADERS = (b"x-litellm-api-key", b"authorization", b"api-key", b"x-api-key", b"x-goog-api-key")


def _first_values(scope: Scope, names: tuple[bytes, ...]) -> list[str]:
    """The first value of each header in ``names`` the request carries, in the order of ``names``."""
    found: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        if name in names and name not in found:
            found[name] = value
    return [found[name].decode("latin-1").strip() for name in names if name in found]


def caller_key(scope: Scope) -> str | None:
    """The credential the caller presented to LiteLLM, or ``None``."""
    for text in _first_values(scope, _KEY_HEADERS):
        if text[:7].lower() == "bearer ":
            text = text[7:].strip()
        if text:
            return text
    return None


def key_hash(key: str) -> str:
    """LiteLLM's token for a virtual key: the SHA-256 hex of the key, usable only by an admin look-up."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def key_label(key: str) -> str:
    """A short, non-reversible label for logs: 12 hex digits of a hash distinct from LiteLLM's token."""
    return hashlib.sha256(b"litellm-budget-sidecar:" + key.encode("utf-8")).hexdigest()[:12]


def end_user_of(scope: Scope) -> str | None:
    """The end user (LiteLLM's customer) the request names in a header, or ``None``."""
    return next((text for text in _first_values(scope, END_USER_HEADERS) if text), None)
