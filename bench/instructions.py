"""Instructions per request, by build: the one cost figure a busy machine does not blur.

Wall-clock and CPU time per request move by 10-40 % between runs on a shared machine (other work, CPU
frequency, caches), enough to hide a regression of a few per cent or invent one. The number of
user-space instructions the sidecar executes per request does not: run under valgrind's callgrind, with
instrumentation switched on only while a fixed number of requests is served, it repeats to within 0.1 %.
For each build and scenario this starts the stub upstream (``bench/stub.py``) and the build's sidecar
(one worker, under ``valgrind --tool=callgrind --instr-atstart=no``), warms it with 200 requests, then
counts the instructions of ``--requests`` more over one keep-alive connection:

- ``models``: ``GET /v1/models`` for a caller within budget, warm caches (healthy discovery);
- ``chat``: ``POST /v1/chat/completions``, JSON (the pass-through).

What it leaves out: the kernel's work (system calls are the same for every build: see ``bench/run.py``
for time, with nginx beside it), and it counts more than a CPU spends on SHA-256 (valgrind hides the
CPU's SHA instructions from OpenSSL), so read it as "Python work per request".

    python bench/instructions.py --build b3e551b=PATH --build now=. [--requests 500] [--only models]
"""

from __future__ import annotations

import argparse
import http.client
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from run import HEALTHY, MASTER, build_argv, build_env, describe_build, free_port, stop_all, wait_listening

HERE = Path(__file__).resolve().parent
CHAT = b'{"model":"model-00","messages":[{"role":"user","content":"hi"}]}'
SCENARIOS = ("models", "chat")


def serve(port: int, scenario: str, requests: int) -> None:
    """``requests`` requests of ``scenario``, one after another on one connection, each answered 200."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        for _ in range(requests):
            if scenario == "models":
                connection.request("GET", "/v1/models", headers={"Authorization": HEALTHY})
            else:
                headers = {"Authorization": HEALTHY, "Content-Type": "application/json"}
                connection.request("POST", "/v1/chat/completions", body=CHAT, headers=headers)
            answer = connection.getresponse()
            answer.read()
            if answer.status != 200:
                sys.exit(f"bench: {scenario} answered {answer.status}")
    finally:
        connection.close()


def count(root: Path, scenario: str, requests: int, work: Path) -> int:
    """Instructions per request for one build and scenario."""
    processes: list[subprocess.Popen[bytes]] = []
    out = work / f"{root.name}-{scenario}"
    try:
        stub_port, port = free_port(), free_port()
        with (work / "stub.log").open("ab") as log:
            argv = [sys.executable, str(HERE / "stub.py"), str(stub_port)]
            stub = subprocess.Popen(argv, stdout=log, stderr=log)
        processes.append(stub)
        wait_listening(stub_port, stub, "the stub")
        env = build_env(
            root,
            upstream_url=f"http://127.0.0.1:{stub_port}",
            admin_key=MASTER,
            port=str(port),
            log_level="warning",
            workers="1",
        )
        valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}.%p"]
        with (work / f"{root.name}-{scenario}.log").open("wb") as log:
            sidecar = subprocess.Popen([*valgrind, *build_argv()], stdout=log, stderr=log, env=env, cwd=root)
        processes.append(sidecar)
        wait_listening(port, sidecar, f"the sidecar of {root}", timeout=300)
        serve(port, scenario, 200)  # warm: caches filled, pool connected, code paths taken once

        def control(*argv: str) -> None:
            subprocess.run(["callgrind_control", *argv, str(sidecar.pid)], check=True, capture_output=True)

        control("--instr=on")
        serve(port, scenario, requests)
        control("--instr=off")
        control("--dump")
    finally:
        stop_all(processes)
    total = 0
    for dump in work.glob(f"{out.name}.*"):  # the dump asked for, and the empty one made at exit
        counts = [
            int(line.split()[1])
            for line in dump.read_text(errors="replace").splitlines()
            if line.startswith(("summary:", "totals:"))
        ]
        total += max(counts, default=0)
    if total == 0:
        sys.exit(f"bench: no instructions counted for {root} ({scenario}); see {work}")
    return total // requests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--build", action="append", required=True, help="NAME=PATH: a sidecar tree (repeatable)"
    )
    parser.add_argument("--requests", type=int, default=500, help="requests counted per cell (default 500)")
    parser.add_argument("--only", choices=SCENARIOS, action="append", help="one scenario (repeatable)")
    args = parser.parse_args()
    for tool in ("valgrind", "callgrind_control"):
        if not shutil.which(tool):
            sys.exit(f"bench: needs {tool} (apt-get install valgrind)")
    builds = {name: Path(path).resolve() for name, path in (b.split("=", 1) for b in args.build)}
    for name, root in builds.items():
        print(f"bench: {name} = {describe_build(root)['commit']} ({root})", flush=True)
    scenarios = args.only or list(SCENARIOS)
    work = Path(tempfile.mkdtemp(prefix="sidecar-instructions-"))
    table = {
        scenario: {name: count(root, scenario, args.requests, work) for name, root in builds.items()}
        for scenario in scenarios
    }
    first = next(iter(builds))
    columns = " | ".join(f"{name} (instructions/request)" for name in builds)
    print(f"\n| scenario | {columns} | each / {first} |")
    print("|---|" + "---|" * (len(builds) + 1))
    for scenario, row in table.items():
        ratios = " / ".join(f"{row[n] / row[first]:.3f}" for n in builds)
        print(f"| {scenario} | " + " | ".join(f"{row[n]:,}" for n in builds) + f" | {ratios} |")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
