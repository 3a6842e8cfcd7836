"""The soak's short version as a leak test: ``bench/soak.py`` for a little over a minute.

The real sidecar process in front of the stand-in LiteLLM (``bench/soak_upstream.py``), 2,100 distinct
callers, streams and hang-ups, the upstream paused and killed under it, the admin API slow and failing;
the soak exits non-zero if an answer is lost or wrong, or if RSS, descriptors, connections or asyncio
tasks grow once warm (its docstring says how that is judged). About 95 s in all on an idle 2-core
machine. The long run is the same command with ``--minutes 30`` (docs/performance.md).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEADLINE = 150  # seconds: start, priming, 66 s of traffic, stop - with room for a busy machine


def test_a_short_soak_loses_no_answer_and_leaks_nothing() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    env["PYTHONPATH"] = str(ROOT)
    command = [sys.executable, str(ROOT / "bench" / "soak.py"), "--minutes", "1.1", "--callers", "700"]
    soak = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = soak.communicate(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        soak.send_signal(signal.SIGTERM)  # the soak stops the sidecar and the stand-in it started
        output, _ = soak.communicate(timeout=30)
        raise AssertionError(f"the soak took over {DEADLINE} s:\n{output[-6000:]}") from None
    finally:  # interrupted (Ctrl-C): the soak still stops what it started
        if soak.poll() is None:
            soak.send_signal(signal.SIGTERM)
            soak.communicate(timeout=30)
    assert soak.returncode == 0, output[-8000:]
    assert "ok: every answer whole" in output
