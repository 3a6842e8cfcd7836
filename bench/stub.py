"""A fast stand-in for LiteLLM for the benchmarks: pre-built answers, keep-alive, uvloop + httptools.

Each answer has LiteLLM 1.110's status, headers (its security headers everywhere, its ``x-litellm-*`` set on
inference calls) and body shape, as recorded in ``tests/fixtures/litellm-1.110.2.json``. LiteLLM checks the
credential first, then the budget:

- ``Bearer sk-bench-healthy``: ``GET /v1/models`` and ``/cursor/v1/models`` (the sidecar's budget probe,
  within budget: 200 and the list, as 1.106+ answer it) 60 models (about 6 KB); ``POST /v1/chat/completions``
  a small chat JSON, or, with ``"stream": true``, an SSE stream of 50 chunks, each written on its own
  (chunked transfer encoding);
- ``Bearer sk-bench-broke``: LiteLLM 1.88's 429 budget error on both model routes (the rescue path);
- ``Bearer sk-spent-<anything>``: a team key whose team is spent, as 1.110 answers it: 422 budget error
  (``Team=team-x``) on the probe and on chat, 200 and the list on ``/v1/models``;
- any other key: 401 "Invalid proxy server token passed" (``auth_error``), on every route;
- with ``Bearer sk-bench-master``, the admin look-ups: ``/key/info?key=<hash>`` (a team key record for a
  spent key this stub has been sent, a key record without team for the two bench keys, else LiteLLM's 404
  "Key not found in database"), ``/team/info?team_id=team-x`` (the spent team), ``/model/info`` (the
  catalog: even-numbered models free, odd-numbered paid) and the model routes.

What reached it is counted by path, the admin's requests apart from callers', with the times of the admin's
(``time.monotonic()``): ``GET /_stub/stats`` answers them as JSON (``?reset=1`` starts the counts over).

    python bench/stub.py PORT
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import time
from collections import Counter
from urllib.parse import parse_qs

import httptools
import uvloop

HEALTHY = b"Bearer sk-bench-healthy"
BROKE = b"Bearer sk-bench-broke"
MASTER = b"Bearer sk-bench-master"
SPENT = b"Bearer sk-spent-"
MODELS = [f"model-{i:02d}" for i in range(60)]
TEAM = "team-x"
# LiteLLM 1.110's headers on every answer (its security middleware).
_SECURITY = (
    b"vary: Origin\r\nx-frame-options: DENY\r\ncontent-security-policy: frame-ancestors 'none'\r\n"
    b"x-content-type-options: nosniff\r\n"
)
# What LiteLLM 1.110 adds to an inference answer (values from a recorded free-model call).
_LITELLM = b"".join(
    b"%s: %s\r\n" % (name.encode(), value.encode())
    for name, value in (
        ("x-litellm-call-id", "0d59f996-9de2-4a06-b914-be1635eefe28"),
        ("x-litellm-model-id", "b95537279ce0a578c95df43b38a40bc626bc06721745f271d5ff4ca76f575bd7"),
        ("x-litellm-model-name", "openai/fake-model"),
        ("x-litellm-model-api-base", "http://127.0.0.1:44433/v1"),
        ("x-litellm-version", "1.110.2"),
        ("x-litellm-response-cost", "0.0"),
        ("x-litellm-response-cost-original", "0.0"),
        ("x-litellm-response-cost-discount-amount", "0.0"),
        ("x-litellm-response-cost-margin-amount", "0.0"),
        ("x-litellm-response-cost-margin-percent", "0.0"),
        ("x-litellm-response-cost-input", "0.0"),
        ("x-litellm-response-cost-output", "0.0"),
        ("x-litellm-response-cost-tool-usage", "0.0"),
        ("x-litellm-key-spend", "0.0"),
        ("x-litellm-response-duration-ms", "10.736942291259766"),
        ("x-litellm-overhead-duration-ms", "8.5781"),
        ("x-litellm-callback-duration-ms", "0.0"),
        ("llm_provider-server", "BaseHTTP/0.6 Python/3.11.7"),
        ("llm_provider-date", "Sun, 22 Nov 2026 10:00:00 GMT"),
        ("llm_provider-content-type", "application/json"),
        ("x-litellm-model-group", "model-00"),
        ("x-litellm-attempted-retries", "0"),
        ("x-litellm-attempted-fallbacks", "0"),
    )
)
_REASONS = {200: b"OK", 401: b"Unauthorized", 404: b"Not Found", 422: b"Unprocessable Entity"}
_REASONS[429] = b"Too Many Requests"


def _response(status: int, body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 %d %s\r\ndate: Sun, 22 Nov 2026 10:00:00 GMT\r\nserver: uvicorn\r\ncontent-length: %d\r\n"
        b"content-type: application/json\r\n%s%s\r\n"
        % (status, _REASONS[status], len(body), extra, _SECURITY)
    ) + body


def _json(status: int, value: object, extra: bytes = b"") -> bytes:
    return _response(status, json.dumps(value).encode(), extra)


def _budget_error(status: int, team: str, cost: str) -> bytes:
    message = f"Budget has been exceeded! Team={team} Current cost: {cost}, Max budget: 0.01"
    error = {"message": message, "type": "budget_exceeded", "param": None, "code": str(status)}
    return _json(status, {"error": error})


MODELS_ANSWER = _json(
    200,
    {
        "data": [{"id": m, "object": "model", "created": 1677610602, "owned_by": "openai"} for m in MODELS],
        "object": "list",
    },
)
BUDGET_ERROR = _budget_error(429, "bench", "0.02")  # 1.88: on every route, the model list's included
SPENT_ERROR = _budget_error(422, TEAM, "0.02")  # 1.110: on the probe and inference, not on /v1/models
CHAT_ANSWER = _json(
    200,
    {
        "id": "chatcmpl-bench",
        "created": 1795300000,
        "model": "model-00",
        "object": "chat.completion",
        "choices": [
            {
                "finish_reason": "stop",
                "index": 0,
                "message": {"content": "Hello world", "role": "assistant"},
                "provider_specific_fields": {},
            }
        ],
        "usage": {"completion_tokens": 5, "prompt_tokens": 10, "total_tokens": 15},
    },
    _LITELLM,
)


def _key_record(team_id: str | None, spend: float) -> dict[str, object]:
    """A ``/key/info`` ``info`` as 1.110 answers it (its fields that are not null or empty)."""
    return {
        "key_name": "sk-...0000",
        "key_alias": None,
        "spend": spend,
        "max_budget": None,
        "models": [],
        "user_id": None,
        "team_id": team_id,
        "organization_id": None,
        "budget_duration": None,
        "budget_reset_at": None,
        "budget_limits": None,
        "litellm_budget_table": None,
        "blocked": None,
        "key_type": "default",
        "status": "active",
    }


KEY_INFO = _json(200, {"info": _key_record(None, 0.0)})
TEAM_KEY_INFO = _json(200, {"info": _key_record(TEAM, 0.02)})
TEAM_INFO = _json(
    200,
    {
        "team_id": TEAM,
        "team_info": {
            "team_alias": TEAM,
            "team_id": TEAM,
            "organization_id": None,
            "members_with_roles": [{"user_id": "default_user_id", "role": "admin"}],
            "max_budget": 0.01,
            "budget_duration": None,
            "budget_limits": None,
            "models": [],
            "blocked": False,
            "spend": 0.02,
            "budget_reset_at": None,
            "team_member_budget_table": None,
        },
        "keys": [],
        "team_memberships": [],
    },
)
KEY_NOT_FOUND = _json(  # 1.110's info_key_fn for a hash it has no key of
    404,
    {
        "error": {
            "message": "Key not found in database",
            "type": "not_found_error",
            "param": "key",
            "code": "404",
        }
    },
)
MODEL_INFO = _json(
    200,
    {
        "data": [
            {
                "model_name": m,
                "litellm_params": {
                    "model": "openai/x",
                    "input_cost_per_token": 0 if i % 2 == 0 else 0.001,
                    "output_cost_per_token": 0 if i % 2 == 0 else 0.002,
                },
                "model_info": {"id": m},
            }
            for i, m in enumerate(MODELS)
        ]
    },
)
NOT_FOUND = _response(404, b'{"detail":"Not Found"}')
SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ndate: Sun, 22 Nov 2026 10:00:00 GMT\r\nserver: uvicorn\r\n"
    + _LITELLM
    + b"cache-control: no-cache\r\nx-accel-buffering: no\r\n"
    + b"content-type: text/event-stream; charset=utf-8\r\n"
    + _SECURITY
    + b"transfer-encoding: chunked\r\n\r\n"
)
SSE_CHUNKS = [
    b"data: "
    + json.dumps(
        {
            "id": "chatcmpl-bench",
            "created": 1795300000,
            "model": "model-00",
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"content": f"token{i} "}}],
        },
        separators=(",", ":"),
    ).encode()
    + b"\n\n"
    for i in range(49)
] + [b"data: [DONE]\n\n"]
SSE_FRAMES = [b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in SSE_CHUNKS]

MODEL_ROUTES = (b"/v1/models", b"/cursor/v1/models")  # the latter: the budget probe
SPENT_HASHES: set[str] = set()  # the spent keys this stub was sent: LiteLLM knows them
KNOWN_HASHES = {hashlib.sha256(k.removeprefix(b"Bearer ")).hexdigest() for k in (HEALTHY, BROKE)}
COUNTS: Counter[str] = Counter()  # "caller GET /v1/models", "admin GET /key/info", ...
ADMIN_TIMES: list[float] = []  # time.monotonic() of each request with the admin credential


def not_admitted(auth: bytes) -> bytes:
    """LiteLLM 1.110's answer to a credential it does not know (the key shown masked, and its hash)."""
    key = auth.removeprefix(b"Bearer ").decode("latin-1")
    message = (
        f"Authentication Error, Invalid proxy server token passed. Received API Key = sk-...{key[-4:]}, "
        f"Key Hash (Token) ={hashlib.sha256(key.encode()).hexdigest()}. Unable to find token in cache or "
        "`LiteLLM_VerificationTokenTable`"
    )
    return _json(401, {"error": {"message": message, "type": "auth_error", "param": "None", "code": "401"}})


