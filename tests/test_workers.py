"""``--workers N``: several processes serve one socket under the sidecar's supervisor - metrics that add up
whichever worker answers the scrape, a drain across all of them, a dead worker replaced, nothing left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sidecar.settings import load_settings
from tests.fake_litellm import KEYS, FakeLiteLLM
from tests.test_operations import _env, closed_port, metric


class Workers:
    def __init__(self, proc: subprocess.Popen[bytes], url: str, log: Path, metrics_dir: Path) -> None:
        self.proc, self.url, self.log, self.metrics_dir = proc, url, log, metrics_dir

    def events(self, name: str) -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in self.log.read_text().splitlines() if line.startswith("{")]
        return [line for line in lines if line.get("event") == name]

    def wait_for(self, name: str, count: int) -> list[dict[str, Any]]:
        deadline = time.monotonic() + 20
        while len(found := self.events(name)) < count:
            assert self.proc.poll() is None and time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.05)
        return found


@pytest.fixture
def workers(fake: FakeLiteLLM, tmp_path: Path) -> Iterator[Any]:
    started: list[subprocess.Popen[bytes]] = []

    def start(count: int = 2, drop: tuple[str, ...] = (), **settings: str) -> Workers:
        port = closed_port()
        metrics_dir = tmp_path / "metrics"
        metrics_dir.mkdir()
        env = {**_env(fake, port=str(port), workers=str(count), **settings)}
        for name in drop:
            del env[name]
        env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        log = tmp_path / "sidecar.log"
        with log.open("wb") as stderr:
            proc = subprocess.Popen([sys.executable, "-m", "sidecar"], env=env, stderr=stderr)
        started.append(proc)
        running = Workers(proc, f"http://127.0.0.1:{port}", log, metrics_dir)
        running.wait_for("startup", count)  # every worker is listening
        return running

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_every_worker_starts_and_says_so(workers: Any) -> None:
    running = workers(3)
    (started,) = running.events("workers_started")
    announced = running.events("startup")
    assert sorted(line["pid"] for line in announced) == sorted(started["workers"])
    assert all(line["ready"] for line in announced)


def test_each_worker_serves_and_the_metrics_add_up_whichever_answers_the_scrape(workers: Any) -> None:
    running = workers(2)
    (started,) = running.events("workers_started")
    for paused in started["workers"]:
        os.kill(paused, signal.SIGSTOP)  # only the other one can accept now
        try:
            for _ in range(10):  # a new connection each
                assert httpx.post(running.url + "/echo", content=b"x", timeout=10).status_code == 200
        finally:
            os.kill(paused, signal.SIGCONT)
    # A worker adds its requests to the metrics on its loop's next tick (a tenth of a second): once the
    # scrape says 20, whichever answers it says so.
    deadline = time.monotonic() + 10
    while True:
        text = httpx.get(running.url + "/sidecar/metrics", timeout=10).text
        if metric(text, 'sidecar_requests_total{route="passthrough",status="200"}') == 20:
            break
        assert time.monotonic() < deadline, text
        time.sleep(0.05)
    scrapes = [httpx.get(running.url + "/sidecar/metrics", timeout=10).text for _ in range(6)]
    for text in scrapes:  # 10 served by each worker, whichever answers the scrape
        assert metric(text, 'sidecar_requests_total{route="passthrough",status="200"}') == 20
        assert metric(text, "sidecar_passthrough_seconds_count") == 20


@pytest.mark.parametrize("given_in", ["environment", "file"])
def test_the_admin_key_is_not_in_the_workers_environment(workers: Any, tmp_path: Path, given_in: str) -> None:
    if given_in == "file":
        config = tmp_path / "sidecar.yaml"
        config.write_text(f"admin_key: {KEYS['MASTER']}\n")
        running = workers(2, drop=("SIDECAR_ADMIN_KEY",), config=str(config))
    else:
        running = workers(2)
    (started,) = running.events("workers_started")
    answer = httpx.get(running.url + "/readyz", timeout=5)  # ready: the admin credential was accepted
    assert (answer.status_code, answer.json()) == (200, {"status": "ready"})
    for pid in started["workers"]:
        assert KEYS["MASTER"].encode() not in Path(f"/proc/{pid}/environ").read_bytes()


def test_after_sigterm_new_connections_are_refused_while_streams_finish(workers: Any) -> None:
    running = workers(2, shutdown_timeout="10")
    received: list[bytes] = []
    reader = threading.Thread(
        target=lambda: received.extend(httpx.get(running.url + "/sse?n=15", timeout=10).content.splitlines())
    )
    reader.start()
    time.sleep(0.3)  # the stream is under way (about 3 s)
    running.proc.send_signal(signal.SIGTERM)
    time.sleep(1)
    with pytest.raises(httpx.ConnectError):  # refused at once, not queued for workers that are leaving
        httpx.get(running.url + "/healthz", timeout=5)
    reader.join(timeout=15)
    assert [line for line in received if line][-1] == b"data: [DONE]"  # the stream under way finished
    assert running.proc.wait(timeout=15) == 0


def test_a_killed_supervisor_leaves_no_worker_behind(workers: Any) -> None:
    running = workers(2)
    (started,) = running.events("workers_started")
    running.proc.kill()
    running.proc.wait()
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() and not _zombie(pid) for pid in started["workers"]):
        assert time.monotonic() < deadline, "a worker outlived its supervisor"
        time.sleep(0.05)
    with pytest.raises(httpx.ConnectError):
        httpx.get(running.url + "/healthz", timeout=2)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except OSError:
        return True


def test_workers_without_a_writable_metrics_directory_is_one_line_and_exit_2(fake: FakeLiteLLM) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sidecar", "--workers", "2"],
        env={**_env(fake), "PROMETHEUS_MULTIPROC_DIR": "/nonexistent/metrics"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert done.stderr == (
        "litellm-budget-sidecar: workers need a writable directory for their metrics "
        "(PROMETHEUS_MULTIPROC_DIR): cannot create one in /nonexistent/metrics: No such file or directory\n"
    )


def test_sigterm_drains_every_worker_and_leaves_no_metrics_files(workers: Any) -> None:
    running = workers(2, drain_delay="1")
    assert list(running.metrics_dir.iterdir())  # the workers' files, in a directory of this run
    running.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    for _ in range(4):  # whichever worker answers: draining, not ready
        answer = httpx.get(running.url + "/readyz", timeout=5)
        assert (answer.status_code, answer.json()) == (503, {"status": "draining"})
    assert running.proc.wait(timeout=15) == 0
    assert list(running.metrics_dir.iterdir()) == []
    with pytest.raises(httpx.TransportError):
        httpx.get(running.url + "/healthz", timeout=1)


def test_a_worker_that_dies_is_replaced(workers: Any) -> None:
    running = workers(2)
    (started,) = running.events("workers_started")
    victim = started["workers"][0]
    os.kill(victim, signal.SIGKILL)
    (died,) = running.wait_for("worker_died", 1)
    assert (died["pid"], died["exit_code"]) == (victim, -signal.SIGKILL)
    announced = running.wait_for("startup", 3)  # the replacement is listening
    assert announced[-1]["pid"] not in started["workers"]
    for _ in range(10):
        assert httpx.get(running.url + "/healthz", timeout=5).status_code == 200


def test_auto_is_one_worker_per_cpu_this_process_may_use() -> None:
    settings = load_settings(None, workers="auto", policy="blocked")
    assert settings.workers == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("value", ["0", "-1", "many"])
def test_a_bad_worker_count_is_refused_at_start(fake: FakeLiteLLM, value: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sidecar", "--workers", value],
        env=_env(fake),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("litellm-budget-sidecar: invalid setting 'workers' (SIDECAR_WORKERS): ")
