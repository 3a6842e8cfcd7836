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
import importlib.metadata
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence

from sidecar import doctor, logs
from sidecar.app import create_app
from sidecar.logs import event
from sidecar.serve import listen, metrics_directory, serve
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
    parser.add_argument("--workers", help="worker processes, or auto: one per CPU (default 1)")
    parser.add_argument(
        "--fallback",
        metavar="JSON",
        help='opt-in: paid model (or "*") -> free model, e.g. {"*": "free-model"}',
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument(
        "--check",
        action="store_true",
        help="validate the settings, check LiteLLM is reachable and the admin key accepted, then exit",
    )
    return parser


log = logging.getLogger("sidecar.cli")


def _version() -> str:
    try:
        return importlib.metadata.version("litellm-budget-sidecar")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


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
        workers=args.workers,
        fallback=_json_flag("fallback", args.fallback),
    )


def _json_flag(name: str, value: str | None) -> object:
    if value is None:
        return None
    try:
        return json.loads(value)
    except ValueError:
        raise SettingsError(
            f'invalid setting \'{name}\' (--{name}): not JSON, e.g. {{"*": "free-model"}}'
        ) from None


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
    metrics_dir = None
    try:
        if settings.workers > 1:
            metrics_dir = metrics_directory()
    except OSError as exc:
        where = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or "the temp dir"
        print(
            f"litellm-budget-sidecar: workers need a writable directory for their metrics "
            f"(PROMETHEUS_MULTIPROC_DIR): cannot create one in {where}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 2
    if args.check:
        if metrics_dir is not None:
            os.rmdir(metrics_dir)
        return asyncio.run(check(settings, warnings))
    try:
        listener = listen(settings.host, settings.port)
    except OSError as exc:
        if metrics_dir is not None:
            os.rmdir(metrics_dir)
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
        try:
            return serve(settings, listener, metrics_dir)
        except KeyboardInterrupt:
            # uvicorn drained and stopped, then raised the SIGINT it caught again: end by that signal, as a
            # program interrupted from a terminal should (exit status 130 in a shell), without a traceback.
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
            return 130


async def check(settings: Settings, warnings: Sequence[str] = ()) -> int:
    """``--check``: what the real start would find - the settings (valid, or we would not be here) and every
    warning it would log, the port free to listen on, LiteLLM reachable, the admin key accepted, the
    fallback's targets free. Exit status 0: it would be ready with nothing to warn of; 1: it would not be
    ready; 3: ready, with warnings. Only its own report is printed: the sidecar's log lines stay out of it."""
    logging.getLogger().addHandler(logging.NullHandler())
    found = list(warnings)
    app = create_app(settings)
    await app.startup()
    try:
        ready, report = await app.readiness()
        fallback = app.running.fallback if app.running is not None else None
        if fallback is not None and ready:
            found += [
                f"fallback target {target} is not free in LiteLLM's catalog (or there is no admin key): "
                "no request will fall back to it"
                for target in await fallback.unusable_targets()
            ]
    finally:
        await app.shutdown()
    try:
        listen(settings.host, settings.port).close()
        report["listen"] = f"ok ({settings.host}:{settings.port})"
    except OSError as exc:
        report["listen"] = f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}"
        ready = False
    for warning in found:
        print(f"warning: {warning}")
    print(f"settings: ok (upstream {settings.upstream_url}, policy {settings.policy})")
    for name, result in report.items():
        if name != "status":
            print(f"{name}: {result}")
    if not ready:
        print("NOT ready")
        return 1
    print(f"ready, with {len(found)} warning{'s' if len(found) > 1 else ''} above" if found else "ready")
    return 3 if found else 0


if __name__ == "__main__":
    sys.exit(main())
