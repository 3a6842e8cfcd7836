"""``deploy/nginx/``: nginx sends model discovery to the sidecar and everything else straight to LiteLLM.
Checked with Debian's real nginx: its configuration test, its routes against the sidecar's own, and real
requests through it to two stand-in upstreams (the integration suite repeats this with real LiteLLM)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from websockets.sync.client import connect

from sidecar.proxy.routes import DISCOVERY_PATHS, MODEL_PREFIXES, match_discovery
from tests.servers import ServerThread, plain_config
from tests.test_operations import closed_port

CONF = Path(__file__).resolve().parents[1] / "deploy" / "nginx" / "litellm-budget-sidecar.conf"
SIDECAR_OWN = {"/sidecar/v1/budget"}
INFERENCE = [
    "/v1/chat/completions",
    "/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/messages",
    "/v1/responses",
    "/v1/audio/transcriptions",
    "/v1/files",
    "/health/liveliness",
    "/key/info",
    "/v1/modelsx",
    "/modelsfoo/bar",
    "/models/gemini-2.5-pro:generateContent",  # LiteLLM's Google-style inference, under /models/
    "/v1beta/models/gemini-2.5-pro:streamGenerateContent",
]


def nginx() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("nginx must run in CI (apt-get install nginx-light)", pytrace=False)
        pytest.skip("nginx is missing here (apt-get install nginx-light)")
    return found


def configured(directory: Path, listen: int, litellm: str, sidecar: str) -> Path:
    """The shipped file with its three addresses replaced, inside a minimal nginx.conf of this test."""
    text = CONF.read_text()
    text = text.replace("server 127.0.0.1:4000;", f"server {litellm};", 1)
    text = text.replace("server 127.0.0.1:4001;", f"server {sidecar};", 1)
    text = text.replace("listen 8080;", f"listen 127.0.0.1:{listen};", 1)
    (directory / "split.conf").write_text(text)
    main = directory / "nginx.conf"
    main.write_text(
        f"worker_processes 1;\npid {directory}/nginx.pid;\nerror_log {directory}/error.log;\n"
        "events {}\n"
        f"http {{\n access_log off;\n client_body_temp_path {directory}/body;\n"
        f" proxy_temp_path {directory}/proxy;\n include {directory}/split.conf;\n}}\n"
    )
    return main


def test_the_shipped_configuration_passes_nginx_t(tmp_path: Path) -> None:
    main = configured(tmp_path, closed_port(), "127.0.0.1:4000", "127.0.0.1:4001")
    done = subprocess.run(
        [nginx(), "-t", "-c", str(main), "-p", str(tmp_path)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "syntax is ok" in done.stderr


def test_it_sends_the_sidecar_exactly_its_routes_for_get_and_head() -> None:
    text = CONF.read_text()
    rules = re.findall(r'"~\^\(GET\|HEAD\):(\S+?)(\$|\.)" litellm_budget_sidecar;', text)
    exact = {path for path, end in rules if end == "$"}
    prefixes = {path for path, end in rules if end == "."}
    assert exact == {path.decode() for path in DISCOVERY_PATHS} | SIDECAR_OWN
    assert prefixes == {prefix.decode() for prefix in MODEL_PREFIXES}
    assert text.count("litellm_budget_sidecar;") == len(rules)  # no other rule reaches the sidecar
    assert re.search(r"default litellm;", text)


# The client has read the first chunk of a stream (set by the test, awaited by the stand-in upstream).
FIRST_CHUNK_READ = threading.Event()
STREAM_HELD_BACK: list[bool] = []


def named(name: bytes) -> Any:
    """A stand-in upstream that answers every request with its name, the path it got and any body; on
    ``/sse`` it sends one chunk and waits (at most 5 s) until the client has read it before it ends."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":  # says who it is and what it was asked, then echoes
            await receive()
            await send({"type": "websocket.accept"})
            target = scope["raw_path"] + b"?" + scope["query_string"]
            await send({"type": "websocket.send", "text": f"{name.decode()} {target.decode()}"})
            while (message := await receive())["type"] == "websocket.receive":
                await send({"type": "websocket.send", **{k: v for k, v in message.items() if k != "type"}})
            return
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        target = scope["raw_path"] + (b"?" + scope["query_string"] if scope["query_string"] else b"")
        headers = [(b"content-type", b"text/plain"), (b"x-upstream", name)]
        asked = dict(scope["headers"])
        headers.append(
            (b"x-seen-upgrade", asked.get(b"upgrade", b"-") + b"; " + asked.get(b"connection", b"-"))
        )
        if target.startswith(b"/sse"):
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"data: 0\n\n", "more_body": True})
            read = await asyncio.get_running_loop().run_in_executor(None, FIRST_CHUNK_READ.wait, 5)
            STREAM_HELD_BACK.append(not read)
            await send({"type": "http.response.body", "body": b"data: 1\n\n"})
            return
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": target + b" " + str(len(body)).encode()})

    return app


