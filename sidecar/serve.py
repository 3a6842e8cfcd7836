"""How the sidecar runs: its listening socket, uvicorn with a graceful drain, and - with ``workers`` > 1 -
a small supervisor of worker processes.

One process (the default): uvicorn serves the app on a socket bound here first, so that an address in use
is one clear line (``listen``). Once listening it logs one ``startup`` line (``announce``).

Several workers: the supervisor binds the socket, then spawns ``workers`` processes that each serve it
(the kernel spreads connections among them), passes every SIGTERM/SIGINT it gets on to each - each drains
as a single sidecar does, and a second signal skips the delay there too - and restarts a worker that
dies, one second later. Each worker has its own caches, connection pools and budget states; its metrics
go to files in a fresh directory under ``PROMETHEUS_MULTIPROC_DIR`` (the temp dir when unset; a writable
volume under a read-only root filesystem), and any worker answers a scrape with the sum of all
(``metrics.py``). The directory is removed when the supervisor ends.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from multiprocessing.process import BaseProcess
from types import FrameType
from urllib.parse import urlsplit

import uvicorn

from sidecar import logs
from sidecar.app import SidecarApp, create_app
from sidecar.logs import event
from sidecar.proxy.inbound import bounded_protocol
from sidecar.settings import Settings

log = logging.getLogger("sidecar.serve")

# How the supervisor hands the settings to its workers (spawned processes that re-import the sidecar).
WORKER_SETTINGS = "_SIDECAR_WORKER_SETTINGS"
RESTART_DELAY = 1.0  # seconds before a worker that died is started again


def serve(settings: Settings, listener: socket.socket) -> None:
    """Serve on ``listener`` until a signal stops it: in this process, or in ``settings.workers``."""
    if settings.workers > 1:
        supervise(settings, listener)
    else:
        DrainingServer(server_config(settings), settings.drain_delay).run(sockets=[listener])


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before uvicorn starts, so that an address in use is one clear line
    (as uvicorn binds it: ``SO_REUSEADDR``, IPv6 for a host with a colon)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


class DrainingServer(uvicorn.Server):
    """uvicorn, with readiness going false before it stops accepting connections.

    On the first SIGTERM/SIGINT the app reports not ready at once and keeps serving for ``drain_delay``
    seconds; then uvicorn's own graceful shutdown closes the listener and lets in-flight requests finish
    within ``timeout_graceful_shutdown``. A second signal skips the delay.
    """

    def __init__(self, config: uvicorn.Config, drain_delay: float) -> None:
        super().__init__(config)
        self._drain_delay = drain_delay
        self._stop_at: float | None = None
        self._announcing: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        app = self.config.app
        if isinstance(app, SidecarApp) and not self.should_exit:
            self._announcing = asyncio.create_task(announce(app))

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self._announcing is not None:
            self._announcing.cancel()
        await super().shutdown(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        app = self.config.app
        if isinstance(app, SidecarApp):
            app.draining = True
        if self._stop_at is None and self._drain_delay > 0:
            self._stop_at = time.monotonic() + self._drain_delay
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self._stop_at is not None and time.monotonic() >= self._stop_at:
            self.should_exit = True
        return await super().on_tick(counter)


async def announce(app: SidecarApp) -> None:
    """The one ``startup`` line: LiteLLM reachable or not and why, the admin credential accepted or not."""
    settings = app.settings
    ready, report = await app.readiness()
    upstream = report.get("upstream", "")
    if upstream.startswith("/health/liveliness answered 404") and urlsplit(settings.upstream_url).path:
        upstream += f" - is LiteLLM served under {urlsplit(settings.upstream_url).path}?"
    event(
        log,
        logging.INFO if ready else logging.WARNING,
        "startup",
        ready=ready,
        pid=os.getpid(),
        listen=f"http://{settings.host}:{settings.port}",
        upstream_url=settings.upstream_url,
        policy=settings.policy,
        upstream=upstream,
        admin_credential=report.get("admin_credential", "not set (every budget verdict unknown)"),
    )


def server_config(settings: Settings, app: SidecarApp | None = None) -> uvicorn.Config:
    """How uvicorn serves the sidecar. No access log and no ``Server``/``Date`` of its own: the upstream's
    headers pass through, not doubled. ``X-Forwarded-*`` are not interpreted here but forwarded, with the
    real peer appended to ``X-Forwarded-For`` (``forwarding.py``)."""
    return uvicorn.Config(
        create_app(settings) if app is None else app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=bounded_protocol(settings.max_header_bytes),
        lifespan="on",
        access_log=False,
        server_header=False,
        date_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=math.ceil(settings.shutdown_timeout),
        log_config=None,
        log_level=settings.log_level,
    )


def supervise(settings: Settings, listener: socket.socket) -> None:
    """Run ``settings.workers`` worker processes on ``listener`` until a signal stops them all."""
    metrics_dir = tempfile.mkdtemp(prefix="sidecar-metrics-", dir=os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
    values = settings.model_dump(mode="json")
    if settings.admin_key is not None:
        values["admin_key"] = settings.admin_key.get_secret_value()
    os.environ.update({"PROMETHEUS_MULTIPROC_DIR": metrics_dir, WORKER_SETTINGS: json.dumps(values)})
    spawn = multiprocessing.get_context("spawn")
    multiprocessing.allow_connection_pickling()  # the socket goes to each worker

    def start() -> BaseProcess:
        worker = spawn.Process(target=run_worker, args=([listener],), name="sidecar-worker")
        worker.start()
        return worker

    stopping = threading.Event()
    workers: list[BaseProcess] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        stopping.set()
        for worker in workers:
            if worker.pid is not None and worker.exitcode is None:
                os.kill(worker.pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        workers.extend(start() for _ in range(settings.workers))
        event(log, logging.INFO, "workers_started", workers=[w.pid for w in workers])
        while not stopping.wait(0.5):
            for i, worker in enumerate(workers):
                if worker.exitcode is not None and not stopping.wait(RESTART_DELAY):
                    event(log, logging.ERROR, "worker_died", pid=worker.pid, exit_code=worker.exitcode)
                    workers[i] = start()
        for worker in workers:
            worker.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for worker in workers:
            if worker.exitcode is None:
                worker.kill()
                worker.join()
        shutil.rmtree(metrics_dir, ignore_errors=True)


def run_worker(sockets: list[socket.socket]) -> None:
    """One worker process: the settings from the supervisor, the app with multiprocess metrics."""
    settings = Settings.model_validate(json.loads(os.environ[WORKER_SETTINGS]))
    logs.configure(settings.log_level)
    app = create_app(settings, multiprocess=True)
    DrainingServer(server_config(settings, app), settings.drain_delay).run(sockets=sockets)
