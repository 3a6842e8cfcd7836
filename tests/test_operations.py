"""Operating the sidecar: health and readiness, Prometheus metrics, JSON logs, --check, graceful shutdown."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sidecar.litellm.credentials import key_hash
from tests.conftest import SidecarFactory, bearer
from tests.fake_litellm import KEYS, FakeLiteLLM
from tests.scripted import Handler, ScriptedUpstream, read_request


def closed_port() -> int:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port: int = free.getsockname()[1]
        return port


def readiness_logged(caplog: pytest.LogCaptureFixture) -> dict[str, object]:
    """The last ``readiness`` log line: where /readyz's reasons go."""
    lines = [f for r in caplog.records if (f := getattr(r, "fields", {})).get("event") == "readiness"]
    assert lines, "no readiness line was logged"
    return lines[-1]


@pytest.fixture
def info_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.INFO):
        yield caplog


class TestReadiness:
    def test_ready_when_litellm_answers_and_the_admin_key_is_accepted(
        self,
        fake: FakeLiteLLM,
        sidecar: SidecarFactory,
        client: httpx.Client,
        info_logs: pytest.LogCaptureFixture,
    ) -> None:
        answer = client.get(sidecar() + "/readyz")
        assert answer.status_code == 200
        assert answer.json() == {"status": "ready"}
        assert readiness_logged(info_logs)["admin_credential"] == "ok (4 models)"

    def test_not_ready_when_litellm_is_unreachable(
        self, sidecar: SidecarFactory, client: httpx.Client, info_logs: pytest.LogCaptureFixture
    ) -> None:
        answer = client.get(sidecar(upstream_url=f"http://127.0.0.1:{closed_port()}") + "/readyz")
        assert (answer.status_code, answer.json()) == (503, {"status": "not ready"})
        logged = readiness_logged(info_logs)
        assert str(logged["upstream"]).startswith("unreachable")
        # not "ok (4 models)" from a cache, nor a refusal: the admin credential cannot be told apart
        assert logged["admin_credential"] == "unknown (LiteLLM is unreachable)"

    def test_not_ready_when_the_admin_key_is_refused_and_strangers_are_not_told_why(
        self,
        fake: FakeLiteLLM,
        sidecar: SidecarFactory,
        client: httpx.Client,
        info_logs: pytest.LogCaptureFixture,
    ) -> None:
        fake.answer("GET", "/model/info", 401, {"error": {"message": "Invalid proxy server token passed."}})
        answer = client.get(sidecar() + "/readyz")
        assert (answer.status_code, answer.json()) == (503, {"status": "not ready"})
        assert "admin" not in answer.text and KEYS["MASTER"] not in answer.text
        assert (
            readiness_logged(info_logs)["admin_credential"] == "refused or failed: /model/info answered 401"
        )
        assert KEYS["MASTER"] not in info_logs.text

    def test_blocked_policy_needs_no_admin_key(
        self, fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client
    ) -> None:
        answer = client.get(sidecar(policy="blocked", admin_key=None) + "/readyz")
        assert answer.json() == {"status": "ready"}

    def test_a_flood_of_readiness_probes_costs_litellm_one_check_a_second(
        self, fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client
    ) -> None:
        url = sidecar()
        started = time.monotonic()
        answers = [client.get(url + "/readyz").status_code for _ in range(50)]
        elapsed = time.monotonic() - started
        assert answers == [200] * 50
        asked = [s.target for s in fake.seen if s.target in ("/health/liveliness", "/model/info")]
        # one liveliness check per started second (and the catalog, cached for catalog_ttl)
        assert asked.count("/health/liveliness") <= int(elapsed) + 1 < 50
        assert asked.count("/model/info") == 1

    def test_liveness_readiness_and_metrics_are_never_passed_through(
        self, fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client
    ) -> None:
        url = sidecar(policy="blocked", admin_key=None)
        for path in ("/healthz", "/sidecar/metrics"):
            assert client.get(url + path).status_code == 200
        client.get(url + "/readyz")
        assert [s.target for s in fake.seen] == ["/health/liveliness"]  # readiness's own probe, bare
        assert fake.seen[0].header("authorization") is None


def metric(text: str, sample: str) -> float:
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{sample} not in metrics:\n{text}")


def test_litellms_own_metrics_route_passes_through(
    fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client
) -> None:
    assert client.get(sidecar() + "/metrics").text == "litellm_requests_metric_total 7.0\n"


