"""A stand-in LiteLLM for the unit tests: answers what real LiteLLM answered, over real HTTP.

It replays ``tests/fixtures/litellm-<version>.json`` - the verbatim answers of real LiteLLM proxies to
the keys ``../shared/litellm-upstream`` seeds, recorded by the integration suite
(``tests/integration/record.py``) - so the sidecar is tested against real bodies and headers. Tests can add
their own answers (``fake.answer(...)``) for cases LiteLLM cannot be made to produce, and a few test-only
routes exercise the pass-through: ``/echo`` (what arrived), ``/sse`` (a paced stream), ``/upload`` (counts
a streamed body), ``/set-cookie``, ``/redirect``, ``/gzip``. Every request is recorded in ``fake.seen``.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import inspect
import json
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any

from tests.seeded import END_USER_HEADER

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SHARED_RECORDINGS = Path(__file__).resolve().parents[2] / "shared" / "litellm-recordings"
VERSIONS = ("1.83.3", "1.88.6", "1.106.2", "1.109.1", "1.110.2")

# The keys ../shared/litellm-upstream seeds (its README), and the master key it starts LiteLLM with.
KEYS = {
    "KEY_TEAM_BROKE": "sk-team-broke-0000000000",
    "KEY_KEY_BROKE": "sk-key-broke-00000000000",
    "KEY_USER_BROKE": "sk-user-broke-0000000000",
    "KEY_FREE_ONLY": "sk-team-broke-freeonly00",
    "KEY_GROUP_ONLY": "sk-team-broke-grouponly0",
    "KEY_HEALTHY": "sk-healthy-0000000000000",
    "KEY_MEMBER_BROKE": "sk-member-broke-00000000",
    "KEY_WINDOW_BROKE": "sk-window-broke-00000000",  # 1.88.6 on
    "KEY_ORG_BROKE": "sk-org-broke-00000000000",  # 1.83.3 and 1.88.6 only
    "KEY_END_USER_CALLER": "sk-end-user-caller-00000",
    "MASTER": "sk-master-1234",
}
PRINCIPAL_OF = {key: name for name, key in KEYS.items()}
HASH_OWNER = {hashlib.sha256(key.encode()).hexdigest(): name for name, key in KEYS.items()}


def load_recordings(version: str, folder: Path = FIXTURES) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = json.loads((folder / f"litellm-{version}.json").read_text())
    return entries


def all_recordings() -> list[dict[str, Any]]:
    """Ours and, where it is beside the project, the shared set recorded independently of this suite."""
    folders = [FIXTURES] + ([SHARED_RECORDINGS] if SHARED_RECORDINGS.is_dir() else [])
    return [
        entry
        for folder in folders
        for version in VERSIONS
        if (folder / f"litellm-{version}.json").exists() or folder == FIXTURES  # ours: every version
        for entry in load_recordings(version, folder)
    ]


@dataclass
class Seen:
    method: str
    target: str  # raw path + "?" + raw query
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name.lower():
                return value
        return None


Reply = tuple[int, list[tuple[str, str]], bytes]


@dataclass
class FakeLiteLLM:
    version: str = "1.88.6"
    url: str = ""  # where the tests serve it (the ``fake`` fixture sets it)
    seen: list[Seen] = field(default_factory=list)
    overrides: dict[tuple[str, str], Callable[[Seen], Reply | Awaitable[Reply] | None]] = field(
        default_factory=dict
    )
    delay: float = 0.0
    # Seconds between a recorded stream's events: each event its own write, as a model sends them; a test
    # that measures how a stream arrives over time sets a pace it can tell from a buffered answer.
    pace: float = 0.01
    events: list[str] = field(default_factory=list)
    # (principal, method, target [+ "#model" for a POST] [+ "@end user" it names], anthropic) -> entry
    _index: dict[tuple[str, str, str, bool], dict[str, Any]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def use_version(self, version: str) -> None:
        self.version = version
        self._index = {}
        for entry in load_recordings(version):
            method, target = entry["request"].split(" ", 1)
            principal = entry["principal"]
            if principal.startswith("MASTER looking up"):
                principal = "MASTER"
            if "request_body" in entry:
                target += _body_tag(entry["request_body"])
            anthropic = "anthropic-version" in entry["request_headers"]
            if principal == "END_USER_BROKE":
                principal = "KEY_END_USER_CALLER"
                target += f"@{entry['request_headers'][END_USER_HEADER]}"
            self._index.setdefault((principal, method, target, anthropic), entry)

    def reset(self) -> None:
        self.seen.clear()
        self.overrides.clear()
        self.delay = 0.0
        self.pace = 0.01
        self.events.clear()
        self.use_version(self.version)

    def answer(
        self, method: str, target: str, status: int, body: Any, headers: Sequence[tuple[str, str]] = ()
    ) -> None:
        """Answer ``method target`` (path and query as sent) with ``body`` whoever asks."""
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        hdrs = list(headers) or [("content-type", "application/json")]
        self.overrides[(method, target)] = lambda _seen: (status, hdrs, raw)

    def recorded_body(self, principal: str, request: str) -> Any:
        for entry in load_recordings(self.version):
            if (
                entry["principal"] == principal
                and entry["request"] == request
                and not entry["request_headers"]
            ):
                return entry["body"]
        raise KeyError((principal, request))

    def admin_requests(self) -> list[Seen]:
        return [s for s in self.seen if s.header("authorization") == f"Bearer {KEYS['MASTER']}"]

    def recorded(self, seen: Seen) -> Reply | None:
        key = (seen.header("authorization") or "").removeprefix("Bearer ").strip()
        presented = key or (seen.header("x-api-key") or "").strip()
        principal = PRINCIPAL_OF.get(presented)
        if principal is None:
            return _not_admitted(presented) if presented else None
        anthropic = seen.header("anthropic-version") is not None
        target = seen.target
        end_user = seen.header(END_USER_HEADER)
        if seen.method == "POST":
            try:
                target += _body_tag(json.loads(seen.body or b"{}"))
            except (ValueError, RecursionError):
                return None
        if end_user is not None:
            target += f"@{end_user}"
        entry = self._index.get((principal, seen.method, target, anthropic))
        if entry is None:
            return None
        body = entry["body"]
        raw = body.encode() if isinstance(body, str) else json.dumps(body, separators=(",", ":")).encode()
        headers = [
            (k.lower(), v)
            for k, v in entry["headers"].items()
            if k.lower() not in ("content-length", "connection", "transfer-encoding", "content-encoding")
        ]
        return entry["status"], headers, raw

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        target = scope["raw_path"].decode("latin-1")
        if scope["query_string"]:
            target += "?" + scope["query_string"].decode("latin-1")
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        seen = Seen(scope["method"], target, headers, b"")
        if scope["raw_path"] == b"/upload":
            await _count_upload(seen, receive, send)
            self.seen.append(seen)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        seen.body = body
        with self._lock:
            self.seen.append(seen)
        if self.delay:
            await asyncio.sleep(self.delay)
        path = scope["raw_path"]
        if path == b"/sse":
            count = int(scope["query_string"].decode().partition("n=")[2] or 5)
            await self._sse(receive, send, count)
            return
        override = self.overrides.get((seen.method, seen.target)) or self.overrides.get((seen.method, "*"))
        reply = override(seen) if override else self._builtin(path, seen) or self.recorded(seen)
        if inspect.isawaitable(reply):  # an override that takes its time
            reply = await reply
        if reply is None:
            reply = (404, [("content-type", "application/json")], b'{"detail":"Not Found"}')
        status, reply_headers, payload = reply
        if not any(name == "date" for name, _ in reply_headers):
            reply_headers = [*reply_headers, ("date", formatdate(usegmt=True)), ("server", "uvicorn")]
        if ("content-type", "text/event-stream") in [(k, v.split(";")[0]) for k, v in reply_headers]:
            await _paced(send, status, reply_headers, payload, self.pace)
            return
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.encode(), v.encode()) for k, v in reply_headers]
                + [(b"content-length", str(len(payload)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    async def _sse(self, receive: Any, send: Any, count: int) -> None:
        """``count`` events and ``[DONE]``, 0.2 s apart; notes whether the reader stayed or went away."""
        gone = asyncio.ensure_future(receive())  # the body is read: the next message is the disconnect
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")],
            }
        )
        for i in range(count):
            await send({"type": "http.response.body", "body": f"data: {i}\n\n".encode(), "more_body": True})
            await asyncio.wait({gone}, timeout=0.2)
            if gone.done():
                self.events.append("sse-disconnected")
                return
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
        gone.cancel()
        self.events.append("sse-finished")

    def _builtin(self, path: bytes, seen: Seen) -> Reply | None:
        if path.startswith(b"/echo"):
            payload = {
                "method": seen.method,
                "target": seen.target,
                "headers": seen.headers,
                "body": seen.body.decode("latin-1"),
            }
            return 200, [("content-type", "application/json")], json.dumps(payload).encode()
        if path == b"/openapi.json":  # every LiteLLM states its version there, unauthenticated
            document = {"openapi": "3.1.0", "info": {"title": "LiteLLM API", "version": self.version}}
            return 200, [("content-type", "application/json")], json.dumps(document).encode()
        if path == b"/health/liveliness":
            return 200, [("content-type", "application/json")], b'"I\'m alive!"'
        if path == b"/metrics":
            return 200, [("content-type", "text/plain")], b"litellm_requests_metric_total 7.0\n"
        if path == b"/set-cookie":
            return (
                200,
                [("set-cookie", "session=caller-a-secret; Path=/"), ("content-type", "text/plain")],
                b"ok",
            )
        if path == b"/redirect":
            return 307, [("location", "http://127.0.0.1:9/elsewhere")], b""
        if path == b"/gzip":
            return (
                200,
                [("content-type", "application/json"), ("content-encoding", "gzip")],
                gzip.compress(b'{"compressed": true}'),
            )
        return None


def _not_admitted(key: str) -> Reply:
    """LiteLLM's answer to a credential it does not know (1.110.2's wording; the key shown masked)."""
    message = (
        f"Authentication Error, Invalid proxy server token passed. Received API Key = sk-...{key[-4:]}, "
        f"Key Hash (Token) ={hashlib.sha256(key.encode()).hexdigest()}. Unable to find token in cache or "
        "`LiteLLM_VerificationTokenTable`"
        if key.startswith("sk-")
        else "Authentication Error, LiteLLM Virtual Key expected. Received=*****, expected to start with "
        "'sk-'."
    )
    error = {
        "message": message,
        "type": "auth_error",
        "param": "None",
        "code": "401",
    }
    return 401, [("content-type", "application/json")], json.dumps({"error": error}).encode()


def _body_tag(body: Any) -> str:
    """What tells recorded POSTs to one path apart: the model and whether it streams."""
    if not isinstance(body, dict):
        return ""
    return f"#{body.get('model')}" + ("+stream" if body.get("stream") else "")


async def _paced(send: Any, status: int, headers: list[tuple[str, str]], payload: bytes, pace: float) -> None:
    """A recorded stream, one event every ``pace`` seconds, as a model would produce it."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(k.encode(), v.encode()) for k, v in headers],
        }
    )
    for event in payload.split(b"\n\n"):
        if event.strip():
            await send({"type": "http.response.body", "body": event + b"\n\n", "more_body": True})
            await asyncio.sleep(pace)
    await send({"type": "http.response.body", "body": b""})


async def _count_upload(seen: Seen, receive: Any, send: Any) -> None:
    chunks = total = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        if message.get("body"):
            chunks += 1
            total += len(message["body"])
        if not message.get("more_body"):
            break
    seen.body = json.dumps({"chunks": chunks, "bytes": total}).encode()
    payload = seen.body
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