def stats(query: bytes) -> bytes:
    answer = json.dumps({"counts": dict(COUNTS), "admin_times": ADMIN_TIMES}).encode()
    if b"reset=1" in query:
        COUNTS.clear()
        ADMIN_TIMES.clear()
    return _response(200, answer)


class Stub(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.auth = b""
        self.body = b""
        self.transport: asyncio.Transport | None = None
        self.streaming: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_message_begin(self) -> None:
        self.url = self.auth = self.body = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"authorization":
            self.auth = value

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        assert self.transport is not None
        path, _, query = self.url.partition(b"?")
        if path == b"/_stub/stats":
            self.transport.write(stats(query))
            return
        method = self.parser.get_method()
        admin = self.auth == MASTER
        COUNTS[f"{'admin' if admin else 'caller'} {method.decode()} {path.decode('latin-1')}"] += 1
        if admin:
            ADMIN_TIMES.append(time.monotonic())
            self.transport.write(self._admin(path, query))
        elif self.auth in (HEALTHY, BROKE):
            self._bench_key(path)
        elif self.auth.startswith(SPENT):
            SPENT_HASHES.add(hashlib.sha256(self.auth.removeprefix(b"Bearer ")).hexdigest())
            if path == b"/v1/models":
                self.transport.write(MODELS_ANSWER)
            elif path == b"/cursor/v1/models" or path == b"/v1/chat/completions":
                self.transport.write(SPENT_ERROR)
            else:
                self.transport.write(NOT_FOUND)
        else:
            self.transport.write(not_admitted(self.auth))

    def _bench_key(self, path: bytes) -> None:
        assert self.transport is not None
        if path == b"/v1/chat/completions":
            if b'"stream": true' in self.body or b'"stream":true' in self.body:
                self.streaming = asyncio.ensure_future(self._stream(self.transport))
                return
            self.transport.write(CHAT_ANSWER)
        elif path in MODEL_ROUTES:
            self.transport.write(BUDGET_ERROR if self.auth == BROKE else MODELS_ANSWER)
        else:
            self.transport.write(NOT_FOUND)

    @staticmethod
    def _admin(path: bytes, query: bytes) -> bytes:
        params = parse_qs(query.decode("latin-1"))
        if path == b"/key/info":
            key = params.get("key", [""])[0]
            if key in SPENT_HASHES:
                return TEAM_KEY_INFO
            return KEY_INFO if key in KNOWN_HASHES else KEY_NOT_FOUND
        if path == b"/team/info" and params.get("team_id") == [TEAM]:
            return TEAM_INFO
        if path == b"/model/info":
            return MODEL_INFO
        if path in MODEL_ROUTES:
            return MODELS_ANSWER
        return NOT_FOUND

    async def _stream(self, transport: asyncio.Transport) -> None:
        transport.write(SSE_HEAD)
        for frame in SSE_FRAMES:
            transport.write(frame)
            await asyncio.sleep(0)  # one chunk per loop turn, as a model emits them
        transport.write(b"0\r\n\r\n")


async def main(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Stub, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
