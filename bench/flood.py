"""What a flood of strangers and of spent callers costs LiteLLM through the sidecar, and the sidecar itself.

Starts the stub upstream (``bench/stub.py``, answering as LiteLLM 1.110 does) and the sidecar of this
checkout with the admin key and ``policy: free_only``; with ``--old-build PATH``, that checkout's sidecar
too (started as ``run.py`` starts builds). Then, for each build in turn, sends ``GET /v1/models`` with
``--keys`` distinct keys LiteLLM does not know (401 "Invalid proxy server token passed"), then as many
distinct spent-but-real keys (``sk-spent-*``: 422 budget error on the probe, 200 on ``/v1/models``, a team
key of a spent team on ``/key/info``), ``--concurrency`` at once over kept-alive connections.

Per build and flood, what reached the stub: requests forwarded (the callers' ``/v1/models``), budget probes
(``/cursor/v1/models``), admin look-ups by path and per second (peak over any 1 s window, and mean over the
flood); the sidecar's CPU seconds (``/proc/<pid>/stat`` utime + stime, its workers included) in total and
per request; and the answers' statuses (``+budget``: marked ``x-sidecar-budget-exceeded``).

    python bench/flood.py [--keys 10000] [--concurrency 32] [--old-build PATH] [--out PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httptools
from run import (
    CHECKOUT,
    HERE,
    MASTER,
    build_argv,
    build_env,
    describe_build,
    family,
    free_port,
    stop_all,
    wait_listening,
)

FLOODS = {"unknown": "sk-unknown-", "spent": "sk-spent-"}
_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and its descendants, from ``/proc/<pid>/stat`` (clock-tick resolution)."""
    ticks = 0
    for member in family(pid):
        fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime: the stat file's 14th and 15th fields
    return ticks / _TICKS


