"""The zero-overhead shape (``deploy/nginx/``) for real: Debian's nginx in front of real LiteLLM and the
sidecar. Discovery is rescued by the sidecar; inference goes to LiteLLM directly and never reaches it."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.integration.conftest import LiteLLM
from tests.seeded import BEYOND_CHAT as MODELS
from tests.test_nginx import configured, nginx
from tests.test_operations import closed_port

pytestmark = pytest.mark.integration

PAID = {"model": "paid-model", "messages": [{"role": "user", "content": "hi"}]}
FREE = {"model": "free-model", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def split(litellm: LiteLLM, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """nginx with the shipped configuration in front of this LiteLLM and a sidecar; (nginx, sidecar)."""
    sidecar = litellm.sidecar("free_only")
    port = closed_port()
    main = configured(tmp_path, port, urlsplit(litellm.url).netloc, urlsplit(sidecar).netloc)
    process = subprocess.Popen([nginx(), "-c", str(main), "-p", str(tmp_path), "-g", "daemon off;"])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                httpx.get(url + "/health/liveliness", timeout=2)
                break
            except httpx.TransportError:
                assert process.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
        yield url, sidecar
    finally:
        process.send_signal(signal.SIGQUIT)
        process.wait(timeout=10)


def passed_through(sidecar: str) -> float:
    text = httpx.get(sidecar + "/sidecar/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith('sidecar_requests_total{route="passthrough"')
    )


def bearer(litellm: LiteLLM, principal: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {litellm.keys[principal]}"}


def test_discovery_through_nginx_is_rescued_by_the_sidecar(litellm: LiteLLM, split: tuple[str, str]) -> None:
    url, _ = split
    answer = httpx.get(url + "/v1/models", headers=bearer(litellm, "KEY_TEAM_BROKE"), timeout=30)
    assert answer.status_code == 200, answer.text
    assert [m["id"] for m in answer.json()["data"]] == MODELS.free
    assert answer.headers["x-sidecar-budget-exceeded"] == "true"
    assert answer.headers["x-sidecar-budget-scope"] == "team"


def test_inference_through_nginx_is_litellms_own_answer_and_never_reaches_the_sidecar(
    litellm: LiteLLM, split: tuple[str, str]
) -> None:
    url, sidecar = split
    before = passed_through(sidecar)
    spent = bearer(litellm, "KEY_TEAM_BROKE")
    direct = httpx.post(litellm.url + "/v1/chat/completions", json=PAID, headers=spent, timeout=30)
    via = httpx.post(url + "/v1/chat/completions", json=PAID, headers=spent, timeout=30)
    assert (via.status_code, via.content) == (direct.status_code, direct.content)  # LiteLLM's refusal
    assert not [name for name in via.headers if name.startswith("x-sidecar-")]
    healthy = bearer(litellm, "KEY_HEALTHY")
    chat = httpx.post(url + "/v1/chat/completions", json=FREE, headers=healthy, timeout=30)
    assert chat.status_code == 200 and chat.json()["choices"][0]["message"]["content"]
    with httpx.stream(
        "POST", url + "/v1/chat/completions", json={**FREE, "stream": True}, headers=healthy, timeout=30
    ) as stream:
        assert stream.status_code == 200
        events = [line for line in stream.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]" and len(events) > 1
    assert passed_through(sidecar) == before  # the sidecar saw none of it
