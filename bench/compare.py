"""Two builds of the sidecar side by side on discovery, interleaved, against the same stub upstream.

For a change on the discovery path, where ``run.py``'s absolute figures drift with the machine: both
sidecars run at once and take turns, so noise hits them alike. Scenarios: a caller within budget
(``healthy``: LiteLLM's list passed on, warm caches) and an over-budget one (``rescue``): sequential requests
on one kept-alive connection, in short alternating turns, medians of the turns.

    python bench/compare.py --old /path/to/old/.venv/bin/litellm-budget-sidecar [--new ...] [--rounds 4]

An old build: ``git worktree add /tmp/old <commit> && python3 -m venv /tmp/old/.venv &&
/tmp/old/.venv/bin/pip install -e /tmp/old``.
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import subprocess
import sys
import time

from run import (
    BROKE,
    HEALTHY,
    HERE,
    MASTER,
    SIDECAR,
    cpu_seconds,
    free_port,
    wait_listening,
)


def _burst(conn: http.client.HTTPConnection, auth: str, count: int) -> float:
    """``count`` sequential ``GET /v1/models`` on one kept-alive connection: mean wall time in ms."""
    started = time.perf_counter()
    for _ in range(count):
        conn.request("GET", "/v1/models", headers={"Authorization": auth})
        conn.getresponse().read()
    return (time.perf_counter() - started) * 1000 / count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True, help="the other build's litellm-budget-sidecar")
    parser.add_argument("--new", default=str(SIDECAR), help="default: this checkout's")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--requests", type=int, default=300, help="requests per build per round")
    args = parser.parse_args()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        stub = free_port()
        processes.append(subprocess.Popen([sys.executable, str(HERE / "stub.py"), str(stub)]))
        wait_listening(stub, processes[-1], "stub")
        builds: dict[str, tuple[int, int]] = {}
        for name, executable in (("old", args.old), ("new", args.new)):
            port = free_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
            env.update(
                SIDECAR_UPSTREAM_URL=f"http://127.0.0.1:{stub}",
                SIDECAR_ADMIN_KEY=MASTER,
                SIDECAR_PORT=str(port),
                SIDECAR_LOG_LEVEL="warning",
            )
            processes.append(subprocess.Popen([executable], env=env))
            wait_listening(port, processes[-1], name)
            builds[name] = (port, processes[-1].pid)
        time.sleep(1)
        print("| scenario | direct | old: wall / CPU per request | new: wall / CPU per request |")
        print("|---|---|---|---|")
        for scenario, auth in (("healthy", HEALTHY), ("rescue", BROKE)):
            ports = {"direct": (stub, None), **builds}
            conns = {name: http.client.HTTPConnection("127.0.0.1", port) for name, (port, _) in ports.items()}
            for conn in conns.values():  # warm the caches and the connections
                _burst(conn, auth, 200)
            wall: dict[str, list[float]] = {name: [] for name in ports}
            cpu: dict[str, list[float]] = {name: [] for name in builds}
            for _ in range(args.rounds):  # short turns, so the machine's noise hits every build alike
                for name, (_, pid) in ports.items():
                    before = cpu_seconds(pid) if pid else 0.0
                    wall[name].append(_burst(conns[name], auth, args.requests))
                    if pid:
                        cpu[name].append((cpu_seconds(pid) - before) * 1000 / args.requests)
            for conn in conns.values():
                conn.close()
            cells = [
                f"{statistics.median(wall[name]):.3f} / {statistics.median(cpu[name]):.3f} ms"
                for name in builds
            ]
            print(f"| {scenario} | {statistics.median(wall['direct']):.3f} ms | " + " | ".join(cells) + " |")
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