class _Answer:
    """httptools' callbacks for one response: its status and whether the sidecar marked it."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.marked = False
        self.done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"x-sidecar-budget-exceeded":
            self.marked = True

    def on_message_complete(self) -> None:
        self.done = True


async def _caller(port: int, keys: Iterator[str], statuses: Counter[str]) -> None:
    """Sends one request per key from ``keys`` over one kept-alive connection (a new one when closed)."""
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    for key in keys:
        if writer is None or reader is None or reader.at_eof():
            if writer is not None:
                writer.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"GET /v1/models HTTP/1.1\r\nHost: flood\r\nAuthorization: Bearer %s\r\n\r\n" % key.encode()
        )
        answer = _Answer()
        while not answer.done:
            data = await reader.read(65536)
            if not data:
                statuses["connection closed"] += 1
                break
            answer.parser.feed_data(data)
        if answer.done:
            status = str(answer.parser.get_status_code())
            statuses[status + (" +budget" if answer.marked else "")] += 1
            if not answer.parser.should_keep_alive():
                writer.close()
                writer = None
    if writer is not None:
        writer.close()


async def _flood(port: int, prefix: str, count: int, concurrency: int) -> Counter[str]:
    keys = iter([f"{prefix}{secrets.token_hex(16)}" for _ in range(count)])
    statuses: Counter[str] = Counter()
    await asyncio.gather(*(_caller(port, keys, statuses) for _ in range(concurrency)))
    return statuses


def stub_stats(port: int, reset: bool = False) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/_stub/stats" + ("?reset=1" if reset else "")
    with urllib.request.urlopen(url) as answer:
        stats: dict[str, Any] = json.load(answer)
        return stats


def peak_per_second(times: list[float]) -> int:
    """The most of ``times`` within any window of one second."""
    times, most, start = sorted(times), 0, 0
    for end, now in enumerate(times):
        while now - times[start] >= 1.0:
            start += 1
        most = max(most, end - start + 1)
    return most


def run_flood(stub: int, port: int, pid: int, prefix: str, count: int, concurrency: int) -> dict[str, Any]:
    stub_stats(stub, reset=True)
    cpu_before = cpu_seconds(pid)
    started = time.monotonic()
    statuses = asyncio.run(_flood(port, prefix, count, concurrency))
    wall = time.monotonic() - started
    time.sleep(0.5)  # look-ups still in flight reach the stub
    cpu = cpu_seconds(pid) - cpu_before
    stats = stub_stats(stub, reset=True)
    counts: dict[str, int] = stats["counts"]
    admin = {k.removeprefix("admin GET "): v for k, v in sorted(counts.items()) if k.startswith("admin ")}
    times: list[float] = stats["admin_times"]
    return {
        "requests": count,
        "wall_s": wall,
        "statuses": dict(sorted(statuses.items())),
        "forwarded": counts.get("caller GET /v1/models", 0),
        "probes": counts.get("caller GET /cursor/v1/models", 0),
        "admin": admin,
        "admin_per_s_peak": peak_per_second(times),
        "admin_per_s_mean": len(times) / wall,
        "cpu_s": cpu,
        "cpu_ms_per_request": cpu * 1000 / count,
        "stub_counts": counts,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=10_000, help="distinct keys per flood (default 10000)")
    parser.add_argument("--concurrency", type=int, default=32, help="requests at once (default 32)")
    parser.add_argument("--old-build", type=Path, help="a checkout of another commit, flooded in turn")
    parser.add_argument(
        "--out", default=str(HERE / "results-flood.json"), help="where to write the JSON results"
    )
    args = parser.parse_args()
    builds = {"new": CHECKOUT} if args.old_build is None else {"old": args.old_build, "new": CHECKOUT}
    described = {name: describe_build(root) for name, root in builds.items()}
    for name, about in described.items():
        print(f"flood: {name} = {about['commit']} ({about['imports']})")

    work = Path(tempfile.mkdtemp(prefix="sidecar-flood-"))
    processes: list[subprocess.Popen[bytes]] = []
    results: dict[str, dict[str, Any]] = {flood: {} for flood in FLOODS}
    try:
        stub = free_port()
        with (work / "stub.log").open("wb") as log:
            processes.append(subprocess.Popen([sys.executable, str(HERE / "stub.py"), str(stub)], stdout=log))
        wait_listening(stub, processes[-1], "stub")
        sidecars: dict[str, tuple[int, int]] = {}
        for name, root in builds.items():
            port = free_port()
            env = build_env(
                root,
                upstream_url=f"http://127.0.0.1:{stub}",
                admin_key=MASTER,
                policy="free_only",
                port=str(port),
                log_level="warning",
                workers="1",
            )
            with (work / f"{name}.log").open("wb") as log:
                processes.append(subprocess.Popen(build_argv(), env=env, cwd=root, stdout=log, stderr=log))
            wait_listening(port, processes[-1], name)
            sidecars[name] = (port, processes[-1].pid)
        time.sleep(1)
        for flood, prefix in FLOODS.items():
            for name, (port, pid) in sidecars.items():
                result = run_flood(stub, port, pid, f"{prefix}{name}-", args.keys, args.concurrency)
                results[flood][name] = result
                print(f"{flood} keys -> {name}: {json.dumps(result)}", flush=True)
    finally:
        stop_all(processes)

    report = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "settings": {"keys": args.keys, "concurrency": args.concurrency, "policy": "free_only"},
        "builds": described,
        "floods": results,
    }
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    _print_table(report)
    print(f"\nJSON results: {args.out}; logs: {work}")
    return 0


def _print_table(report: dict[str, Any]) -> None:
    builds = report["builds"]
    print("\n" + ", ".join(f"{name} = {about['commit']}" for name, about in builds.items()))
    print(
        f"\n{report['settings']['keys']:,} distinct keys per flood, GET /v1/models, "
        f"{report['settings']['concurrency']} at once, policy free_only\n"
    )
    print(
        "| keys | build | answers | forwarded | probes | admin look-ups by path | admin/s peak / mean "
        "| sidecar CPU s (ms/request) | wall s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for flood, by_build in report["floods"].items():
        for name, r in by_build.items():
            answers = ", ".join(f"{status}: {n:,}" for status, n in r["statuses"].items())
            admin = ", ".join(f"{path} {n:,}" for path, n in r["admin"].items()) or "none"
            print(
                f"| {flood} | {name} | {answers} | {r['forwarded']:,} | {r['probes']:,} | {admin} "
                f"| {r['admin_per_s_peak']:,} / {r['admin_per_s_mean']:,.1f} "
                f"| {r['cpu_s']:.2f} ({r['cpu_ms_per_request']:.3f}) | {r['wall_s']:.1f} |"
            )


if __name__ == "__main__":
    sys.exit(main())
