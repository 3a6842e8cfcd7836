"""The sidecar exactly as ``python -m sidecar`` runs it (``sidecar.cli.main``, ``SIDECAR_*`` settings),
with one observer added from outside the product: on SIGUSR1 it appends a line to ``$SOAK_STATS_FILE``,
``{"tasks": <asyncio tasks>, "requests": <requests in flight>, "connections": <caller connections>}``
(the last two are uvicorn's own ``server_state``), after a first line naming the ``sidecar`` package it
runs (so the soak can check it runs the tree it belongs to).

Why here and not in the sidecar: the asyncio task count cannot be read from outside the process, and a
debug switch in the product would be code every deployment carries for the soak's sake. The observer
wraps ``uvicorn.Server.serve``, which the sidecar's ``DrainingServer`` inherits unchanged, so it runs in
the sidecar's own loop and costs nothing until asked. Asked by a signal rather than on a timer, its count
is taken at the instant the soak reads the process's descriptors and connections.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from typing import Any

import uvicorn

import sidecar
from sidecar.cli import main


def _observe(path: str) -> None:
    with open(path, "a") as out:
        out.write(json.dumps({"sidecar": sidecar.__file__, "pid": os.getpid()}) + "\n")
    serve = uvicorn.Server.serve

    async def observed(self: uvicorn.Server, sockets: Any = None) -> None:
        def report() -> None:
            state = self.server_state
            stats = {
                "tasks": len(asyncio.all_tasks()),
                "requests": len(state.tasks),
                "connections": len(state.connections),
            }
            with open(path, "a") as out:
                out.write(json.dumps(stats) + "\n")

        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, report)
        await serve(self, sockets)

    uvicorn.Server.serve = observed  # type: ignore[method-assign]


if __name__ == "__main__":
    _observe(os.environ["SOAK_STATS_FILE"])
    sys.exit(main())
