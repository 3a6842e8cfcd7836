"""Holding callers up to what the machine allows, and past it a clear 503 (``sidecar/proxy/capacity.py``):
the descriptor limit raised at start, a connection bound kept short of it, health always answered, and a
local shortage never reported as LiteLLM being unreachable."""

from __future__ import annotations

import asyncio
import errno
import resource
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from sidecar.metrics import Metrics
from sidecar.proxy.capacity import connection_bound
from sidecar.proxy.upstream import Upstream, UpstreamUnavailable
from tests.conftest import SidecarFactory
from tests.fake_litellm import FakeLiteLLM
from tests.test_operations import _env
from tests.test_startup import run_until_announced

HARD = min(4096, resource.getrlimit(resource.RLIMIT_NOFILE)[1])  # the most a test process may ask for


def _limits(soft: int, hard: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return apply


def started_under(
    fake: FakeLiteLLM, tmp_path: Path, soft: int, hard: int, **settings: str
) -> list[dict[str, Any]]:
    """The log lines of a real sidecar process started under these descriptor limits, once it is up."""
    return run_until_announced(_env(fake, **settings), tmp_path, preexec_fn=_limits(soft, hard))[0]


def _line(lines: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [line for line in lines if line.get("event") == name]


def test_the_soft_limit_is_raised_to_the_hard_one_and_the_start_says_what_it_allows(
    fake: FakeLiteLLM, tmp_path: Path
) -> None:
    lines = started_under(fake, tmp_path, soft=256, hard=HARD)
    (startup,) = _line(lines, "startup")
    assert (startup["open_files"], startup["max_connections"]) == (HARD, connection_bound(HARD))
    assert not [w for w in _line(lines, "setting_warning") if "descriptors" in w["message"]]


def test_max_open_files_caps_the_raise(fake: FakeLiteLLM, tmp_path: Path) -> None:
    (startup,) = _line(started_under(fake, tmp_path, soft=256, hard=HARD, max_open_files="300"), "startup")
    assert (startup["open_files"], startup["max_connections"]) == (300, connection_bound(300))


def test_a_low_hard_limit_is_a_warning_that_says_how_many_streams_fit(
    fake: FakeLiteLLM, tmp_path: Path
) -> None:
    lines = started_under(fake, tmp_path, soft=512, hard=512)
    (startup,) = _line(lines, "startup")
    assert startup["open_files"] == 512 and startup["max_connections"] == connection_bound(512) < 512 // 2
    (warning,) = [w for w in _line(lines, "setting_warning") if "descriptors" in w["message"]]
    assert f"at most {connection_bound(512)} caller connections" in warning["message"]


def test_past_the_bound_new_callers_get_503_while_open_streams_flow_and_health_answers(
    fake: FakeLiteLLM, sidecar: SidecarFactory
) -> None:
    url = sidecar(policy="blocked", admin_key=None, max_connections=2)
    with (
        httpx.Client(timeout=10) as first,
        httpx.Client(timeout=10) as second,
        first.stream("GET", url + "/sse?n=8") as a,
        second.stream("GET", url + "/sse?n=8") as b,
    ):
        assert (a.status_code, b.status_code) == (200, 200)
        with httpx.Client(timeout=5) as third:
            refused = third.post(url + "/v1/chat/completions", json={"model": "free-model"})
            for path in ("/healthz", "/readyz", "/sidecar/metrics"):
                assert third.get(url + path).status_code == 200, path
        events_a = [line for line in a.iter_lines() if line]
        events_b = [line for line in b.iter_lines() if line]
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1" and refused.headers["connection"] == "close"
    assert refused.json()["error"]["code"] == "503"
    assert events_a == events_b == [*(f"data: {i}" for i in range(8)), "data: [DONE]"]  # whole
    with httpx.Client(timeout=5) as client:  # the streams are over: room again
        assert client.post(url + "/echo", content=b"{}").status_code == 200
        text = client.get(url + "/sidecar/metrics").text
    assert "sidecar_at_capacity_total 1.0" in text
    assert 'sidecar_upstream_errors_total{kind="unreachable"}' not in text
    assert [s.target for s in fake.seen].count("/v1/chat/completions") == 0  # never went upstream


def test_a_connect_that_fails_for_want_of_descriptors_is_local_not_litellm() -> None:
    async def main() -> UpstreamUnavailable:
        loop = asyncio.get_running_loop()

        async def out_of_descriptors(*args: Any, **kwargs: Any) -> Any:
            raise OSError(errno.EMFILE, "Too many open files")

        loop.create_connection = out_of_descriptors  # type: ignore[method-assign]
        metrics = Metrics()
        upstream = Upstream(
            "http://127.0.0.1:9", host="litellm", connect_timeout=1.0, read_timeout=1.0, metrics=metrics
        )
        scope: dict[str, Any] = {"type": "http", "headers": [], "client": None, "scheme": "http"}
        try:
            await upstream.fetch(scope, b"/v1/models", b"")
        except UpstreamUnavailable as exc:
            text = metrics.render().decode()
            assert 'sidecar_upstream_errors_total{kind="local_exhausted"} 1.0' in text
            assert 'kind="unreachable"' not in text
            return exc
        raise AssertionError("no error")

    error = asyncio.run(main())
    assert (error.status, error.kind) == (503, "local_exhausted")
    assert "EMFILE" in error.detail and "LiteLLM" not in error.detail
