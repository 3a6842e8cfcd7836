"""Structured logs: one JSON object per line on stderr.

Events carry their fields in ``extra={"fields": {...}}``. Nothing secret is ever passed in: callers are
identified by ``credentials.key_label`` (a short hash unrelated to LiteLLM's token), the admin credential
never reaches a log call, and admin look-up failures are described by path and status only.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from sidecar.types import AbortedResponse


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        message = record.getMessage()
        if message:
            entry["message"] = message
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(entry, default=str, separators=(",", ":"))  # as the docs quote it: "event":"rescue"


def _aborted_on_purpose(record: logging.LogRecord) -> bool:
    """Drop uvicorn's "Exception in ASGI application" for a response the sidecar aborted on purpose: a
    stream LiteLLM broke off is one ``upstream_error`` warning, not an error line and a traceback more."""
    error = record.exc_info[1] if record.exc_info else None
    return not isinstance(error, AbortedResponse)


# What uvicorn's WebSocket protocol (and the websockets library under it) logs of every socket: an access
# log - the path with its query - which the sidecar keeps for HTTP off too; ``websocket_closed`` says it.
_WEBSOCKET_ACCESS = ('%s - "WebSocket %s"', "connection open", "connection closed", "connection rejected")


def _no_websocket_access(record: logging.LogRecord) -> bool:
    return not (isinstance(record.msg, str) and record.msg.startswith(_WEBSOCKET_ACCESS))


def _no_websocket_frames(record: logging.LogRecord) -> bool:
    """uvicorn's WebSocket protocol logs every handshake header and frame at DEBUG (``< authorization:
    Bearer sk-...``, ``> TEXT ...``): raw keys, and callers' messages. Never written."""
    return not (
        record.levelno <= logging.DEBUG
        and isinstance(record.msg, str)
        and record.msg.startswith(("< ", "> "))
    )


def configure(level: str) -> None:
    """Send the sidecar's and uvicorn's logs to stderr as JSON lines at ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.error").addFilter(_aborted_on_purpose)
    logging.getLogger("uvicorn.error").addFilter(_no_websocket_access)
    logging.getLogger("uvicorn.error").addFilter(_no_websocket_frames)
    logging.getLogger("uvicorn.access").disabled = True
    # httpx logs every request URL at INFO; admin look-up URLs carry a key's LiteLLM token hash. The
    # websockets client towards LiteLLM logs the handshake's headers (the caller's key) and frames at DEBUG.
    for name in ("httpx", "httpcore", "websockets"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))


class Sparse:
    """A warning that may come thousands of times a second (a flood shed, callers refused at a bound):
    logged at most once every ``every`` seconds, saying under ``counted`` how often it happened since."""

    __slots__ = ("_count", "_last", "counted", "every", "logger", "name")

    def __init__(self, logger: logging.Logger, name: str, counted: str, every: float = 10.0) -> None:
        self.logger, self.name, self.counted, self.every = logger, name, counted, every
        self._count = 0
        self._last = -every

    def happened(self, **fields: Any) -> None:
        self._count += 1
        now = time.monotonic()
        if now - self._last >= self.every:
            event(self.logger, logging.WARNING, self.name, **{self.counted: self._count}, **fields)
            self._last, self._count = now, 0


def event(logger: logging.Logger, level: int, name: str, **fields: Any) -> None:
    """Log one structured event (``"event": name`` plus ``fields``)."""
    logger.log(level, "", extra={"fields": {"event": name, **fields}})
