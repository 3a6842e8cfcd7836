"""The README's first command, ``demo/demo.py``, for real: what it shows, and that it leaves nothing running -
at its end, on Ctrl-C, and after ``--keep`` by the very command it prints."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import _cannot_run, _unavailable

pytestmark = pytest.mark.integration

DEMO = Path(__file__).resolve().parents[2] / "demo" / "demo.py"
VERSION = "1.88.6"


@pytest.fixture(autouse=True)
def _harness_here() -> None:
    reason = _unavailable()
    if reason:
        _cannot_run(reason)


def demo_dirs() -> set[Path]:
    return set(Path("/tmp").glob("sidecar-demo-*"))


def left_running(state_dirs: set[Path]) -> list[str]:
    """Processes whose command line, working directory or environment names one of ``state_dirs``."""
    found = []
    marks = [str(d).encode() for d in state_dirs]
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            seen = (proc / "cmdline").read_bytes() + (proc / "environ").read_bytes()
            seen += os.readlink(proc / "cwd").encode()
        except OSError:
            continue
        if any(mark in seen for mark in marks):
            found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
    return found


def run_demo(*args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIDECAR_", "LITELLM_UPSTREAM_STATE"))}
    return subprocess.Popen(
        [sys.executable, str(DEMO), "--version", VERSION, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )


def test_the_demo_shows_each_answer_with_the_sidecars_headers_and_stops_everything() -> None:
    before = demo_dirs()
    demo = run_demo()
    out, err = demo.communicate(timeout=900)
    assert demo.returncode == 0, err[-3000:]
    assert "its admin credential: a read-only proxy_admin_viewer key, not the master key" in out
    rows = [line.split() for line in out.splitlines()]
    free_only = "models, free_only 429 budget_exceeded 200 free-model, free-model-2, free-embedding"
    assert (free_only + " budget-exceeded=true policy=free_only budget-scope=team").split() in rows
    assert ["chat", "paid-model", "429", "budget_exceeded", "429", "budget_exceeded", "-"] in rows
    made = demo_dirs() - before
    assert not made, f"the demo left its state dir {made}"
    assert not left_running(made | {Path("/tmp/sidecar-demo-")})


def test_ctrl_c_stops_what_the_demo_started() -> None:
    before = demo_dirs()
    demo = run_demo()
    assert demo.stdout is not None
    for line in demo.stdout:
        if line.startswith("demo: starting the sidecar once per policy"):
            break
    else:
        pytest.fail(f"the demo ended early: {demo.wait()} {demo.stderr.read() if demo.stderr else ''}")
    (state,) = demo_dirs() - before  # LiteLLM and PostgreSQL run from it now
    assert left_running({state})
    os.killpg(demo.pid, signal.SIGINT)  # Ctrl-C: the whole foreground process group
    demo.communicate(timeout=120)
    assert demo.returncode == 130
    assert not state.exists()
    assert not left_running({state})


def test_keep_prints_the_command_that_stops_exactly_what_it_left() -> None:
    before = demo_dirs()
    demo = run_demo("--keep")
    out, err = demo.communicate(timeout=900)
    assert demo.returncode == 0, err[-3000:]
    (state,) = demo_dirs() - before
    assert left_running({state})
    (stop,) = re.findall(r"^  (kill [\d ]+; \S+ down --state \S+ --purge)$", out, re.MULTILINE)
    assert "pkill" not in out and str(state) in stop
    subprocess.run(["bash", "-c", stop], check=True, capture_output=True, timeout=120)
    assert not state.exists()
    assert not left_running({state})
