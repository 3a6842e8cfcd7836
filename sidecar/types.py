"""Type aliases shared by the modules: the ASGI interface, as the raw pass-through uses it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
RawHeaders = list[tuple[bytes, bytes]]


class AbortedResponse(Exception):
    """Raised to the ASGI server to abort a response whose head is already sent (the only signal ASGI
    has): its cause was logged where it happened, so the server's own error line for it is dropped
    (``logs.configure``)."""
