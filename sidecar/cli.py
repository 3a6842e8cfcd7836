"""The command line: ``litellm-budget-sidecar`` and ``python -m sidecar``.

Flags win over ``SIDECAR_*`` environment variables, which win over the YAML file. A bad setting stops
start-up with one line on stderr naming it and what it accepts, and exit status 2; no traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import uvicorn

from sidecar import logs
from sidecar.app import create_app
from sidecar.settings import Settings, SettingsError, load_settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="litellm-budget-sidecar",
        description="Reverse proxy beside LiteLLM that keeps model discovery working when a budget is spent.",
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
    return parser


def settings_from_args(argv: Sequence[str] | None = None) -> Settings:
    args = _parser().parse_args(argv)
    return load_settings(
        args.config,
        upstream_url=args.upstream_url,
        admin_key=args.admin_key,
        policy=args.policy,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        free_models=args.free_models,
    )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = settings_from_args(argv)
    except SettingsError as exc:
        print(f"litellm-budget-sidecar: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level)
    uvicorn.Server(server_config(settings)).run()
    return 0


def server_config(settings: Settings) -> uvicorn.Config:
    """How uvicorn serves the sidecar. No access log and no ``Server``/``Date`` of its own: the upstream's
    headers pass through, not doubled. ``X-Forwarded-*`` are not interpreted here but forwarded, with the
    real peer appended to ``X-Forwarded-For`` (``forwarding.py``)."""
    return uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        server_header=False,
        date_header=False,
        proxy_headers=False,
        log_config=None,
        log_level=settings.log_level,
    )


if __name__ == "__main__":
    sys.exit(main())
