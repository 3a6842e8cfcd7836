"""The sidecar as ``bench/streams.py`` runs it: its console entry point, and - with ``STREAMS_TRACEMALLOC``
set to a number of frames - ``tracemalloc`` on from the start and a snapshot written to
``$STREAMS_TRACEMALLOC_OUT.<n>`` on each SIGUSR1. A bench harness only; the product has no such hook.

    STREAMS_TRACEMALLOC=1 STREAMS_TRACEMALLOC_OUT=/tmp/snap PYTHONPATH=<build> python bench/traced_sidecar.py
"""

from __future__ import annotations

import os
import signal
import sys
import tracemalloc
from types import FrameType

_dumps = 0


def _dump(signum: int, frame: FrameType | None) -> None:
    global _dumps
    path = f"{os.environ['STREAMS_TRACEMALLOC_OUT']}.{_dumps}"
    _dumps += 1
    tracemalloc.take_snapshot().dump(path + ".part")
    os.rename(path + ".part", path)  # whoever waits for it sees it whole


def main() -> int:
    frames = int(os.environ.get("STREAMS_TRACEMALLOC", "0"))
    if frames:
        tracemalloc.start(frames)
        signal.signal(signal.SIGUSR1, _dump)
    import sidecar
    from sidecar.cli import main as sidecar_main

    print(f"streams: sidecar code from {os.path.dirname(sidecar.__file__)}", file=sys.stderr, flush=True)
    return sidecar_main([])


if __name__ == "__main__":
    sys.exit(main())
