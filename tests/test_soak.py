"""The soak's short version as a leak test: ``bench/soak.py`` for a little over a minute.

The real sidecar process in front of the stand-in LiteLLM (``bench/soak_upstream.py``), 2,100 distinct
callers, streams and hang-ups, the upstream paused and killed under it, the admin API slow and failing;
the soak exits non-zero if an answer is lost or wrong, or if RSS, descriptors, upstream connections or
asyncio tasks grow once warm (its docstring says how that is judged). About 95 s in all. The long run is
the same command with ``--minutes 30`` (README, "Performance").
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_short_soak_loses_no_answer_and_leaks_nothing() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "--minutes", "1.2", "--callers", "700"],
        env=env,
        capture_output=True,
        text=True,
        timeout=110,  # the run, the priming, start and stop: about 95 s
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert "ok: every answer whole" in result.stdout
