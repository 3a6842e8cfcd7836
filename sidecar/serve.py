"""How the sidecar runs: its listening socket, uvicorn with a graceful drain, and - with ``workers`` > 1 -
a small supervisor of worker processes.

One process (the default): uvicorn serves the app on a socket bound here first, so that an address in use
is one clear line (``listen``). Once listening it logs one ``startup`` line (``announce``).

Several workers: the supervisor binds the socket, then spawns ``workers`` processes that each serve it
(the kernel spreads connections among them). On the first SIGTERM/SIGINT it closes its own copy of the
socket (so that new connections are refused once the workers have closed theirs, not queued) and passes
every signal on to each worker - each drains as a single sidecar does, and a second signal skips the
delay there too. It restarts a worker that dies one second later, and stops with exit status 1 when
workers keep dying right after their start. A worker ends with the supervisor however that ends (Linux's
parent-death signal), so a killed supervisor leaves no worker holding the port. The settings - the admin
key among them - reach each worker over the spawn pipe, not in its environment. Each worker has its own
caches, connection pools and budget states; its metrics go to files in a fresh directory under
``PROMETHEUS_MULTIPROC_DIR`` (the temp dir when unset; a writable volume under a read-only root
filesystem), and any worker answers a scrape with the sum of all (``metrics.py``). The directory is
removed when the supervisor ends.
"""

from __future__ import annotations

import asyncio
import ctypes
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
from sidecar.app import ALWAYS_ANSWERED, SidecarApp, create_app
from sidecar.logs import event
from sidecar.metrics import Metrics
from sidecar.proxy.capacity import LOW_STREAMS, raise_open_files
from sidecar.proxy.collector import Collector
from sidecar.proxy.inbound import bounded_protocol
from sidecar.settings import Settings

log = logging.getLogger("sidecar.serve")

RESTART_DELAY = 1.0  # seconds before a worker that died is started again (times the quick deaths in a row)
QUICK_DEATH = 5.0  # seconds: a worker that dies sooner after its start counts towards a crash loop
CRASH_LOOP = 5  # quick deaths in a row after which the supervisor stops, exit status 1
_PR_SET_PDEATHSIG = 1  # prctl(2)


