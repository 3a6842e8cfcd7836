"""Open streams: what N concurrent streamed chats cost the sidecar and nginx in memory and descriptors, and
how fast ``/healthz`` answers meanwhile.

An LLM gateway's load is open streams, not requests per second: a chat a user watches scroll holds its
connections for tens of seconds while a token arrives now and then. For each target this starts, on
loopback only:

- a stand-in upstream answering ``POST /v1/chat/completions`` with ``"stream": true`` as LiteLLM does
  (200, ``text/event-stream``, chunked, one ``data: {...chat.completion.chunk...}`` event a second for
  ``--seconds``, then ``data: [DONE]``);
- the proxy in front of it: the sidecar (one worker; ``bench/traced_sidecar.py``, with ``PYTHONPATH`` set
  to each ``--build``) or nginx (one worker, ``worker_rlimit_nofile``, ``proxy_buffering off``, keepalive
  upstream);
- a client process (asyncio raw sockets, a protocol object per stream) that opens N streams at once (at
  most ``CONNECTING`` connects in flight), reads each to its end and checks it is whole: status 200, the
  event-stream type, every event in order, ``[DONE]`` last, the chunked framing closed.

Meanwhile this process asks ``/healthz`` every 100 ms over one keep-alive connection (its latency shows a
busy event loop) and samples the proxy's RSS and open descriptors from ``/proc``. The plateau is the
time between every stream being open (headers received) and the first one ending. Per target it reports N,
whole/N, RSS before and at the plateau, RSS per stream, descriptors at the plateau, ``/healthz``
p50/p99/max. Targets run one after another, each with a fresh upstream, in interleaved order over
``--rounds``. Everything started is stopped in a ``finally``; every wait is bounded.

    python bench/streams.py [--streams 2000,10000] [--seconds 15] [--rounds 1]
        [--build sidecar=/path/to/tree ...] [--no-nginx] [--soft-limit 1024] [--trace 2000]
        [--out bench/streams.json]

``--trace N`` runs each sidecar build once more at N streams with ``tracemalloc`` (1 frame) and prints the
allocation sites that grew between start and plateau, in bytes per stream.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from run import family, free_port, nginx_around

HERE = Path(__file__).resolve().parent
CONNECTING = 500  # connects in flight at once (the listen backlogs are 2048 and up)
FD_LIMIT = 1 << 17
MODEL = "gpt-4o-mini"
BODY = json.dumps(
    {"model": MODEL, "messages": [{"role": "user", "content": "Tell me a story"}], "stream": True}
).encode()
REQUEST = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer sk-bench-healthy\r\n"
    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
)


# --- the stand-in upstream ------------------------------------------------------------------------------
# LiteLLM's answer to a streamed chat: uvicorn's head with LiteLLM's own headers, then chunked SSE.
SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ndate: Sun, 22 Nov 2026 10:00:00 GMT\r\nserver: uvicorn\r\n"
    b"content-type: text/event-stream; charset=utf-8\r\ntransfer-encoding: chunked\r\n"
    b"x-litellm-call-id: 3f2b9c1e-8d4a-4f7e-9b6c-2a1d5e8f7c30\r\nx-litellm-model-id: 7d9c1f3a2b\r\n"
    b"x-litellm-model-api-base: https://api.openai.com\r\nx-litellm-version: 1.74.0\r\n"
    b"x-litellm-key-spend: 0.0012\r\nx-litellm-response-cost: 0.0\r\nllm_provider-x-request-id: req_8c1\r\n"
    b"\r\n"
)


def _event(index: int, last: bool) -> bytes:
    chunk = {
        "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
        "created": 1795300000,
        "model": MODEL,
        "object": "chat.completion.chunk",
        "system_fingerprint": "fp_44709d6fcb",
        "choices": [
            {
                "index": 0,
                "delta": {"content": f"tok{index} "} if not last else {},
                "finish_reason": "stop" if last else None,
                "logprobs": None,
            }
        ],
    }
    data = b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


DONE = b"data: [DONE]\n\n"
DONE_FRAME = b"%x\r\n%s\r\n0\r\n\r\n" % (len(DONE), DONE)
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
ALIVE = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


def serve_stub(port: int, seconds: int) -> None:
    """The upstream: one chunk now and one a second after it, ``seconds`` of them, then ``[DONE]``."""
    import httptools
    import uvloop

    frames = [_event(i, i == seconds - 1) for i in range(seconds)]

    class Stub(asyncio.Protocol):
        def __init__(self) -> None:
            self.parser = httptools.HttpRequestParser(self)
            self.url = b""
            self.body = b""
            self.transport: asyncio.Transport | None = None
            self.timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport  # type: ignore[assignment]

        def connection_lost(self, exc: Exception | None) -> None:
            if self.timer is not None:
                self.timer.cancel()

        def data_received(self, data: bytes) -> None:
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError:
                assert self.transport is not None
                self.transport.close()

        def on_message_begin(self) -> None:
            self.url = self.body = b""

        def on_url(self, url: bytes) -> None:
            self.url += url

        def on_body(self, body: bytes) -> None:
            self.body += body

        def on_message_complete(self) -> None:
            assert self.transport is not None
            if self.url == b"/v1/chat/completions" and b'"stream": true' in self.body:
                self.transport.write(SSE_HEAD)
                self._tick(0)
            elif self.parser.get_method() == b"GET":
                self.transport.write(ALIVE)  # the sidecar's readiness probe, and anything else
            else:
                self.transport.write(NOT_FOUND)

        def _tick(self, index: int) -> None:
            assert self.transport is not None
            if self.transport.is_closing():
                return
            self.transport.write(frames[index])
            if index + 1 < len(frames):
                self.timer = asyncio.get_running_loop().call_later(1.0, self._tick, index + 1)
            else:
                self.timer = asyncio.get_running_loop().call_later(1.0, self.transport.write, DONE_FRAME)

    async def run() -> None:
        server = await asyncio.get_running_loop().create_server(Stub, "127.0.0.1", port, backlog=4096)
        async with server:
            await server.serve_forever()

    uvloop.run(run())


# --- the client -----------------------------------------------------------------------------------------
def whole(raw: bytes, seconds: int) -> str:
    """``"ok"`` when ``raw`` is one whole streamed chat answer, else what is wrong with it."""
    import httptools

    class Answer:
        def __init__(self) -> None:
            self.headers: dict[bytes, bytes] = {}
            self.body: list[bytes] = []
            self.complete = False

        def on_header(self, name: bytes, value: bytes) -> None:
            self.headers[name.lower()] = value

        def on_body(self, body: bytes) -> None:
            self.body.append(body)

        def on_message_complete(self) -> None:
            self.complete = True

    answer = Answer()
    parser = httptools.HttpResponseParser(answer)
    try:
        parser.feed_data(raw)
    except httptools.HttpParserError as exc:
        return f"malformed ({type(exc).__name__})"
    if parser.get_status_code() != 200:
        return f"status {parser.get_status_code()}"
    if not answer.headers.get(b"content-type", b"").startswith(b"text/event-stream"):
        return "not an event stream"
    if not answer.complete:
        return "cut short"
    events = b"".join(answer.body).split(b"\n\n")
    if events[-1] != b"" or events[-2] != b"data: [DONE]" or len(events) != seconds + 2:
        return "events missing or extra"
    for index, event in enumerate(events[:-2]):
        chunk = json.loads(event.removeprefix(b"data: "))
        if chunk["object"] != "chat.completion.chunk" or (
            index < seconds - 1 and chunk["choices"][0]["delta"]["content"] != f"tok{index} "
        ):
            return "events out of order"
    return "ok"


def run_load(port: int, streams: int, seconds: int) -> None:
    """Open ``streams`` streams at once, read each to its end; JSON lines on stdout: ``open`` when every
    stream has its headers (or failed), ``first_done`` when one ends, then ``result``."""
    import uvloop

    def say(**fields: Any) -> None:
        print(json.dumps(fields), flush=True)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        state = {"headed": 0, "refused": 0, "ended": 0}
        connecting = asyncio.Semaphore(CONNECTING)
        verdicts: dict[str, int] = {}

        class Stream(asyncio.Protocol):
            def __init__(self, done: asyncio.Future[bytes]) -> None:
                self.parts: list[bytes] = []
                self.done = done
                self.headed = False
                self.tail = b""
                self.transport: asyncio.Transport | None = None

            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport  # type: ignore[assignment]
                transport.write(REQUEST)  # type: ignore[attr-defined]

            def data_received(self, data: bytes) -> None:
                self.parts.append(data)
                if not self.headed:
                    self.headed = True
                    headed()
                self.tail = (self.tail + data)[-7:]  # the last chunk may come in a read of its own
                if self.tail == b"\r\n0\r\n\r\n" and not self.done.done():
                    self.done.set_result(b"".join(self.parts))
                    assert self.transport is not None
                    self.transport.close()

            def connection_lost(self, exc: Exception | None) -> None:
                if not self.headed:  # closed before answering: it counts as open, to say all are
                    self.headed = True
                    headed(refused=True)
                if not self.done.done():
                    self.done.set_result(b"".join(self.parts))

        def headed(refused: bool = False) -> None:
            state["refused" if refused else "headed"] += 1
            if state["headed"] + state["refused"] == streams:
                say(event="open", t=loop.time() - started)

        async def one() -> None:
            done: asyncio.Future[bytes] = loop.create_future()
            try:
                async with connecting:
                    transport, _ = await asyncio.wait_for(
                        loop.create_connection(lambda: Stream(done), "127.0.0.1", port), 30
                    )
            except (OSError, TimeoutError) as exc:
                verdict = f"connect failed ({type(exc).__name__})"
                headed(refused=True)
            else:
                try:
                    raw = await asyncio.wait_for(done, seconds + 60)
                    verdict = whole(raw, seconds)
                except TimeoutError:
                    verdict = "not over in time"
                    transport.close()
                state["ended"] += 1
                if state["ended"] == 1:
                    say(event="first_done", t=loop.time() - started)
            verdicts[verdict] = verdicts.get(verdict, 0) + 1

        await asyncio.gather(*(one() for _ in range(streams)))
        say(event="result", t=loop.time() - started, verdicts=verdicts)

    uvloop.run(run())


# --- the harness ----------------------------------------------------------------------------------------
def rss_kib(pid: int) -> int:
    total = 0
    for member in family(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def open_fds(pid: int) -> int:
    total = 0
    for member in family(pid):
        with contextlib.suppress(OSError):
            total += len(os.listdir(f"/proc/{member}/fd"))
    return total


class Health:
    """``GET /healthz`` over one keep-alive connection (a new one if it breaks); latency in ms."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock: socket.socket | None = None
        self.failures = 0

    def ask(self) -> float | None:
        started = time.perf_counter()
        try:
            if self.sock is None:
                self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n")
            received = b""
            while b"\r\n\r\n" not in received or not received.endswith(b"}"):
                data = self.sock.recv(4096)
                if not data:
                    raise ConnectionError("closed")
                received += data
            if not received.startswith(b"HTTP/1.1 200"):
                raise ConnectionError(received[:40].decode("latin-1"))
        except OSError:
            self.failures += 1
            self.close()
            return None
        return (time.perf_counter() - started) * 1000

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def wait_listening(port: int, process: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited at start:\n{log.read_text()[-2000:]}")
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not start")


def nginx_config(directory: Path, port: int, stub_port: int) -> Path:
    return nginx_around(
        directory,
        f"""
    upstream stub {{ server 127.0.0.1:{stub_port}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = /healthz {{ default_type application/json; return 200 '{{"status":"ok"}}'; }}
        location / {{
            proxy_pass http://stub;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
        }}
    }}
""",
        connections=60000,
        # what this machine allows: asked for more than the hard limit, nginx's setrlimit fails and it keeps
        # the soft limit it started with
        open_files=min(FD_LIMIT, resource.getrlimit(resource.RLIMIT_NOFILE)[1]),
    )


class Run:
    """One target at one N: upstream, proxy, client; stopped, all of it, whatever happens."""

    def __init__(self, work: Path, target: str, build: str | None, streams: int, seconds: int) -> None:
        self.work = work / f"{target}-{streams}-{time.monotonic_ns()}"
        self.work.mkdir()
        self.target, self.build, self.streams, self.seconds = target, build, streams, seconds
        self.processes: list[subprocess.Popen[bytes]] = []

    # ``--soft-limit``: the soft descriptor limit the proxy starts under (systemd's and recent container
    # runtimes' 1024), as a deployment gives it; the sidecar raises its own, nginx by worker_rlimit_nofile.
    soft_limit: int | None = None

    def start(self, argv: list[str], what: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        soft = self.soft_limit if what == "proxy" else None
        with (self.work / f"{what}.log").open("wb") as log:
            process = subprocess.Popen(
                argv, stdout=log, stderr=log, env=env, preexec_fn=_soft_limit(soft) if soft else None
            )
        self.processes.append(process)
        return process

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def proxy(self, stub_port: int, trace: Path | None) -> tuple[int, int]:
        port = free_port()
        if self.build is None:
            config = nginx_config(self.work, port, stub_port)
            process = self.start(["nginx", "-c", str(config), "-p", str(self.work)], "proxy")
        else:
            env = {k: v for k, v in os.environ.items() if not k.startswith(("SIDECAR_", "STREAMS_"))}
            env.update(
                PYTHONPATH=self.build,
                SIDECAR_UPSTREAM_URL=f"http://127.0.0.1:{stub_port}",
                SIDECAR_PORT=str(port),
                SIDECAR_LOG_LEVEL="warning",
                SIDECAR_WORKERS="1",
                SIDECAR_POLICY="blocked",  # no admin key: no rescue; the pass-through is the same
            )
            if trace is not None:
                env.update(STREAMS_TRACEMALLOC="1", STREAMS_TRACEMALLOC_OUT=str(trace))
            argv = [sys.executable, str(HERE / "traced_sidecar.py")]
            process = self.start(argv, "proxy", env)
        wait_listening(port, process, self.target, self.work / "proxy.log")
        return port, process.pid

    def measure(self, trace: Path | None = None) -> dict[str, Any]:
        try:
            stub_port = free_port()
            stub = self.start([sys.executable, __file__, "stub", str(stub_port), str(self.seconds)], "stub")
            wait_listening(stub_port, stub, "stub", self.work / "stub.log")
            port, pid = self.proxy(stub_port, trace)
            health = Health(port)
            for _ in range(10):  # warm: the sidecar's first answers, nginx's first
                health.ask()
            time.sleep(1.0)
            if trace is not None:
                snapshot(pid, trace, 0)
            rss_before, fds_before = rss_kib(pid), open_fds(pid)
            return self._load(port, pid, health, rss_before, fds_before, trace)
        finally:
            self.stop()

    def _load(
        self, port: int, pid: int, health: Health, rss_before: int, fds_before: int, trace: Path | None
    ) -> dict[str, Any]:
        argv = [sys.executable, __file__, "load", str(port), str(self.streams), str(self.seconds)]
        load = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.processes.append(load)
        assert load.stdout is not None
        os.set_blocking(load.stdout.fileno(), False)
        events: dict[str, Any] = {}
        pending = b""
        samples: list[tuple[float, int, int | None, float | None]] = []  # (t, rss, fds, healthz ms)
        started = time.monotonic()
        deadline = started + self.seconds + 90 + self.streams / 200
        tick = 0
        traced = False
        while load.poll() is None and time.monotonic() < deadline:
            now = time.monotonic() - started
            latency = health.ask()
            fds = open_fds(pid) if tick % 5 == 0 else None
            samples.append((now, rss_kib(pid), fds, latency))
            tick += 1
            with contextlib.suppress(BlockingIOError, TypeError):
                pending += load.stdout.read() or b""
            *lines, pending = pending.split(b"\n")
            for line in lines:
                message = json.loads(line)
                events[message["event"]] = message
            if trace is not None and not traced and "open" in events and now > events["open"]["t"] + 2:
                snapshot(pid, trace, 1)
                traced = True
            time.sleep(max(0.0, 0.1 - (time.monotonic() - started - now)))
        if load.poll() is None:
            load.kill()
        load.wait()
        with contextlib.suppress(TypeError):
            pending += load.stdout.read() or b""
        for line in pending.split(b"\n"):
            if line.strip():
                message = json.loads(line)
                events[message["event"]] = message
        health.close()
        verdicts = events.get("result", {}).get("verdicts", {"load did not finish": self.streams})
        opened = events.get("open", {}).get("t")
        ended = events.get("first_done", {}).get("t")
        plateau = [s for s in samples if opened is not None and ended is not None and opened <= s[0] <= ended]
        rss_plateau = statistics.median(s[1] for s in plateau) if plateau else float("nan")
        fds_plateau = [s[2] for s in plateau if s[2] is not None]
        latencies = sorted(s[3] for s in samples if s[3] is not None)
        steady = sorted(s[3] for s in plateau if s[3] is not None)  # every stream open, none ended
        return {
            "target": self.target,
            "streams": self.streams,
            "seconds": self.seconds,
            "whole": verdicts.get("ok", 0),
            "verdicts": verdicts,
            "open_s": opened,
            "rss_before_kib": rss_before,
            "rss_plateau_kib": rss_plateau,
            "rss_max_kib": max(s[1] for s in samples) if samples else None,
            "rss_per_stream_kib": (rss_plateau - rss_before) / self.streams,
            "fds_before": fds_before,
            "fds_plateau": max(fds_plateau) if fds_plateau else None,
            "healthz_samples": len(latencies),
            "healthz_failures": health.failures,
            "healthz_p50_ms": _percentile(latencies, 50),
            "healthz_p99_ms": _percentile(latencies, 99),
            "healthz_max_ms": latencies[-1] if latencies else None,
            "plateau_healthz_p50_ms": _percentile(steady, 50),
            "plateau_healthz_p99_ms": _percentile(steady, 99),
            "plateau_samples": len(plateau),
        }


def snapshot(pid: int, trace: Path, index: int) -> None:
    """Have the traced sidecar dump its snapshot ``index``, and wait until it is written (60 s at most)."""
    os.kill(pid, signal.SIGUSR1)
    path = Path(f"{trace}.{index}")
    deadline = time.monotonic() + 60
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)


def _percentile(values: list[float], percent: float) -> float | None:
    if not values:
        return None
    return values[min(len(values) - 1, int(len(values) * percent / 100))]


def breakdown(trace: Path, streams: int, top: int = 30) -> list[dict[str, Any]]:
    """What grew between the two snapshots, by allocating line, largest first, per stream."""
    import tracemalloc

    before = tracemalloc.Snapshot.load(f"{trace}.0")
    after = tracemalloc.Snapshot.load(f"{trace}.1")
    rows = []
    for stat in after.compare_to(before, "lineno")[:top]:
        frame = stat.traceback[0]
        rows.append(
            {
                "site": f"{_short(frame.filename)}:{frame.lineno}",
                "bytes_per_stream": stat.size_diff / streams,
                "blocks_per_stream": stat.count_diff / streams,
                "line": _line(frame.filename, frame.lineno),
            }
        )
    total = sum(s.size_diff for s in after.compare_to(before, "filename"))
    rows.append(
        {"site": "TOTAL traced", "bytes_per_stream": total / streams, "blocks_per_stream": 0, "line": ""}
    )
    return rows


def _short(filename: str) -> str:
    for marker in ("site-packages/", "python3.11/", "/sidecar/"):
        if marker in filename:
            return ("sidecar/" if marker == "/sidecar/" else "") + filename.split(marker, 1)[1]
    return filename


def _line(filename: str, lineno: int) -> str:
    import linecache

    return linecache.getline(filename, lineno).strip()[:70]


def _soft_limit(soft: int) -> Callable[[], None]:
    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    return lower


def raise_fd_limit() -> None:
    """Our own descriptor limit, inherited by what we start (the sidecar raises its soft limit itself)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, max(FD_LIMIT, hard)))
    except (ValueError, OSError):  # not root: as far as the hard limit goes
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main() -> int:
    if sys.argv[1:2] == ["stub"]:
        serve_stub(int(sys.argv[2]), int(sys.argv[3]))
        return 0
    if sys.argv[1:2] == ["load"]:
        raise_fd_limit()
        run_load(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", default="2000,10000", help="comma-separated N (default 2000,10000)")
    parser.add_argument("--seconds", type=int, default=15, help="each stream's length (default 15)")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds per N (default 1)")
    parser.add_argument(
        "--build",
        action="append",
        help="NAME=PATH: a sidecar tree to run (PYTHONPATH); repeatable (default sidecar=this tree)",
    )
    parser.add_argument("--no-nginx", action="store_true", help="leave nginx out")
    parser.add_argument(
        "--soft-limit", type=int, help="start each proxy under this soft descriptor limit (e.g. 1024)"
    )
    parser.add_argument("--trace", type=int, help="N: also a tracemalloc run of each build at N streams")
    parser.add_argument("--out", default=str(HERE / "streams.json"), help="where to write the JSON results")
    args = parser.parse_args()
    Run.soft_limit = args.soft_limit
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("bench: terminated"))  # so ``finally`` stops all
    raise_fd_limit()
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    largest = max([int(n) for n in args.streams.split(",") if n] + [args.trace or 0])
    if 2 * largest + 600 > limit:  # the sidecar's own bound, ``capacity.connection_bound``
        bound = (limit - 576) // 2
        print(f"bench: {limit} descriptors at most: the sidecar answers 503 past about {bound}")
    builds = dict(b.split("=", 1) for b in args.build or [f"sidecar={HERE.parent}"])
    targets: list[tuple[str, str | None]] = list(builds.items())
    if not args.no_nginx:
        targets.append(("nginx", None))
    work = Path(tempfile.mkdtemp(prefix="sidecar-streams-"))
    results: list[dict[str, Any]] = []
    traces: dict[str, list[dict[str, Any]]] = {}
    for streams in (int(n) for n in args.streams.split(",") if n):
        for round_ in range(args.rounds):
            order = targets[round_ % len(targets) :] + targets[: round_ % len(targets)]
            for name, build in order:
                result = Run(work, name, build, streams, args.seconds).measure()
                result["round"] = round_
                results.append(result)
                _print_row(result)
    if args.trace:
        for name, build in builds.items():
            trace = work / f"trace-{name}"
            result = Run(work, name, build, args.trace, args.seconds).measure(trace)
            print(f"\n{name}, tracemalloc at {args.trace} streams ({result['whole']} whole):")
            traces[name] = breakdown(trace, args.trace)
            for row in traces[name]:
                print(
                    f"  {row['bytes_per_stream']:8.0f} B {row['blocks_per_stream']:6.2f} blocks  "
                    f"{row['site']:<55} {row['line']}"
                )
    Path(args.out).write_text(json.dumps({"results": results, "traces": traces}, indent=1) + "\n")
    _print_table(results)
    print(f"\nJSON: {args.out}; logs: {work}")
    return 0


def _print_row(r: dict[str, Any]) -> None:
    print(
        f"{r['target']:<10} N={r['streams']:<6} whole {r['whole']}/{r['streams']} "
        f"RSS {r['rss_before_kib'] / 1024:.1f} -> {r['rss_plateau_kib'] / 1024:.1f} MiB "
        f"({r['rss_per_stream_kib']:.1f} KiB/stream) fds {r['fds_plateau']} "
        f"healthz p50 {r['healthz_p50_ms']:.2f} p99 {r['healthz_p99_ms']:.2f} "
        f"max {r['healthz_max_ms']:.1f} ms "
        f"(fail {r['healthz_failures']}; plateau p50 {_ms(r['plateau_healthz_p50_ms'])} "
        f"p99 {_ms(r['plateau_healthz_p99_ms'])}) open in {r['open_s'] or float('nan'):.1f} s "
        f"{'' if r['whole'] == r['streams'] else r['verdicts']}",
        flush=True,
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _print_table(results: list[dict[str, Any]]) -> None:
    print(
        "\n| target | N | whole/N | RSS before (MiB) | RSS plateau (MiB) | RSS/stream (KiB) | fds plateau "
        "| healthz p50 / p99 / max, whole run (ms) | healthz p50 / p99, plateau (ms) | all open after (s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['target']} | {r['streams']} | {r['whole']}/{r['streams']} "
            f"| {r['rss_before_kib'] / 1024:.1f} "
            f"| {r['rss_plateau_kib'] / 1024:.1f} | {r['rss_per_stream_kib']:.1f} | {r['fds_plateau']} "
            f"| {r['healthz_p50_ms']:.2f} / {r['healthz_p99_ms']:.2f} / {r['healthz_max_ms']:.1f} "
            f"| {_ms(r['plateau_healthz_p50_ms'])} / {_ms(r['plateau_healthz_p99_ms'])} "
            f"| {r['open_s'] or float('nan'):.1f} |"
        )


if __name__ == "__main__":
    sys.exit(main())