def test_metrics_count_what_happened(
    fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client
) -> None:
    url = sidecar()
    client.get(url + "/v1/models", headers=bearer("KEY_TEAM_BROKE"))  # rescue: cold caches
    client.get(url + "/v1/models", headers=bearer("KEY_TEAM_BROKE"))  # rescue: warm caches
    client.post(url + "/echo", content=b"{}")
    fake.answer("GET", f"/key/info?key={key_hash(KEYS['KEY_KEY_BROKE'])}", 500, {})
    client.get(url + "/v1/models", headers=bearer("KEY_KEY_BROKE"))  # fail closed
    text = client.get(url + "/sidecar/metrics").text
    assert metric(text, 'sidecar_rescues_total{policy="all",scope="team"}') == 2
    assert metric(text, 'sidecar_fail_closed_total{reason="lookup_failed"}') == 1
    assert metric(text, 'sidecar_requests_total{route="discovery",status="200"}') == 2
    assert metric(text, 'sidecar_requests_total{route="discovery",status="429"}') == 1
    assert metric(text, 'sidecar_requests_total{route="passthrough",status="200"}') == 1
    assert metric(text, "sidecar_passthrough_seconds_count") == 1
    # KEY_TEAM_BROKE's budget chain, verdict and scope share one; KEY_KEY_BROKE's fails twice (the
    # refusal's verdict, scope: a failure is not cached). A caller the sidecar has not seen admitted is not
    # probed alongside its first request: LiteLLM's refusal of it names its level, so no probe at all.
    assert metric(text, 'sidecar_admin_lookup_seconds_count{path="/key/info"}') == 3
    assert metric(text, 'sidecar_budget_source_failures_total{source="recorded"}') == 1
    assert metric(text, "sidecar_admin_lookups_shed_total") == 0
    assert metric(text, 'sidecar_cache_misses_total{cache="scopes"}') == 2  # one look-up per key
    assert metric(text, 'sidecar_cache_hits_total{cache="rendered"}') == 1  # the repeated rescue's bytes
    assert metric(text, 'sidecar_cache_misses_total{cache="rendered"}') == 2


def test_upstream_errors_are_counted(sidecar: SidecarFactory, client: httpx.Client) -> None:
    url = sidecar(upstream_url=f"http://127.0.0.1:{closed_port()}")
    client.post(url + "/v1/chat/completions", json={})
    text = client.get(url + "/sidecar/metrics").text
    assert metric(text, 'sidecar_upstream_errors_total{kind="unreachable"}') == 1
    assert metric(text, 'sidecar_requests_total{route="passthrough",status="502"}') == 1


# --- the real process -------------------------------------------------------------------------------------


def _env(fake: FakeLiteLLM, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    env.update(SIDECAR_UPSTREAM_URL=fake.url, SIDECAR_ADMIN_KEY=KEYS["MASTER"])
    env.update({f"SIDECAR_{k.upper()}": v for k, v in settings.items()})
    return env


StartSidecar = Callable[..., tuple[subprocess.Popen[bytes], str, Path]]


@pytest.fixture
def process(fake: FakeLiteLLM, tmp_path: Path) -> Iterator[StartSidecar]:
    started: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(**settings: str) -> tuple[subprocess.Popen[bytes], str, Path]:
        port = closed_port()
        log = tmp_path / f"sidecar-{len(started)}.log"
        with log.open("wb") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "sidecar"], env=_env(fake, port=str(port), **settings), stderr=stderr
            )
        started.append((proc, log))
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while True:
            try:
                httpx.get(url + "/healthz", timeout=1)
                return proc, url, log
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)

    yield start
    for proc, _ in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_served_process_runs_its_full_collections_from_its_tick_and_counts_every_pause(
    process: StartSidecar,
) -> None:
    """``proxy/collector.py`` end to end: callers holding connections open make the heap grow (young
    collections; CPython's own rule would add full ones); the process's tick runs the full collection, and
    ``/sidecar/metrics`` shows both kinds of pause."""
    _, url, _ = process(gc_interval="0.3", log_level="warning")
    port = int(url.rsplit(":", 1)[1])
    held: list[socket.socket] = []
    try:
        for _ in range(600):  # each kept-alive caller: a protocol, its transport, parser, timer, ...
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            held.append(sock)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        for sock in held:
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        deadline = time.monotonic() + 10
        while True:
            text = httpx.get(url + "/sidecar/metrics", timeout=5).text
            counts = {
                generation: metric(text, f'sidecar_gc_pause_seconds_count{{generation="{generation}"}}')
                for generation in "02"
                if f'sidecar_gc_pause_seconds_count{{generation="{generation}"}}' in text
            }
            if len(counts) == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert counts.get("0", 0) >= 1 and counts.get("2", 0) >= 1, text
    finally:
        for sock in held:
            sock.close()


