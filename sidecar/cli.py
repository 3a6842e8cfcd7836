"""The command line: ``litellm-budget-sidecar`` and ``python -m sidecar``.

Flags win over ``SIDECAR_*`` environment variables, which win over the YAML file. A bad setting, or an
address it cannot listen on, stops start-up with one line on stderr and exit status 2; no traceback.
Settings corrected or ignored (``settings.load_settings``) are logged as ``setting_warning`` lines. Once
listening, the sidecar logs one ``startup`` line: whether LiteLLM is reachable and the admin credential
accepted - it keeps serving either way (LiteLLM may come up later; ``/readyz`` tells a load balancer).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import socket
import sys
import time
from collections.abc import Sequence
from types import FrameType
from urllib.parse import urlsplit

import uvicorn

from sidecar import doctor, logs
from sidecar.app import SidecarApp, create_app
from sidecar.logs import event
from sidecar.proxy.inbound import bounded_protocol
from sidecar.settings import Settings, SettingsError, load_settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="litellm-budget-sidecar",
        description="Reverse proxy beside LiteLLM that keeps model discovery working when a budget is spent.",
        epilog="litellm-budget-sidecar doctor --key sk-... diagnoses one key's budget (doctor --help).",
    )
    parser.add_argument("--config", metavar="PATH", help="YAML settings file (also SIDECAR_CONFIG)")
    parser.add_argument("--upstream-url", help="LiteLLM's URL (default http://127.0.0.1:4000)")
    parser.add_argument(
        "--admin-key", help="admin credential for look-ups; prefer SIDECAR_ADMIN_KEY (flags show in ps)"
    )
    parser.add_argument("--policy", help="all | free_only | blocked (default all)")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", help="port to listen on (default 4001)")
    parser.add_argument("--log-level", help="debug | info | warning | error (default info)")
    parser.add_argument("--free-models", help="comma-separated model names to treat as free")
    parser.add_argument(
        "--check",
        action="store_true",
        help="validate the settings, check LiteLLM is reachable and the admin key accepted, then exit",
    )
    return parser


log = logging.getLogger("sidecar.cli")


def settings_from_args(argv: Sequence[str] | None = None) -> Settings:
    return _settings(_parser().parse_args(argv))


def _settings(args: argparse.Namespace, warnings: list[str] | None = None) -> Settings:
    return load_settings(
        args.config,
        warnings,
        upstream_url=args.upstream_url,
        admin_key=args.admin_key,
        policy=args.policy,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        free_models=args.free_models,
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["doctor"]:
        return doctor.main(argv[1:])
    args = _parser().parse_args(argv)
    warnings: list[str] = []
    try:
        settings = _settings(args, warnings)
    except SettingsError as exc:
        print(f"litellm-budget-sidecar: {exc}", file=sys.stderr)
        return 2
    if args.check:
        return asyncio.run(check(settings, warnings))
    try:
        listener = listen(settings.host, settings.port)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        print(
            f"litellm-budget-sidecar: cannot listen on {settings.host}:{settings.port}: {reason}",
            file=sys.stderr,
        )
        return 2
    logs.configure(settings.log_level)
    for warning in warnings:
        event(log, logging.WARNING, "setting_warning", message=warning)
    with listener:
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


async def check(settings: Settings, warnings: Sequence[str] = ()) -> int:
    """``--check``: the settings are valid (or we would not be here); is the sidecar ready to serve?
    Only its own report is printed: the sidecar's log lines stay out of it."""
    logging.getLogger().addHandler(logging.NullHandler())
    app = create_app(settings)
    await app.startup()
    try:
        ready, report = await app.readiness()
    finally:
        await app.shutdown()
    for warning in warnings:
        print(f"warning: {warning}")
    print(f"settings: ok (upstream {settings.upstream_url}, policy {settings.policy})")
    for name, result in report.items():
        if name != "status":
            print(f"{name}: {result}")
    print("ready" if ready else "NOT ready")
    return 0 if ready else 1


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
        listen=f"http://{settings.host}:{settings.port}",
        upstream_url=settings.upstream_url,
        policy=settings.policy,
        upstream=upstream,
        admin_credential=report.get("admin_credential", "not set (every budget verdict unknown)"),
    )


def server_config(settings: Settings) -> uvicorn.Config:
    """How uvicorn serves the sidecar. No access log and no ``Server``/``Date`` of its own: the upstream's
    headers pass through, not doubled. ``X-Forwarded-*`` are not interpreted here but forwarded, with the
    real peer appended to ``X-Forwarded-For`` (``forwarding.py``)."""
    return uvicorn.Config(
        create_app(settings),
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


if __name__ == "__main__":
    sys.exit(main())
