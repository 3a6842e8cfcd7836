"""The README's first command, ``demo/demo.py``, for real: what it shows, and that it leaves nothing running -
at its end, on Ctrl-C, and after ``--keep`` by the very command it prints.

Each test knows what its demo started from the demo's own output (the state dir it names, the command it
prints), never from a listing of the machine, so a demo run beside it - another checkout's, an operator's -
changes nothing; and whatever a test asserts, the ``demo`` fixture stops what its demo left.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.conftest import TOOL, _cannot_run, _unavailable

pytestmark = pytest.mark.integration

DEMO = Path(__file__).resolve().parents[2] / "demo" / "demo.py"
VERSION = "1.88.6"
STATE_LINE = re.compile(r"^demo: state dir (\S+) ", re.MULTILINE)


@pytest.fixture(autouse=True)
def _harness_here() -> None:
    reason = _unavailable()
    if reason:
        _cannot_run(reason)


def left_running(state: Path) -> list[str]:
    """Processes whose command line, working directory or environment names ``state`` (a demo's own state
    dir, from its output: a unique path, so only what that demo started can match)."""
    found = []
    mark = str(state).encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            seen = (proc / "cmdline").read_bytes() + (proc / "environ").read_bytes()
            seen += os.readlink(proc / "cwd").encode()
        except OSError:
            continue
        if mark in seen:
            found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
    return found


@dataclass
class Demo:
    process: subprocess.Popen[str]
    output: str = ""  # its stdout and stderr, as read so far

    @property
    def state(self) -> Path | None:
        """The state dir the demo says it runs LiteLLM and PostgreSQL from."""
        found = STATE_LINE.search(self.output)
        return Path(found[1]) if found else None

    def read_until(self, prefix: str) -> bool:
        """Read its output up to a line starting with ``prefix``; False if it ended first."""
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output += line
            if line.startswith(prefix):
                return True
        return False

    def finish(self, timeout: float) -> int:
        rest, _ = self.process.communicate(timeout=timeout)
        self.output += rest
        return self.process.returncode

    def stop(self) -> None:
        """Whatever the test did: the demo's process group (the demo, and the sidecars it started, kept or
        not) ends, and the harness stops whatever still runs from the demo's state dir."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)  # the demo cleans up on SIGTERM as on Ctrl-C
        try:
            self.finish(timeout=120)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        if self.state is not None and self.state.exists():
            subprocess.run(
                [str(TOOL), "down", "--state", str(self.state), "--purge"], capture_output=True, timeout=120
            )


@pytest.fixture
def demo() -> Iterator[Callable[..., Demo]]:
    started: list[Demo] = []

    def run(*args: str) -> Demo:
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("SIDECAR_", "LITELLM_UPSTREAM_STATE"))
        }
        process = subprocess.Popen(
            [sys.executable, str(DEMO), "--version", VERSION, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,  # one pipe: a chatty stderr cannot stall it while stdout is read
            text=True,
            env=env,
            start_new_session=True,  # its own process group, as a terminal's foreground job
        )
        started.append(Demo(process))
        return started[-1]

    yield run
    for each in started:
        each.stop()


def test_the_demo_shows_each_answer_with_the_sidecars_headers_and_stops_everything(
    demo: Callable[..., Demo],
) -> None:
    run = demo()
    assert run.finish(timeout=900) == 0, run.output[-3000:]
    out = run.output
    assert "its admin credential: a read-only proxy_admin_viewer key, not the master key" in out
    rows = [line.split() for line in out.splitlines()]
    free_only = "models, free_only 429 budget_exceeded 200 free-model, free-model-2, free-embedding"
    marks = " budget-exceeded=true policy=free_only budget-scope=team budget-usable=free"
    assert (free_only + marks).split() in rows
    assert ["chat", "paid-model", "429", "budget_exceeded", "429", "budget_exceeded", "-"] in rows
    assert run.state is not None, out[-3000:]
    assert not run.state.exists(), f"the demo left its state dir {run.state}"
    assert not left_running(run.state)


def test_ctrl_c_stops_what_the_demo_started(demo: Callable[..., Demo]) -> None:
    run = demo()
    if not run.read_until("demo: starting the sidecar once per policy"):
        pytest.fail(f"the demo ended early: {run.finish(timeout=60)} {run.output[-3000:]}")
    state = run.state  # LiteLLM and PostgreSQL run from it now
    assert state is not None, run.output[-3000:]
    assert left_running(state)
    os.killpg(run.process.pid, signal.SIGINT)  # Ctrl-C: the whole foreground process group
    assert run.finish(timeout=120) == 130
    assert not state.exists()
    assert not left_running(state)


def test_keep_prints_the_command_that_stops_exactly_what_it_left(demo: Callable[..., Demo]) -> None:
    run = demo("--keep")
    assert run.finish(timeout=900) == 0, run.output[-3000:]
    state = run.state
    assert state is not None and left_running(state)
    (stop,) = re.findall(r"^  (kill [\d ]+; \S+ down --state \S+ --purge)$", run.output, re.MULTILINE)
    assert "pkill" not in run.output and str(state) in stop
    subprocess.run(["bash", "-c", stop], check=True, capture_output=True, timeout=120)
    assert not state.exists()
    assert not left_running(state)
