"""``--workers N``: several processes serve one socket under the sidecar's supervisor - metrics that add up
whichever worker answers the scrape, a drain across all of them, a dead worker replaced, nothing left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sidecar.settings import load_settings
from tests.fake_litellm import FakeLiteLLM
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

    def start(count: int = 2, **settings: str) -> Workers:
        port = closed_port()
        metrics_dir = tmp_path / "metrics"
        metrics_dir.mkdir()
        env = {**_env(fake, port=str(port), workers=str(count), **settings)}
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


def test_metrics_add_up_across_workers_whichever_answers_the_scrape(workers: Any) -> None:
    running = workers(2)
    for _ in range(20):  # a new connection each: the kernel hands them to either worker
        assert httpx.post(running.url + "/echo", content=b"x", timeout=10).status_code == 200
    scrapes = [httpx.get(running.url + "/sidecar/metrics", timeout=10).text for _ in range(6)]
    for text in scrapes:
        assert metric(text, 'sidecar_requests_total{route="passthrough",status="200"}') == 20
        assert metric(text, "sidecar_passthrough_seconds_count") == 20


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