def test_ctrl_c_drains_and_ends_by_the_signal_without_a_traceback(
    process: StartSidecar, fake: FakeLiteLLM
) -> None:
    """Issue 28: Ctrl-C on a foreground sidecar shut down cleanly, then printed a KeyboardInterrupt
    traceback. It ends by SIGINT, as an interrupted program should (130 in a shell), quietly."""
    proc, url, log = process()
    assert httpx.get(url + "/healthz", timeout=5).status_code == 200
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=15) == -signal.SIGINT
    text = log.read_text()
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    assert "Application shutdown complete" in text  # after the drain


def test_logs_are_json_lines_one_per_rescue_with_no_access_log_and_no_secrets(
    process: StartSidecar, fake: FakeLiteLLM
) -> None:
    proc, url, log = process()
    httpx.get(url + "/v1/models", headers=bearer("KEY_TEAM_BROKE"))
    httpx.post(url + "/echo", content=b"x", headers=bearer("KEY_HEALTHY"))
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=10)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    rescues = [line for line in lines if line.get("event") == "rescue"]
    assert len(rescues) == 1
    assert rescues[0]["scope"] == "team" and rescues[0]["policy"] == "all" and len(rescues[0]["key"]) == 12
    text = log.read_text()
    assert "/echo" not in text and "GET /v1/models" not in text  # no access log
    assert not any(key in text for key in KEYS.values())
    assert key_hash(KEYS["KEY_TEAM_BROKE"]) not in text


def test_sigterm_lets_streams_finish_and_readiness_goes_false_first(
    process: StartSidecar, fake: FakeLiteLLM
) -> None:
    proc, url, _ = process(drain_delay="0.6", shutdown_timeout="10")
    received: list[bytes] = []

    def stream() -> None:
        with httpx.stream("GET", url + "/sse", timeout=10) as response:
            received.extend(response.iter_raw())

    reader = threading.Thread(target=stream)
    reader.start()
    time.sleep(0.3)  # the stream is under way (it lasts about 1 s)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.1)
    during_drain = httpx.get(url + "/readyz", timeout=5)
    assert during_drain.status_code == 503 and during_drain.json() == {"status": "draining"}
    reader.join(timeout=10)
    assert b"".join(received).endswith(b"data: [DONE]\n\n")  # finished, not cut
    assert proc.wait(timeout=10) == 0
    with pytest.raises(httpx.TransportError):
        httpx.get(url + "/healthz", timeout=1)


def test_streams_longer_than_the_shutdown_timeout_are_cut(process: StartSidecar, fake: FakeLiteLLM) -> None:
    proc, url, _ = process(shutdown_timeout="1")
    received: list[bytes] = []

    def stream() -> None:
        try:
            with httpx.stream("GET", url + "/sse?n=25", timeout=10) as response:  # about 5 s
                received.extend(response.iter_raw())
        except httpx.TransportError:
            received.append(b"<cut>")

    reader = threading.Thread(target=stream)
    reader.start()
    time.sleep(0.2)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=10)
    reader.join(timeout=10)
    assert time.monotonic() - started < 3.5
    assert received and not b"".join(received).endswith(b"data: [DONE]\n\n")


def _check(fake: FakeLiteLLM, *flags: str, **settings: str) -> subprocess.CompletedProcess[str]:
    settings.setdefault("port", str(closed_port()))
    return subprocess.run(
        [sys.executable, "-m", "sidecar", "--check", *flags],
        env=_env(fake, **settings),
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_check_flag_reports_ready(fake: FakeLiteLLM) -> None:
    port = closed_port()
    result = _check(fake, port=str(port))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"settings: ok (upstream {fake.url}, policy all)",
        "upstream: ok",
        "admin_credential: ok (4 models)",
        f"listen: ok (127.0.0.1:{port})",
        "ready",
    ]


