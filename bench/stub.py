"""A fast stand-in for LiteLLM for the benchmark: pre-built answers, keep-alive, uvloop + httptools.

- ``GET /v1/models`` and ``/cursor/v1/models`` (the sidecar's budget probe, as LiteLLM 1.106+ answers it):
  60 models (about 6 KB), or LiteLLM's 429 budget error for ``Bearer sk-bench-broke``;
- ``POST /v1/chat/completions``: a small chat JSON, or, with ``"stream": true``, an SSE stream of 50 chunks,
  each written on its own (chunked transfer encoding);
- the admin look-ups a rescue makes (``/key/info``, ``/model/info``) for ``Bearer sk-bench-master``.

    python bench/stub.py PORT
"""

from __future__ import annotations

import asyncio
import json
import sys

import httptools
import uvloop

BROKE = b"Bearer sk-bench-broke"
MASTER = b"Bearer sk-bench-master"
MODELS = [f"model-{i:02d}" for i in range(60)]


def _response(status: int, body: bytes, content_type: bytes = b"application/json") -> bytes:
    reason = {200: b"OK", 404: b"Not Found", 429: b"Too Many Requests"}[status]
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\ndate: Sun, 22 Nov 2026 10:00:00 GMT\r\n"
        b"server: uvicorn\r\n\r\n" % (status, reason, content_type, len(body))
    ) + body


MODELS_ANSWER = _response(
    200,
    json.dumps(
        {
            "data": [
                {"id": m, "object": "model", "created": 1677610602, "owned_by": "openai"} for m in MODELS
            ],
            "object": "list",
        }
    ).encode(),
)
BUDGET_ERROR = _response(
    429,
    json.dumps(
        {
            "error": {
                "message": "Budget has been exceeded! Team=bench Current cost: 0.02, Max budget: 0.01",
                "type": "budget_exceeded",
                "param": None,
                "code": "429",
            }
        }
    ).encode(),
)
CHAT_ANSWER = _response(
    200,
    json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1795300000,
            "model": "model-00",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello world"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        }
    ).encode(),
)
KEY_INFO = _response(200, json.dumps({"info": {"models": [], "team_id": None, "user_id": None}}).encode())
MODEL_INFO = _response(
    200,
    json.dumps(
        {
            "data": [
                {
                    "model_name": m,
                    "litellm_params": {
                        "model": "openai/x",
                        "input_cost_per_token": 0,
                        "output_cost_per_token": 0,
                    },
                    "model_info": {"id": m},
                }
                for m in MODELS
            ]
        }
    ).encode(),
)
NOT_FOUND = _response(404, b'{"detail":"Not Found"}')
SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
SSE_CHUNKS = [
    b"data: "
    + json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "model": "model-00",
            "choices": [{"index": 0, "delta": {"content": f"token{i} "}}],
        }
    ).encode()
    + b"\n\n"
    for i in range(49)
] + [b"data: [DONE]\n\n"]
SSE_FRAMES = [b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in SSE_CHUNKS]


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
        path = self.url.split(b"?", 1)[0]
        if path == b"/v1/chat/completions":
            if b'"stream": true' in self.body or b'"stream":true' in self.body:
                self.streaming = asyncio.ensure_future(self._stream(self.transport))
                return
            self.transport.write(CHAT_ANSWER)
        elif path == b"/v1/models" or path == b"/cursor/v1/models":  # the latter: the budget probe
            self.transport.write(BUDGET_ERROR if self.auth == BROKE else MODELS_ANSWER)
        elif path == b"/key/info" and self.auth == MASTER:
            self.transport.write(KEY_INFO)
        elif path == b"/model/info" and self.auth == MASTER:
            self.transport.write(MODEL_INFO)
        else:
            self.transport.write(NOT_FOUND)

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
