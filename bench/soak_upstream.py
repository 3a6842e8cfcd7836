"""The soak's stand-in LiteLLM: real LiteLLM 1.88.6 answers for thousands of made-up callers, in its own
process so that the soak can SIGSTOP it, kill it and start it again on the same port.

Every answer is one real LiteLLM gave (``tests/fixtures/litellm-1.88.6.json``, replayed by
``tests/fake_litellm.py``), for a caller of one of three kinds, told apart by the key's prefix:

- ``sk-soak-h-…`` healthy: answered as ``KEY_HEALTHY`` (the model list, chats);
- ``sk-soak-s-…`` spent: answered as ``KEY_TEAM_BROKE`` (its team's budget is spent: LiteLLM's budget
  error on ``/cursor/v1/models``, 1.88's 429 refusal on ``/v1/models`` and on paid chats); the admin's
  ``/key/info?key=<hash>`` answers its record, with its own hash;
- anything else is unknown: LiteLLM's 401 for a token it cannot find.

A streamed chat LiteLLM would answer 200 is generated instead of replayed: ``max_tokens`` chunks, one every
0.1-0.5 s (``chunk_delay``), whose bytes ``stream_body`` gives - so the soak can check a stream is whole.
The admin API (the master key's requests) is slow and failing on a schedule of wall-clock time since
``--epoch`` (``admin_mode``), which the soak shares, so a restarted stand-in keeps the same schedule.

    python bench/soak_upstream.py --port PORT --seed S --callers N --epoch EPOCH
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import time
from dataclasses import dataclass
from typing import Any

import uvicorn

from tests.fake_litellm import KEYS, FakeLiteLLM, Seen, _not_admitted

VERSION = "1.88.6"
MASTER = KEYS["MASTER"]
KINDS = ("healthy", "spent", "unknown")
_PREFIX = {"healthy": "sk-soak-h-", "spent": "sk-soak-s-", "unknown": "sk-soak-u-"}
_AS = {"healthy": "KEY_HEALTHY", "spent": "KEY_TEAM_BROKE"}
ADMIN_PERIOD = 60.0  # seconds: ok 0-30, slow 30-40, failing (500) 40-50, ok 50-60
ADMIN_SLOW = (0.5, 3.0)  # seconds an admin answer takes while slow
ADMIN_ERROR = json.dumps(
    {
        "error": {
            "message": "Internal Server Error",
            "type": "internal_server_error",
            "param": None,
            "code": "500",
        }
    }
).encode()

Reply = tuple[int, list[tuple[str, str]], bytes]


def callers(seed: int, per_kind: int) -> dict[str, list[str]]:
    """``per_kind`` distinct keys of each kind, the same for the same seed."""
    rng = random.Random(seed)
    return {
        kind: [f"{_PREFIX[kind]}{i:05d}-{rng.getrandbits(64):016x}" for i in range(per_kind)]
        for kind in KINDS
    }


def kind_of(key: str) -> str:
    for kind, prefix in _PREFIX.items():
        if key.startswith(prefix):
            return kind
    return "unknown"


def admin_mode(now: float, epoch: float) -> str:
    phase = (now - epoch) % ADMIN_PERIOD
    return "slow" if 30 <= phase < 40 else "failing" if 40 <= phase < 50 else "ok"


def chunk_delay(rid: str, index: int) -> float:
    """Seconds before chunk ``index`` of stream ``rid``: 0.1-0.5, fixed by the pair."""
    digest = hashlib.sha256(f"{rid}/{index}".encode()).digest()
    return 0.1 + 0.4 * digest[0] / 255


def stream_events(rid: str, model: str, n: int) -> list[bytes]:
    """The events of a streamed chat, as LiteLLM frames them, ending with ``[DONE]``."""
    events = []
    for i in range(n):
        chunk = {
            "id": f"chatcmpl-{rid}",
            "object": "chat.completion.chunk",
            "created": 1796359830,
            "model": model,
            "choices": [{"index": 0, "delta": {"content": f"tok{i} "}, "finish_reason": None}],
        }
        events.append(b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n")
    return [*events, b"data: [DONE]\n\n"]


def stream_body(rid: str, model: str, n: int) -> bytes:
    return b"".join(stream_events(rid, model, n))


@dataclass
class Generated:
    """A 200 stream to generate rather than replay."""

    rid: str
    model: str
    n: int


class SoakLiteLLM:
    """The stand-in's answers (``reply``, also what the soak expects) and its ASGI app."""

    def __init__(self, seed: int, per_kind: int, epoch: float) -> None:
        self.fake = FakeLiteLLM()
        self.fake.use_version(VERSION)
        self.epoch = epoch
        self._record = self.fake.recorded_body
        self._key_info: dict[str, bytes] = {}
        for kind, keys in callers(seed, per_kind).items():
            if kind == "unknown":
                continue
            original = KEYS[_AS[kind]]
            template = json.dumps(self._key_info_of(original), separators=(",", ":"))
            old = hashlib.sha256(original.encode()).hexdigest()
            for key in keys:
                new = hashlib.sha256(key.encode()).hexdigest()
                self._key_info[new] = template.replace(old, new).replace(original, key).encode()

    def _key_info_of(self, key: str) -> Any:
        target = f"/key/info?key={hashlib.sha256(key.encode()).hexdigest()}"
        reply = self.fake.recorded(Seen("GET", target, [("authorization", f"Bearer {MASTER}")], b""))
        assert reply is not None and reply[0] == 200, target
        return json.loads(reply[2])

    def reply(self, method: str, target: str, key: str, body: bytes) -> Reply | Generated:
        """What LiteLLM answers ``method target`` for the caller with ``key`` (the admin's included)."""
        path = target.split("?", 1)[0]
        json_type = [("content-type", "application/json")]
        if key == MASTER and path == "/key/info":
            token = target.partition("key=")[2]
            known = self._key_info.get(token)
            if known is not None:
                return 200, json_type, known
        builtin = self.fake._builtin(path.encode(), Seen(method, target, [], body))
        if builtin is not None:
            return builtin
        kind = "admin" if key == MASTER else kind_of(key)
        if kind == "unknown":
            return _not_admitted(key)
        presented = MASTER if kind == "admin" else KEYS[_AS[kind]]
        seen = Seen(method, target, [("authorization", f"Bearer {presented}")], body)
        reply = self.fake.recorded(seen)
        if reply is None:
            return 404, json_type, b'{"detail":"Not Found"}'
        status, headers, payload = reply
        if status == 200 and any(
            v.startswith("text/event-stream") for k, v in headers if k == "content-type"
        ):
            request = json.loads(body)
            return Generated(str(request["user"]), str(request["model"]), int(request["max_tokens"]))
        return status, headers, payload

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        target = scope["raw_path"].decode("latin-1")
        if scope["query_string"]:
            target += "?" + scope["query_string"].decode("latin-1")
        key = ""
        for name, value in scope["headers"]:
            if name == b"authorization":
                key = value.decode("latin-1").removeprefix("Bearer ").strip()
        if key == MASTER:
            mode = admin_mode(time.time(), self.epoch)
            if mode == "slow":
                await asyncio.sleep(random.uniform(*ADMIN_SLOW))
            elif mode == "failing":
                await _send(send, 500, [("content-type", "application/json")], ADMIN_ERROR)
                return
        answer = self.reply(scope["method"], target, key, body)
        if isinstance(answer, Generated):
            await self._stream(send, answer)
        else:
            await _send(send, *answer)

    async def _stream(self, send: Any, stream: Generated) -> None:
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for i, event in enumerate(stream_events(stream.rid, stream.model, stream.n)):
            await asyncio.sleep(chunk_delay(stream.rid, i))
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


async def _send(send: Any, status: int, headers: list[tuple[str, str]], payload: bytes) -> None:
    raw = [(k.encode(), v.encode()) for k, v in headers if k not in ("content-length", "date", "server")]
    raw += [(b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--callers", type=int, default=2000, help="distinct callers of each kind")
    parser.add_argument("--epoch", type=float, default=time.time(), help="the admin schedule's zero")
    args = parser.parse_args()
    app = SoakLiteLLM(args.seed, args.callers, args.epoch)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
        server_header=False,
        date_header=False,
        backlog=2048,
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