def test_check_binds_the_port_as_the_start_would(fake: FakeLiteLLM) -> None:
    """Issue 28: --check said ready while the port was taken; the real start then exited 2."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _check(fake, port=str(port))
    assert result.returncode == 1
    assert f"listen: cannot listen on 127.0.0.1:{port}: Address already in use" in result.stdout.splitlines()
    assert result.stdout.splitlines()[-1] == "NOT ready"


def test_check_reports_every_warning_the_start_would_and_says_so_in_its_exit_status(
    fake: FakeLiteLLM,
) -> None:
    """A misspelt variable and a fallback target that is not free: the real start logs both as
    setting_warning; --check prints both and exits 3 (ready, with warnings), not 0."""
    env_extra = {"SIDECAR_POLCY": "free_only"}
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "--check", "--fallback", '{"*": "paid-model"}'],
        env={**_env(fake, port=str(closed_port())), **env_extra},
        capture_output=True,
        text=True,
        timeout=30,
    )
    lines = result.stdout.splitlines()
    assert result.returncode == 3, result.stdout + result.stderr
    assert lines[:2] == [
        "warning: unknown environment variable SIDECAR_POLCY is ignored; did you mean SIDECAR_POLICY?",
        "warning: fallback target paid-model is not free in LiteLLM's catalog (or there is no admin key): "
        "no request will fall back to it",
    ]
    assert lines[-1] == "ready, with 2 warnings above"


def test_version_flag(fake: FakeLiteLLM) -> None:
    done = subprocess.run([sys.executable, "-m", "sidecar", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("litellm-budget-sidecar ")
    assert done.stdout.split()[1][0].isdigit()


def test_check_flag_fails_on_an_unreachable_upstream_or_refused_key(fake: FakeLiteLLM) -> None:
    unreachable = _check(fake, upstream_url=f"http://127.0.0.1:{closed_port()}")
    assert unreachable.returncode == 1 and "upstream: unreachable" in unreachable.stdout
    refused = _check(fake, admin_key="sk-wrong-admin-key")
    assert refused.returncode == 1 and "admin_credential: refused or failed" in refused.stdout
    assert "sk-wrong-admin-key" not in refused.stdout + refused.stderr


def test_check_flag_reports_bad_settings_like_start_up(fake: FakeLiteLLM) -> None:
    result = _check(fake, policy="sometimes")
    assert result.returncode == 2 and "policy" in result.stderr and "Traceback" not in result.stderr


def _log_of_a_cut_stream(
    process: Callable[..., tuple[subprocess.Popen[bytes], str, Path]], handler: Handler, **settings: str
) -> list[dict[str, Any]]:
    """A streamed chat through a sidecar process in front of ``handler``, which cuts the stream after its
    head: the caller sees the 200 and then a broken body; the sidecar's log lines once it has stopped."""
    with ScriptedUpstream(handler) as upstream:
        proc, url, log = process(upstream_url=upstream.url, policy="blocked", admin_key="", **settings)
        with (
            httpx.Client(timeout=5) as client,
            pytest.raises(httpx.RemoteProtocolError),
            client.stream("POST", url + "/v1/chat/completions", content=b"{}") as answer,
        ):
            assert answer.status_code == 200
            answer.read()
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_a_stream_litellm_breaks_off_is_one_warning_not_an_error_and_a_traceback(
    process: StartSidecar,
) -> None:
    """Found by the soak: every stream the upstream broke off also gave uvicorn's "Exception in ASGI
    application" at error level, with a traceback - an error line per upstream event."""

    async def breaks_off(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
            b"9\r\ndata: 1\n\n\r\n"
        )
        await writer.drain()
        writer.close()  # in the middle of the answer

    lines = _log_of_a_cut_stream(process, breaks_off)
    assert [line["kind"] for line in lines if line.get("event") == "upstream_error"] == ["stream_broken"]
    assert not [line for line in lines if line["level"] == "error"], lines


def test_a_stream_that_stalls_before_its_first_chunk_is_one_warning_not_an_error(process) -> None:  # type: ignore[no-untyped-def]
    """Found by the soak (LiteLLM paused after sending a stream's head): the wait for the first chunk
    timed out outside the stream's error handling, and uvicorn logged "Exception in ASGI application"."""

    async def stalls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        await writer.drain()
        await reader.read()  # then nothing, until the sidecar gives up

    lines = _log_of_a_cut_stream(process, stalls, read_timeout="0.5")
    assert [line["kind"] for line in lines if line.get("event") == "upstream_error"] == ["stream_broken"]
    assert not [line for line in lines if line["level"] == "error"], lines
