"""Real LiteLLM proxies (with Postgres, seeded over-budget principals) and the real sidecar process.

Each LiteLLM version is started once per test session with ``../shared/litellm-upstream`` and stopped at
the end. Outside CI the suite skips, saying why, when that harness cannot run here (no harness, no
PostgreSQL server, no Node, or ``up`` failing, e.g. without the package registries). In CI (``CI`` set)
those are failures: the integration suite must really run there.
"""

from __future__ import annotations

import glob
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration import record

TOOL = Path(__file__).resolve().parents[3] / "shared" / "litellm-upstream" / "litellm-upstream"
VERSIONS = ("1.83.3", "1.88.6", "1.106.2", "1.109.1", "1.110.2")
SIDECAR = Path(sys.executable).parent / "litellm-budget-sidecar"
VIEWER_KEY = "sk-budget-sidecar-viewer0"
TIMINGS: dict[str, dict[str, float]] = {}
REPORT: dict[str, str] = {}  # findings worth a line in the summary


def _unavailable() -> str | None:
    if not TOOL.exists():
        return f"no LiteLLM harness at {TOOL}"
    if not shutil.which("node"):
        return "Node.js is missing (the harness needs it for its Prisma shim)"
    if not (os.environ.get("LITELLM_UPSTREAM_PG_BIN") or glob.glob("/usr/lib/postgresql/*/bin/initdb")):
        return "PostgreSQL server binaries are missing (apt-get install postgresql)"
    return None


def _cannot_run(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"integration suite must run in CI but cannot: {reason}", pytrace=False)
    pytest.skip(f"no real LiteLLM here: {reason}")


def _exports(text: str) -> dict[str, str]:
    env = {}
    for line in text.splitlines():
        if line.startswith("export "):
            name, _, value = shlex.split(line)[1].partition("=")
            env[name] = value
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Sidecar:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