def stand_in(name: bytes) -> uvicorn.Config:
    config = plain_config(named(name))
    config.ws = "websockets-sansio"
    return config


@pytest.fixture
def split(tmp_path: Path) -> Iterator[str]:
    with ServerThread(stand_in(b"litellm")) as litellm, ServerThread(stand_in(b"sidecar")) as sidecar:
        port = closed_port()
        main = configured(tmp_path, port, f"127.0.0.1:{litellm.port}", f"127.0.0.1:{sidecar.port}")
        process = subprocess.Popen([nginx(), "-c", str(main), "-p", str(tmp_path), "-g", "daemon off;"])
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    httpx.get(f"http://127.0.0.1:{port}/health/liveliness", timeout=1)
                    break
                except httpx.TransportError:
                    assert process.poll() is None and time.monotonic() < deadline
                    time.sleep(0.05)
            yield f"http://127.0.0.1:{port}"
        finally:
            process.send_signal(signal.SIGQUIT)
            process.wait(timeout=10)


def test_discovery_reaches_the_sidecar_and_inference_reaches_litellm_directly(split: str) -> None:
    discovery = [path.decode() for path in DISCOVERY_PATHS] + ["/v1/models/openai/gpt-4o", "/models/m-1"]
    for path in discovery + sorted(SIDECAR_OWN):
        answer = httpx.get(split + path + "?page=2", timeout=5)
        assert answer.headers["x-upstream"] == "sidecar", path
        assert answer.text == f"{path}?page=2 0"  # the path and query as the client sent them
        assert path in SIDECAR_OWN or match_discovery("GET", path.encode()) is not None
    for path in INFERENCE:
        answer = httpx.post(split + path, content=b"x" * 70_000, timeout=5)
        assert (answer.headers["x-upstream"], answer.text) == ("litellm", f"{path} 70000"), path
        assert match_discovery("POST", path.encode()) is None
    for path in discovery:  # any other method of a discovery path: LiteLLM, which answers it
        answer = httpx.post(split + path, content=b"{}", timeout=5)
        assert answer.headers["x-upstream"] == "litellm", path


def test_a_stream_from_litellm_reaches_the_client_while_it_is_still_open(split: str) -> None:
    FIRST_CHUNK_READ.clear()
    STREAM_HELD_BACK.clear()
    with httpx.stream("POST", split + "/sse", timeout=10) as answer:
        assert answer.headers["x-upstream"] == "litellm"
        chunks = answer.iter_raw()
        assert next(chunks) == b"data: 0\n\n"  # LiteLLM waits for this before it sends the rest
        FIRST_CHUNK_READ.set()
        assert b"".join(chunks) == b"data: 1\n\n"
    assert STREAM_HELD_BACK == [False]


def test_a_raw_path_reaches_the_sidecar_as_sent(split: str) -> None:
    # nginx routes on the normalised path but forwards the raw one: the sidecar's exact rules then decide.
    answer = httpx.get(split + "/v1//models", timeout=5)
    assert (answer.headers["x-upstream"], answer.text) == ("sidecar", "/v1//models 0")


def test_a_websocket_passes_through_to_litellm(split: str) -> None:
    with connect(split.replace("http://", "ws://") + "/v1/realtime?model=realtime-model") as socket:
        assert socket.recv(timeout=5) == "litellm /v1/realtime?model=realtime-model"
        socket.send("hello")
        assert socket.recv(timeout=5) == "hello"
        socket.send(b"\x00\x01")
        assert socket.recv(timeout=5) == b"\x00\x01"
    answer = httpx.post(split + "/v1/chat/completions", content=b"{}", timeout=5)  # other requests as before
    assert answer.headers["x-upstream"] == "litellm"


def test_only_a_websocket_upgrade_is_passed_on(split: str) -> None:
    """Any other Upgrade (h2c: the classic request-smuggling path past a proxy) reaches no upstream."""
    smuggle = {
        "Upgrade": "h2c",
        "Connection": "Upgrade, HTTP2-Settings",
        "HTTP2-Settings": "AAMAAABkAAQAAP__",
    }
    answer = httpx.post(split + "/v1/chat/completions", content=b"{}", headers=smuggle, timeout=5)
    assert (answer.headers["x-upstream"], answer.headers["x-seen-upgrade"]) == ("litellm", "-; -")
