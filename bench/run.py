"""The sidecar's cost next to nginx and a direct connection, measured side by side in one run.

Starts the stub upstream (``bench/stub.py``), nginx as a reverse proxy to it (when installed: keepalive
upstream, ``proxy_buffering off``) and the sidecar of this checkout (``python -m sidecar`` with this
checkout first on ``PYTHONPATH``, ``--workers`` of them, default one) and, with nginx, the zero-overhead
split (``deploy/nginx``: discovery to the sidecar, everything else straight to the stub), then runs ``wrk``
against each in interleaved rounds: GET ``/v1/models`` (healthy key, warm caches), POST chat JSON and
streamed chat (50 SSE chunks), at 1 and 32 connections. Reports requests/s, p50/p99 latency, the
sidecar's CPU per request (from ``/proc/<pid>/task/*/schedstat``, its workers included), time to the first
SSE chunk, the rescue path with warm caches, and the sidecar's idle RSS (all its processes). Prints a
table and writes JSON.

``--old-build PATH`` (a checkout of another commit, e.g. ``git worktree add ../old <commit>``; give it
twice for two older builds, ``old1`` and ``old2``) runs that build's sidecar beside this one on the same
stub, all taking turns with nginx and the stub in every round (no split), and prints one table of the
builds against nginx: requests/s, each build's ratio to nginx and new/old (median, and new/old's range
over the rounds: the noise), CPU per request.

    python bench/run.py [--duration 4] [--rounds 3] [--workers 1] [--old-build PATH ...] [--out ...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CHECKOUT = HERE.parent
SIDECAR = Path(sys.executable).parent / "litellm-budget-sidecar"
HEALTHY = "Bearer sk-bench-healthy"
BROKE = "Bearer sk-bench-broke"
MASTER = "sk-bench-master"
CHAT = '{"model":"model-00","messages":[{"role":"user","content":"hi"}]}'
STREAM = '{"model":"model-00","messages":[{"role":"user","content":"hi"}],"stream":true}'
SCENARIOS = {
    "GET /v1/models": ("GET", "/v1/models", None, HEALTHY),
    "POST chat JSON": ("POST", "/v1/chat/completions", CHAT, HEALTHY),
    "POST chat SSE": ("POST", "/v1/chat/completions", STREAM, HEALTHY),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_listening(port: int, process: subprocess.Popen[bytes], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"bench: {what} exited at start")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"bench: {what} did not start")


def stop_all(processes: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM to every process started, last first; a kill for any that does not end within 10 s."""
    for process in reversed(processes):
        process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def family(pid: int) -> list[int]:
    """``pid`` and its descendants (the sidecar's workers)."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                queue += [int(child) for child in task.read_text().split()]
    return found


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of ``pid`` and its descendants, in seconds (nanosecond resolution)."""
    total = 0
    for member in family(pid):
        for task in Path(f"/proc/{member}/task").glob("*"):
            with contextlib.suppress(OSError, ValueError, IndexError):  # a thread that just ended
                total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def rss_mb(pid: int) -> float:
    total = 0.0
    for member in family(pid):
        for line in Path(f"/proc/{member}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) / 1024
    return total


def wrk_script(directory: Path, method: str, body: str | None, auth: str) -> Path:
    lines = [f'wrk.method = "{method}"', f'wrk.headers["Authorization"] = "{auth}"']
    if body is not None:
        lines += [f"wrk.body = '{body}'", 'wrk.headers["Content-Type"] = "application/json"']
    path = directory / f"{method}-{abs(hash((body, auth)))}.lua"
    path.write_text("\n".join(lines) + "\n")
    return path


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"bench: cannot read wrk's latency {text!r}")
    number, unit = match.groups()
    return float(number) * (_UNITS[unit] if unit != "m" else 60e3)


def run_wrk(url: str, script: Path, connections: int, duration: float) -> dict[str, float]:
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(duration))}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if "Latency Distribution" not in out:
        raise RuntimeError(f"bench: wrk printed no latency distribution:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": rps,
        "requests": requests,
        "p50_ms": p50,
        "p99_ms": p99,
        "non_2xx": int(errors.group(1)) if errors else 0,
    }