@dataclass
class LiteLLM:
    version: str
    url: str
    master_key: str
    keys: dict[str, str]
    logs: Path
    env: dict[str, str] = field(default_factory=dict)  # the exports of the harness's ``up`` and ``seed``
    sidecars: dict[tuple[object, ...], Sidecar] = field(default_factory=dict)

    def harness(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run a harness command (``phantom``, ``probe``) against this instance."""
        env = {**os.environ, **self.env}
        return subprocess.run([str(TOOL), *args], capture_output=True, text=True, timeout=timeout, env=env)

    def doctor(self, key: str, *args: str, admin_key: str | None = None) -> tuple[int, str, str]:
        """``litellm-budget-sidecar doctor --key - ARGS`` (the console script, the key on stdin) against
        this LiteLLM: (exit code, stdout, stderr)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
        env.update(SIDECAR_UPSTREAM_URL=self.url, SIDECAR_ADMIN_KEY=admin_key or self.master_key)
        done = subprocess.run(
            [str(SIDECAR), "doctor", "--key", "-", *args],
            input=key + "\n",
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        return done.returncode, done.stdout, done.stderr

    def sidecar_log_text(self, url: str) -> str:
        """Everything the sidecar at ``url`` has written to stderr so far."""
        (running,) = [s for s in self.sidecars.values() if s.url == url]
        return running.log.read_text()

    def sidecar_log(self, url: str) -> list[dict[str, Any]]:
        """The JSON lines the sidecar at ``url`` has logged so far."""
        lines = self.sidecar_log_text(url).splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def sidecar(self, policy: str, admin_key: str | None = None, **settings: str) -> str:
        """URL of a sidecar process (the console script) in front of this LiteLLM, started on first use;
        ``settings`` are further ``SIDECAR_*`` variables (``budget_ttl="2"``)."""
        admin = admin_key or self.master_key
        running = self.sidecars.get((policy, admin, *sorted(settings.items())))
        if running is not None:
            return running.url
        port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
        env.update(
            SIDECAR_UPSTREAM_URL=self.url,
            SIDECAR_ADMIN_KEY=admin,
            SIDECAR_POLICY=policy,
            SIDECAR_PORT=str(port),
            SIDECAR_LOG_LEVEL="info",
        )
        env.update({f"SIDECAR_{name.upper()}": value for name, value in settings.items()})
        log = self.logs / f"sidecar-{policy}-{len(self.sidecars)}.log"
        with log.open("wb") as stderr:  # the child keeps its own descriptor
            process = subprocess.Popen([str(SIDECAR)], env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        sidecar = Sidecar(f"http://127.0.0.1:{port}", process, log)
        self.sidecars[(policy, admin, *sorted(settings.items()))] = sidecar
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(sidecar.url + "/health/liveliness", timeout=2)
                return sidecar.url
            except httpx.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"sidecar did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.1)


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(TOOL), *args], capture_output=True, text=True, timeout=timeout)


def progress(config: pytest.Config, text: str) -> None:
    """One line for a person waiting, shown whatever pytest captures (``-q``, ``-p no:...``)."""
    capture = config.pluginmanager.getplugin("capturemanager")
    if capture is None:
        print(f"integration: {text}", file=sys.stderr, flush=True)
        return
    with capture.global_and_fixture_disabled():
        print(f"integration: {text}", file=sys.stderr, flush=True)


@pytest.fixture(scope="session")
def harness_state(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A state dir of the harness's own for this session: everything it starts there - each LiteLLM, its
    fake provider and the PostgreSQL cluster they share - is stopped at the end of the session, also on a
    failure or Ctrl-C, and nothing another run started is touched. Its logs are kept when a test failed."""
    reason = _unavailable()
    if reason:
        _cannot_run(reason)
    state = Path(tempfile.mkdtemp(prefix="sidecar-it-", dir="/tmp"))
    state.chmod(0o711)  # as root, the harness runs PostgreSQL as user postgres, which must reach into it
    saved = os.environ.get("LITELLM_UPSTREAM_STATE")
    os.environ["LITELLM_UPSTREAM_STATE"] = str(state)
    try:
        yield state
    finally:
        failed = request.session.testsfailed
        stop = _run(["down", "--state", str(state), *([] if failed else ["--purge"])], timeout=300)
        if saved is None:
            os.environ.pop("LITELLM_UPSTREAM_STATE", None)
        else:
            os.environ["LITELLM_UPSTREAM_STATE"] = saved
        kept = f"; logs kept in {state}" if failed else ""
        outcome = "stopped" if stop.returncode == 0 else f"failed to stop ({stop.stderr.strip()[-300:]})"
        progress(request.config, f"PostgreSQL and every LiteLLM of this run {outcome}{kept}")


@pytest.fixture(scope="session", params=VERSIONS)
def litellm(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, harness_state: Path
) -> Iterator[LiteLLM]:
    version: str = request.param
    name = "sidecar_it_" + version.replace(".", "_")
    started = time.monotonic()
    progress(
        request.config, f"starting LiteLLM {version} with PostgreSQL (its first start installs it: 1-2 min)"
    )
    up = _run(["up", "--version", version, "--name", name, "--beyond-chat"], timeout=1200)
    if up.returncode != 0:
        _cannot_run(f"litellm-upstream up --version {version} failed: {up.stderr.strip()[-1500:]}")
    env = _exports(up.stdout)
    seeded_at = time.monotonic()
    progress(
        request.config, f"LiteLLM {version} up in {seeded_at - started:.0f} s; seeding its spent budgets"
    )
    instance: LiteLLM | None = None
    try:
        seed = _run(
            ["seed", "--url", env["LITELLM_URL"], "--master-key", env["LITELLM_MASTER_KEY"]], timeout=300
        )
        if seed.returncode != 0:
            pytest.fail(f"litellm-upstream seed failed on {version}: {seed.stderr.strip()[-1500:]}")
        keys = _exports(seed.stdout)
        instance = LiteLLM(
            version,
            env["LITELLM_URL"],
            env["LITELLM_MASTER_KEY"],
            keys,
            tmp_path_factory.mktemp(name),
            {**env, **keys},
        )
        _create_viewer(instance)
        TIMINGS[version] = {"up_s": seeded_at - started, "seed_s": time.monotonic() - seeded_at}
        progress(request.config, f"LiteLLM {version} seeded in {TIMINGS[version]['seed_s']:.0f} s; testing")
        if os.environ.get("SIDECAR_RECORD_FIXTURES"):
            record.write(version, record.record(version, instance.url, instance.master_key, keys))
        yield instance
    finally:
        for sidecar in instance.sidecars.values() if instance else ():
            sidecar.stop()
        _run(["down", "--name", name], timeout=120)
        progress(request.config, f"LiteLLM {version} stopped")


def _create_viewer(instance: LiteLLM) -> None:
    """A least-privilege admin credential: a key of a ``proxy_admin_viewer`` user (idempotent)."""
    headers = {"Authorization": f"Bearer {instance.master_key}"}
    with httpx.Client(base_url=instance.url, headers=headers, timeout=30) as admin:
        admin.post("/user/new", json={"user_id": "budget-sidecar-viewer", "user_role": "proxy_admin_viewer"})
        admin.post(
            "/key/generate",
            json={
                "user_id": "budget-sidecar-viewer",
                "key": VIEWER_KEY,
                "key_alias": "budget-sidecar-viewer",
            },
        )
        check = admin.get("/key/info", params={"key": VIEWER_KEY})
        assert check.status_code == 200, check.text


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for version, timing in TIMINGS.items():
        terminalreporter.write_line(
            f"litellm {version}: up {timing['up_s']:.1f}s, seed {timing['seed_s']:.1f}s"
        )
    for subject, finding in REPORT.items():
        terminalreporter.write_line(f"{subject}: {finding}")