def serve(settings: Settings, listener: socket.socket, metrics_dir: str | None = None) -> int:
    """Serve on ``listener`` until a signal stops it: in this process, or in ``settings.workers`` (then
    ``metrics_dir`` from ``metrics_directory``). The exit status."""
    raise_open_files(settings.max_open_files)  # workers inherit it, and raise their own again
    if settings.workers > 1:
        assert metrics_dir is not None
        return supervise(settings, listener, metrics_dir)
    DrainingServer(server_config(settings), settings.drain_delay).run(sockets=[listener])
    return 0


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
    within ``timeout_graceful_shutdown``. A second signal skips the delay. Python's cycle collector runs
    on the process's terms once serving starts (``proxy/collector.py``), its full collections from
    uvicorn's tick; the metrics' tallies are flushed on each tick too, and as it stops (``metrics.py``).
    """

    def __init__(self, config: uvicorn.Config, drain_delay: float) -> None:
        super().__init__(config)
        self._drain_delay = drain_delay
        self._stop_at: float | None = None
        self._announcing: asyncio.Task[None] | None = None
        self._collector: Collector | None = None
        self._metrics: Metrics | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        app = self.config.app
        if isinstance(app, SidecarApp) and not self.should_exit:
            self._metrics = app.metrics
            self._collector = Collector(app.settings.gc_interval, app.metrics.gc_paused)
            self._collector.start()
            self._announcing = asyncio.create_task(announce(app))

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self._announcing is not None:
            self._announcing.cancel()
        await super().shutdown(sockets)
        if self._collector is not None:
            self._collector.stop()
        if self._metrics is not None:
            self._metrics.flush()  # a worker's last requests, for the scrapes the others answer

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        app = self.config.app
        if isinstance(app, SidecarApp):
            app.draining = True
        if self._stop_at is None and self._drain_delay > 0:
            self._stop_at = time.monotonic() + self._drain_delay
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self._collector is not None:
            self._collector.tick()
        if self._metrics is not None:
            self._metrics.flush()
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
        listen=f"http://[{settings.host}]:{settings.port}"
        if ":" in settings.host
        else f"http://{settings.host}:{settings.port}",
        upstream_url=settings.upstream_url,
        policy=settings.policy,
        upstream=upstream,
        admin_credential=report.get("admin_credential", "not set (every budget verdict unknown)"),
        open_files=app.open_files,
        max_connections=app.max_connections,
    )
    if app.max_connections < LOW_STREAMS:
        event(
            log,
            logging.WARNING,
            "setting_warning",
            message=f"this process may open {app.open_files} descriptors, so it holds at most "
            f"{app.max_connections} caller connections (concurrent streams) before answering 503: raise "
            "the hard limit (LimitNOFILE=, ulimit -Hn, the container runtime's nofile) or add workers",
        )
    fallback = app.running.fallback if app.running is not None else None
    if fallback is not None and ready:
        try:
            unusable = await fallback.unusable_targets()
        except Exception:  # noqa: BLE001 - the start-up line is a courtesy; requests check again
            return
        for target in unusable:
            event(
                log,
                logging.WARNING,
                "setting_warning",
                message=f"fallback target {target} is not free in LiteLLM's catalog (or there is no admin "
                "key): no request will fall back to it",
            )


def server_config(settings: Settings, app: SidecarApp | None = None) -> uvicorn.Config:
    """How uvicorn serves the sidecar. No access log and no ``Server``/``Date`` of its own: the upstream's
    headers pass through, not doubled. ``X-Forwarded-*`` are not interpreted here but forwarded, with the
    real peer appended to ``X-Forwarded-For`` (``forwarding.py``)."""
    app = create_app(settings) if app is None else app
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=bounded_protocol(
            settings.max_header_bytes, app.max_connections, ALWAYS_ANSWERED, app.at_capacity
        ),
        ws="websockets-sansio",  # WebSockets are relayed to LiteLLM (``proxy/websocket.py``)
        ws_max_size=settings.ws_max_message_bytes,
        ws_per_message_deflate=settings.ws_per_message_deflate,  # off unless asked: see settings.py
        lifespan="on",
        access_log=False,
        server_header=False,
        date_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=math.ceil(settings.shutdown_timeout),
        log_config=None,
        log_level=settings.log_level,
    )


def metrics_directory() -> str:
    """A fresh directory for the workers' metrics files, under ``PROMETHEUS_MULTIPROC_DIR`` when set (a
    writable volume under a read-only root filesystem), else the temp dir. Made before the sidecar
    listens: an unwritable place is one clear line at start (``OSError``), not a crashing worker."""
    return tempfile.mkdtemp(prefix="sidecar-metrics-", dir=os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def supervise(settings: Settings, listener: socket.socket, metrics_dir: str) -> int:
    """Run ``settings.workers`` worker processes on ``listener`` until a signal stops them all; 0, or 1
    when workers kept dying at start (``CRASH_LOOP`` in a row, each within ``QUICK_DEATH`` seconds)."""
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # read by prometheus_client as it is imported
    values = settings.model_dump(mode="json")
    if settings.admin_key is not None:
        values["admin_key"] = settings.admin_key.get_secret_value()
    handed = json.dumps(values)  # over the spawn pipe, not in the environment: the admin key is in it
    os.environ.pop("SIDECAR_ADMIN_KEY", None)  # nor the workers' inherited environment
    spawn = multiprocessing.get_context("spawn")
    multiprocessing.allow_connection_pickling()  # the socket goes to each worker
    stopping = threading.Event()
    workers: list[BaseProcess] = []
    started_at: dict[int, float] = {}
    signals = {signal.SIGTERM, signal.SIGINT}

    def start() -> BaseProcess:
        # A signal arriving while a worker is being started waits until it is in ``workers``.
        signal.pthread_sigmask(signal.SIG_BLOCK, signals)
        try:
            worker = spawn.Process(target=run_worker, args=(handed, [listener]), name="sidecar-worker")
            worker.start()
            workers.append(worker)
            started_at[id(worker)] = time.monotonic()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)
        return worker

    def forward(signum: int, frame: FrameType | None) -> None:
        if not stopping.is_set():
            stopping.set()
            listener.close()  # new connections are refused now, not queued for workers that are leaving
        for worker in workers:
            if worker.pid is not None and worker.exitcode is None:
                os.kill(worker.pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in signals}
    quick_deaths = 0
    try:
        for _ in range(settings.workers):
            start()
        event(log, logging.INFO, "workers_started", workers=[w.pid for w in workers])
        while not stopping.wait(0.5):
            for worker in [w for w in workers if w.exitcode is not None]:
                lived = time.monotonic() - started_at.pop(id(worker))
                quick_deaths = quick_deaths + 1 if lived < QUICK_DEATH else 0
                event(
                    log,
                    logging.ERROR,
                    "worker_died",
                    pid=worker.pid,
                    exit_code=worker.exitcode,
                    lived_s=round(lived, 1),
                )
                workers.remove(worker)
                if quick_deaths >= CRASH_LOOP:
                    event(
                        log, logging.ERROR, "workers_failing", message="workers keep dying at start; stopping"
                    )
                    forward(signal.SIGTERM, None)
                    break
                if not stopping.wait(RESTART_DELAY * quick_deaths or RESTART_DELAY):
                    start()
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
    return 1 if quick_deaths >= CRASH_LOOP else 0


def run_worker(handed: str, sockets: list[socket.socket]) -> None:
    """One worker process: the settings from the supervisor, the app with multiprocess metrics. It ends
    with the supervisor, however that ends (a SIGKILL included): Linux sends it SIGTERM then."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})  # blocked by ``start``
    _end_with_parent()
    settings = Settings.model_validate(json.loads(handed))
    logs.configure(settings.log_level)
    raise_open_files(settings.max_open_files)
    app = create_app(settings, multiprocess=True)
    DrainingServer(server_config(settings, app), settings.drain_delay).run(sockets=sockets)


def _end_with_parent() -> None:
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the supervisor's own clean-up still applies
        return
    if os.getppid() != parent:  # the supervisor was already gone before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)