def first_chunk_ms(port: int, samples: int) -> list[float]:
    """Time from sending a streamed chat request to the first SSE chunk, over one keep-alive connection."""
    body = STREAM.encode()
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\nAuthorization: "
        + HEALTHY.encode()
        + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
        + body
    )
    times = []
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(samples):
            started = time.perf_counter()
            sock.sendall(request)
            received = b""
            while b"data: " not in received:
                received += sock.recv(65536)
            times.append((time.perf_counter() - started) * 1000)
            while not received.endswith(b"0\r\n\r\n"):
                received += sock.recv(65536)
    return times


@dataclass
class Target:
    name: str
    port: int
    pid: int | None = None
    results: dict[str, list[dict[str, float]]] = field(default_factory=dict)


def build_env(root: Path, **settings: str) -> dict[str, str]:
    """The environment a build's sidecar runs in: its checkout first on the path, ``SIDECAR_*`` as given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    env["PYTHONPATH"] = str(root)
    env.update({f"SIDECAR_{name.upper()}": value for name, value in settings.items()})
    return env


def build_argv() -> list[str]:
    """How a build's sidecar is started (with ``cwd`` and ``PYTHONPATH`` its checkout, ``build_env``):
    ``-m`` puts the working directory first on ``sys.path``, ahead of any installed (or editable) copy."""
    return [sys.executable, "-m", "sidecar"]


def describe_build(root: Path) -> dict[str, str]:
    """Which code a build's process imports (checked, not assumed) and which commit that checkout is at."""
    module = subprocess.run(
        [sys.executable, "-c", "import sidecar; print(sidecar.__file__)"],
        cwd=root,
        env=build_env(root),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(module).resolve().is_relative_to(root.resolve()):
        sys.exit(f"bench: the build in {root} imports {module}, not its own code")

    def git(*argv: str) -> str:
        return subprocess.run(["git", "-C", str(root), *argv], capture_output=True, text=True).stdout.strip()

    dirty = " + uncommitted changes" if git("status", "--porcelain", "--", "sidecar") else ""
    commit = (git("rev-parse", "--short", "HEAD") or "?") + dirty
    return {"root": str(root), "imports": module, "commit": commit}


def nginx_around(
    directory: Path, servers: str, connections: int = 4096, open_files: int | None = None
) -> Path:
    """An nginx.conf of its own in ``directory`` (pid, logs, temp paths there) around ``servers``; one worker
    of ``connections``, its descriptor limit raised to ``open_files`` when given."""
    config = directory / "nginx.conf"
    rlimit = f"worker_rlimit_nofile {open_files};" if open_files else ""
    config.write_text(f"""
worker_processes 1;
{rlimit}
daemon off;
pid {directory}/nginx.pid;
error_log {directory}/nginx-error.log warn;
events {{ worker_connections {connections}; }}
http {{
    access_log off;
    client_body_temp_path {directory}/body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
{servers}
}}
""")
    return config


def nginx_config(directory: Path, port: int, stub_port: int) -> Path:
    return nginx_around(
        directory,
        f"""    upstream stub {{ server 127.0.0.1:{stub_port}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://stub;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
        }}
    }}""",
    )


def split_config(directory: Path, port: int, stub_port: int, sidecar_port: int) -> Path:
    """nginx with the shipped ``deploy/nginx`` file: discovery to the sidecar, the rest to the stub."""
    shipped = (HERE.parent / "deploy" / "nginx" / "litellm-budget-sidecar.conf").read_text()
    shipped = shipped.replace("server 127.0.0.1:4000;", f"server 127.0.0.1:{stub_port};", 1)
    shipped = shipped.replace("server 127.0.0.1:4001;", f"server 127.0.0.1:{sidecar_port};", 1)
    shipped = shipped.replace("listen 8080;", f"listen 127.0.0.1:{port};", 1)
    split = directory / "split"
    split.mkdir()
    (split / "split.conf").write_text(shipped)
    return nginx_around(split, f"    include {split}/split.conf;")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per wrk run (default 4)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per cell (default 3)")
    parser.add_argument("--workers", type=int, default=1, help="the sidecar's worker processes (default 1)")
    parser.add_argument(
        "--fallback",
        help='the sidecar\'s fallback setting, as JSON (e.g. \'{"*": "m"}\': every chat may fall back)',
    )
    parser.add_argument(
        "--old-build",
        type=Path,
        action="append",
        help="a checkout of another commit, run beside this one in the same rounds (repeatable)",
    )
    parser.add_argument(
        "--only",
        choices=["models", "chat", "sse"],
        action="append",
        help="measure only this scenario (repeatable; default: all three, the rescue and the first chunk)",
    )
    parser.add_argument(
        "--connections", default="1,32", help="comma-separated wrk connection counts (default 1,32)"
    )
    parser.add_argument("--out", default=str(HERE / "results.json"), help="where to write the JSON results")
    args = parser.parse_args()
    chosen = {"models": "GET /v1/models", "chat": "POST chat JSON", "sse": "POST chat SSE"}
    scenarios = {name: SCENARIOS[chosen[key]] for key in args.only or chosen for name in [chosen[key]]}
    connection_counts = [int(c) for c in args.connections.split(",")]
    olds = args.old_build or []
    builds = {("old" if len(olds) == 1 else f"old{i}"): root for i, root in enumerate(olds, 1)}
    builds = {**builds, "new": CHECKOUT} if builds else {"sidecar": CHECKOUT}
    described = {name: describe_build(root) for name, root in builds.items()}
    for name, about in described.items():
        print(f"bench: {name} = {about['commit']} ({about['imports']})")
    if not shutil.which("wrk"):
        sys.exit("bench: needs wrk (apt-get install wrk)")

    work = Path(tempfile.mkdtemp(prefix="sidecar-bench-"))
    processes: list[subprocess.Popen[bytes]] = []

    def start(
        argv: list[str], port: int, what: str, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> int:
        with (work / f"{what}.log").open("wb") as log:
            process = subprocess.Popen(argv, stdout=log, stderr=log, env=env, cwd=cwd)
        processes.append(process)
        wait_listening(port, process, what)
        return process.pid

    try:
        stub = Target("direct", free_port())
        start([sys.executable, str(HERE / "stub.py"), str(stub.port)], stub.port, "stub")
        targets = [stub]
        if shutil.which("nginx"):
            nginx = Target("nginx", free_port())
            config = nginx_config(work, nginx.port, stub.port)
            nginx.pid = start(["nginx", "-c", str(config), "-p", str(work)], nginx.port, "nginx")
            targets.append(nginx)
        else:
            print("bench: nginx is not installed (apt-get install nginx-light): measuring without it")
        sidecars = []
        for name, root in builds.items():
            sidecar = Target(name, free_port())
            env = build_env(
                root,
                upstream_url=f"http://127.0.0.1:{stub.port}",
                admin_key=MASTER,
                port=str(sidecar.port),
                log_level="warning",
                workers=str(args.workers),
                **({"fallback": args.fallback} if args.fallback else {}),
            )
            sidecar.pid = start(build_argv(), sidecar.port, name, env, cwd=root)
            sidecars.append(sidecar)
        targets += sidecars
        if shutil.which("nginx") and args.old_build is None:
            split = Target("split", free_port())
            config = split_config(work, split.port, stub.port, sidecar.port)
            split.pid = start(["nginx", "-c", str(config), "-p", str(work / "split")], split.port, "split")
            targets.append(split)
        time.sleep(1 + args.workers)  # every worker listening
        idle_rss = {s.name: rss_mb(s.pid) for s in sidecars if s.pid}
        for method, path, body, auth in SCENARIOS.values():  # warm caches and pools
            for s in sidecars:
                run_wrk(f"http://127.0.0.1:{s.port}{path}", wrk_script(work, method, body, auth), 2, 1)

        cells: list[dict[str, object]] = []
        for scenario, (method, path, body, auth) in scenarios.items():
            script = wrk_script(work, method, body, auth)
            for connections in connection_counts:
                runs: dict[str, list[dict[str, float]]] = {t.name: [] for t in targets}
                for round_ in range(args.rounds):
                    order = targets[round_ % len(targets) :] + targets[: round_ % len(targets)]
                    for target in order:
                        runs[target.name].append(measure(target, path, script, connections, args.duration))
                cells.append(
                    {
                        "scenario": scenario,
                        "connections": connections,
                        "runs": runs,
                        "median": {name: _median(rs) for name, rs in runs.items()},
                    }
                )
                _print_cell(cells[-1])

        rescue: dict[str, Any] | None = None
        ttfb: dict[str, list[float]] = {}
        if args.only is None:
            rescue_script = wrk_script(work, "GET", None, BROKE)
            for s in sidecars:
                run_wrk(f"http://127.0.0.1:{s.port}/v1/models", rescue_script, 1, 1)  # warm the caches
            rescue_runs: dict[str, list[dict[str, float]]] = {t.name: [] for t in (stub, *sidecars)}
            for _ in range(args.rounds):
                for target in (stub, *sidecars):
                    result = measure(target, "/v1/models", rescue_script, 1, args.duration)
                    rescue_runs[target.name].append(result)
            rescue = {"runs": rescue_runs, "median": {n: _median(r) for n, r in rescue_runs.items()}}
            ttfb = {t.name: [] for t in targets}
            for _ in range(5):
                for target in targets:
                    ttfb[target.name] += first_chunk_ms(target.port, 40)
        loaded_rss = {s.name: rss_mb(s.pid) for s in sidecars if s.pid}
    finally:
        stop_all(processes)

    report = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "settings": {
            "duration_s": args.duration,
            "rounds": args.rounds,
            "workers": args.workers,
            "fallback": args.fallback,
        },
        "builds": described,
        "cells": cells,
        "rescue": rescue,
        "first_sse_chunk_ms_p50": {name: statistics.median(v) for name, v in ttfb.items()},
        "sidecar_rss_mb": {
            name: {"idle": idle_rss[name], "after_load": loaded_rss[name]} for name in idle_rss
        },
    }
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    if args.old_build is None:
        _print_summary(report)
    else:
        _print_builds(report)
    print(f"\nJSON results: {args.out}")
    return 0


def measure(target: Target, path: str, script: Path, connections: int, duration: float) -> dict[str, float]:
    """One wrk run against ``target``; for a sidecar, with the CPU it spent per request meanwhile."""
    cpu_before = cpu_seconds(target.pid) if target.pid and target.name not in ("nginx", "split") else None
    result = run_wrk(f"http://127.0.0.1:{target.port}{path}", script, connections, duration)
    if cpu_before is not None and target.pid:
        spent = cpu_seconds(target.pid) - cpu_before
        result["cpu_ms_per_request"] = spent * 1000 / max(result["requests"], 1)
    return result


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def _print_cell(cell: dict[str, object]) -> None:
    median = cell["median"]
    assert isinstance(median, dict)
    parts = [
        f"{name} {m['rps']:.0f} req/s p50 {m['p50_ms']:.2f} ms p99 {m['p99_ms']:.2f} ms"
        for name, m in median.items()
    ]
    print(f"{cell['scenario']:<16} c={cell['connections']:<3} " + " | ".join(parts), flush=True)


def _print_summary(report: dict[str, object]) -> None:
    cells = report["cells"]
    assert isinstance(cells, list)
    print(
        "\n| scenario | conns | direct req/s | nginx req/s | sidecar req/s | sidecar/nginx | sidecar/direct "
        "| p50 direct / nginx / sidecar (ms) | p99 sidecar (ms) | sidecar CPU/req (ms) | split req/s "
        "| split/nginx |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for cell in cells:
        m = cell["median"]
        nginx = m.get("nginx")
        direct, side = m["direct"], m["sidecar"]
        ratio_nginx = f"{side['rps'] / nginx['rps']:.3f}" if nginx else "-"
        nginx_rps = f"{nginx['rps']:.0f}" if nginx else "-"
        nginx_p50 = f"{nginx['p50_ms']:.2f}" if nginx else "-"
        print(
            f"| {cell['scenario']} | {cell['connections']} | {direct['rps']:.0f} | {nginx_rps} "
            f"| {side['rps']:.0f} "
            f"| {ratio_nginx} | {side['rps'] / direct['rps']:.3f} | {direct['p50_ms']:.2f} / {nginx_p50} / "
            f"{side['p50_ms']:.2f} | {side['p99_ms']:.2f} | {side['cpu_ms_per_request']:.3f} "
            + (
                f"| {m['split']['rps']:.0f} | {m['split']['rps'] / nginx['rps']:.3f} |"
                if nginx
                else "| - | - |"
            )
        )
    if report["rescue"] is not None:  # a full run (no --only)
        healthy = next(c for c in cells if c["scenario"] == "GET /v1/models" and c["connections"] == 1)[
            "median"
        ]
        print(
            "\nhealthy discovery (caller within budget, warm caches, 1 conn): "
            f"direct p50 {healthy['direct']['p50_ms']:.2f} ms, "
            f"sidecar p50 {healthy['sidecar']['p50_ms']:.2f} ms "
            f"(+{healthy['sidecar']['p50_ms'] - healthy['direct']['p50_ms']:.2f} ms)"
        )
        rescue = report["rescue"]["median"]  # type: ignore[index]
        print(
            "\nrescue (over-budget key, warm caches, 1 conn): "
            f"direct error p50 {rescue['direct']['p50_ms']:.2f} ms, "
            f"sidecar rescue p50 {rescue['sidecar']['p50_ms']:.2f} ms "
            f"(+{rescue['sidecar']['p50_ms'] - rescue['direct']['p50_ms']:.2f} ms), "
            f"sidecar CPU {rescue['sidecar']['cpu_ms_per_request']:.3f} ms/req"
        )
        ttfb = report["first_sse_chunk_ms_p50"]
        print("first SSE chunk p50: " + ", ".join(f"{n} {v:.2f} ms" for n, v in ttfb.items()))  # type: ignore[union-attr]
    rss = report["sidecar_rss_mb"]["sidecar"]  # type: ignore[index]
    print(f"sidecar RSS: idle {rss['idle']:.1f} MB, after load {rss['after_load']:.1f} MB")


def _print_builds(report: dict[str, Any]) -> None:
    """One table: each cell's medians for nginx and every build, each build's ratio to nginx, new against
    each old build with its range over the rounds (each round's new against the same round's old: the
    noise the ratio carries), CPU per request."""
    builds = report["builds"]
    olds = [name for name in builds if name != "new"]
    print("\n" + ", ".join(f"{name} = {about['commit']}" for name, about in builds.items()))
    names = [*olds, "new"]
    columns = (
        ["scenario", "conns", "nginx req/s"]
        + [f"{n} req/s" for n in names]
        + [f"{n}/nginx" for n in names]
        + [f"new/{o} (per round)" for o in olds]
        + ["CPU/req " + " / ".join(names) + " (ms)"]
    )
    print("\n| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for cell in report["cells"]:
        m, runs = cell["median"], cell["runs"]
        nginx = m.get("nginx")
        row = [str(cell["scenario"]), str(cell["connections"]), f"{nginx['rps']:.0f}" if nginx else "-"]
        row += [f"{m[n]['rps']:.0f}" for n in names]
        row += [f"{m[n]['rps'] / nginx['rps']:.3f}" if nginx else "-" for n in names]
        for o in olds:
            per_round = sorted(n["rps"] / r["rps"] for r, n in zip(runs[o], runs["new"], strict=True))
            row.append(f"{m['new']['rps'] / m[o]['rps']:.3f} ({per_round[0]:.2f}-{per_round[-1]:.2f})")
        row.append(" / ".join(f"{m[n]['cpu_ms_per_request']:.3f}" for n in names))
        print("| " + " | ".join(row) + " |")
    if report["rescue"] is not None:  # a full run (no --only)
        rescue = report["rescue"]["median"]
        print(
            "\nrescue (over-budget key, warm caches, 1 conn), p50 / CPU per request: "
            f"direct {rescue['direct']['p50_ms']:.2f} ms; "
            + "; ".join(
                f"{name} {rescue[name]['p50_ms']:.2f} ms / {rescue[name]['cpu_ms_per_request']:.3f} ms"
                for name in names
            )
        )
        ttfb = report["first_sse_chunk_ms_p50"]
        print("first SSE chunk p50: " + ", ".join(f"{n} {v:.2f} ms" for n, v in ttfb.items()))
    rss = report["sidecar_rss_mb"]
    for name, r in rss.items():
        print(f"{name} RSS: idle {r['idle']:.1f} MB, after load {r['after_load']:.1f} MB")


if __name__ == "__main__":
    sys.exit(main())
