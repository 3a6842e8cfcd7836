"""WebSockets through the sidecar, next to nginx and a direct connection: round-trip latency, messages per
second, CPU per message and memory per open socket, measured side by side in one run.

Starts, on loopback only:

- a stand-in for LiteLLM's realtime route (``python bench/websocket.py upstream PORT``: the ``websockets``
  library's server on uvloop): an upgrade on any path is accepted, a ``session.created`` event (as an
  OpenAI realtime session opens) is sent, then every message is echoed as it came, text as text and
  binary as binary; a plain GET (the sidecar's ``/health/liveliness``) gets 200;
- nginx in front of it (one worker; the ``Upgrade``/``Connection`` mapping ``deploy/nginx`` ships,
  ``proxy_buffering off``), when installed;
- the sidecar of each build (``--build NAME=PATH``, default this checkout; started as ``run.py`` starts
  builds: ``build_argv`` with ``build_env``, one worker, ``policy: blocked`` without an admin key - the
  relay is the same whatever the policy).

Then, in interleaved rounds (each round the targets take turns in a rotated order):

- round trips: one connection, ``--messages`` text messages of 300 bytes (a realtime
  ``input_audio_buffer.append`` event), each sent when the previous one's echo arrived; per target the
  median and p99 round trip, and what the proxy adds to the direct one;
- throughput: ``--connections`` (default 1 and 32) connections each keeping ``--window`` messages in
  flight for ``--duration`` seconds (a client process of its own: raw sockets, one asyncio protocol per
  connection, pre-masked frames); echoes per second (each is a message up and one down) and the proxy's
  CPU per echo (``/proc/<pid>/task/*/schedstat``, as ``run.py``);
- memory (``--sockets`` N, default 1,000): a fresh proxy per run, RSS once warm, then N idle WebSockets
  opened through it (each waits for its ``session.created``) and held, RSS again two seconds later:
  the growth per socket; twice, without and with ``permessage-deflate`` offered by the caller (as the
  ``websockets`` library, under the ``openai`` client's realtime connection, offers it by default).

The clients speak the protocol themselves (a handshake, masked frames, pongs for the proxies' pings) and
check every echo's length (the round trips its bytes). They offer no compression on the measured
messages: a caller that negotiates it costs the sidecar compression both ways. Prints tables, writes JSON.

    python bench/websocket.py [--messages 2000] [--connections 1,32] [--duration 4] [--window 8]
        [--sockets 1000] [--rounds 3] [--build NAME=PATH ...] [--no-nginx]
        [--out bench/results-websocket.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from run import build_argv, build_env, cpu_seconds, describe_build, free_port, nginx_around, rss_mb
from streams import wait_listening

HERE = Path(__file__).resolve().parent
PATH = b"/v1/realtime?model=gpt-realtime"
SESSION_CREATED = json.dumps(
    {
        "type": "session.created",
        "event_id": "event_C9G5RJeJ2gF77mV7f2B1j",
        "session": {
            "object": "realtime.session",
            "id": "sess_C9G5QPteg4UIbotdKLoYQ",
            "model": "gpt-realtime-2025-08-28",
            "modalities": ["audio", "text"],
            "instructions": "Your knowledge cutoff is 2023-10. You are a helpful, witty, and friendly AI.",
            "voice": "alloy",
            "input_audio_format": "pcm16",
            "output_audio_format": "pcm16",
            "input_audio_transcription": None,
            "turn_detection": {
                "type": "server_vad",
                "threshold": 0.5,
                "prefix_padding_ms": 300,
                "silence_duration_ms": 200,
            },
            "tools": [],
            "tool_choice": "auto",
            "temperature": 0.8,
            "max_response_output_tokens": "inf",
        },
    }
)
_EVENT = '{"type":"input_audio_buffer.append","event_id":"event_bench","audio":"%s"}'
MESSAGE = (_EVENT % ("A" * (300 - len(_EVENT % "")))).encode()  # 300 bytes
assert len(MESSAGE) == 300
MASK = bytes.fromhex("37fa213d")
TEXT, BINARY, CLOSE, PING, PONG = 1, 2, 8, 9, 10


def handshake(deflate: bool = False) -> bytes:
    """A realtime client's upgrade request (the ``openai`` client's headers; a fixed key: nobody checks)."""
    offer = b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" if deflate else b""
    return (
        b"GET %s HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n%s"
        b"Authorization: Bearer sk-bench-healthy\r\nOpenAI-Beta: realtime=v1\r\n\r\n" % (PATH, offer)
    )


def frame(opcode: int, payload: bytes) -> bytes:
    """One whole client frame, masked (RFC 6455 section 5.3)."""
    size = len(payload)
    if size < 126:
        length = bytes([0x80 | size])
    elif size < 1 << 16:
        length = bytes([0x80 | 126]) + size.to_bytes(2, "big")
    else:
        length = bytes([0x80 | 127]) + size.to_bytes(8, "big")
    masked = bytes(byte ^ MASK[i % 4] for i, byte in enumerate(payload))
    return bytes([0x80 | opcode]) + length + MASK + masked


MESSAGE_FRAME = frame(TEXT, MESSAGE)
CLOSE_FRAME = frame(CLOSE, (1000).to_bytes(2, "big"))


class Frames:
    """The server's frames out of a byte stream: ``(opcode, payload)``, payloads kept for control frames
    (pings are answered with their payload) and, with ``keep``, for data frames too."""

    def __init__(self, keep: bool = False) -> None:
        self.buffer = bytearray()
        self.keep = keep

    def feed(self, data: bytes) -> list[tuple[int, bytes | int]]:
        """The frames ``data`` completes; a data frame's payload is its length unless ``keep``."""
        buffer = self.buffer
        buffer += data
        found: list[tuple[int, bytes | int]] = []
        at, end = 0, len(buffer)
        while end - at >= 2:
            opcode, size, head = buffer[at] & 0x0F, buffer[at + 1] & 0x7F, 2
            if size == 126:
                if end - at < 4:
                    break
                size, head = int.from_bytes(buffer[at + 2 : at + 4], "big"), 4
            elif size == 127:
                if end - at < 10:
                    break
                size, head = int.from_bytes(buffer[at + 2 : at + 10], "big"), 10
            if end - at < head + size:
                break
            start = at + head
            at = start + size
            found.append((opcode, bytes(buffer[start:at]) if opcode >= CLOSE or self.keep else size))
        del buffer[:at]
        return found


# --- the stand-in upstream ------------------------------------------------------------------------------
def serve_upstream(port: int) -> None:
    """LiteLLM's realtime route as the relay sees it: ``session.created``, then every message echoed."""
    import uvloop
    from websockets.asyncio.server import ServerConnection, serve
    from websockets.http11 import Request, Response

    async def session(connection: ServerConnection) -> None:
        await connection.send(SESSION_CREATED)
        async for message in connection:
            await connection.send(message)

    def plain_http(connection: ServerConnection, request: Request) -> Response | None:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return None
        alive = request.path == "/health/liveliness"
        return connection.respond(200 if alive else 404, "I'm alive!" if alive else "Not Found")

    async def run() -> None:
        async with serve(
            session, "127.0.0.1", port, process_request=plain_http, ping_interval=None, backlog=4096
        ) as server:
            await server.serve_forever()

    uvloop.run(run())


# --- the clients ----------------------------------------------------------------------------------------
def round_trips(port: int, count: int) -> list[float]:
    """``count`` messages over one connection, each sent once the previous one's echo is back: ms each."""
    times = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(handshake())
        head = b""
        while b"\r\n\r\n" not in head:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("closed during the handshake")
            head += data
        head, _, rest = head.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(f"no upgrade: {head[:60]!r}")
        frames = Frames(keep=True)
        pending = frames.feed(rest)

        def next_message() -> bytes:
            nonlocal pending
            while True:
                while pending:
                    opcode, payload = pending.pop(0)
                    assert isinstance(payload, bytes)
                    if opcode == PING:
                        sock.sendall(frame(PONG, payload))
                    elif opcode in (TEXT, BINARY):
                        return payload
                    elif opcode == CLOSE:
                        raise ConnectionError(f"closed: {payload!r}")
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("closed")
                pending = frames.feed(data)

        if b"session.created" not in next_message():
            raise ConnectionError("no session.created first")
        for _ in range(count):
            started = time.perf_counter()
            sock.sendall(MESSAGE_FRAME)
            echo = next_message()
            times.append((time.perf_counter() - started) * 1000)
            if echo != MESSAGE:
                raise ConnectionError("an echo differs from its message")
        sock.sendall(CLOSE_FRAME)
    return times


class _Socket(asyncio.Protocol):
    """One client WebSocket: the handshake, ``session.created``, then ``on_echo`` for each message."""

    def __init__(self, deflate: bool, greeted: asyncio.Future[str], on_echo: Any = None) -> None:
        self.deflate, self.greeted, self.on_echo = deflate, greeted, on_echo
        self.head = b""
        self.frames: Frames | None = None
        self.transport: asyncio.Transport | None = None
        self.wrong = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(handshake(self.deflate))  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if self.frames is None:
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return
            head, _, data = self.head.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 101"):
                self._settle(head.split(b"\r\n", 1)[0].decode("latin-1"))
                self.transport.close()
                return
            self.frames = Frames()
        for opcode, payload in self.frames.feed(data):
            if opcode in (TEXT, BINARY):
                if not self.greeted.done():
                    self._settle("ok")
                    continue
                if payload != len(MESSAGE):
                    self.wrong += 1
                self.on_echo(self)
            elif opcode == PING:
                assert isinstance(payload, bytes)
                self.transport.write(frame(PONG, payload))
            elif opcode == CLOSE:
                self._settle("closed")
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._settle("lost")

    def _settle(self, verdict: str) -> None:
        if not self.greeted.done():
            self.greeted.set_result(verdict)


async def _open(
    port: int, count: int, deflate: bool, on_echo: Any = None
) -> tuple[list[_Socket], dict[str, int]]:
    """``count`` WebSockets, at most 200 handshakes at once; the greeted ones, and every verdict's count."""
    loop = asyncio.get_running_loop()
    connecting = asyncio.Semaphore(200)
    verdicts: dict[str, int] = {}
    opened: list[_Socket] = []

    async def one() -> None:
        greeted: asyncio.Future[str] = loop.create_future()
        async with connecting:
            try:
                _, client = await asyncio.wait_for(
                    loop.create_connection(lambda: _Socket(deflate, greeted, on_echo), "127.0.0.1", port), 30
                )
                verdict = await asyncio.wait_for(greeted, 30)
            except (OSError, TimeoutError) as exc:
                verdict = type(exc).__name__
        verdicts[verdict] = verdicts.get(verdict, 0) + 1
        if verdict == "ok":
            opened.append(client)

    await asyncio.gather(*(one() for _ in range(count)))
    return opened, verdicts


def run_load(port: int, connections: int, seconds: float, window: int) -> None:
    """``connections`` sockets each keeping ``window`` messages in flight for ``seconds``; one JSON line:
    echoes inside the window, echoes in all, sockets opened."""
    import uvloop

    async def run() -> None:
        loop = asyncio.get_running_loop()
        state = {"sending": True, "counted": 0, "total": 0}

        def on_echo(client: _Socket) -> None:
            state["total"] += 1
            if state["sending"]:
                state["counted"] += 1
                assert client.transport is not None
                client.transport.write(MESSAGE_FRAME)

        clients, verdicts = await _open(port, connections, False, on_echo)
        started = loop.time()
        for client in clients:
            assert client.transport is not None
            client.transport.write(MESSAGE_FRAME * window)
        await asyncio.sleep(seconds)
        state["sending"] = False
        elapsed = loop.time() - started
        deadline = loop.time() + 10
        while state["total"] < state["counted"] + window * len(clients) and loop.time() < deadline:
            await asyncio.sleep(0.01)  # the messages still in flight
        for client in clients:
            assert client.transport is not None
            client.transport.write(CLOSE_FRAME)
            client.transport.close()
        wrong = sum(client.wrong for client in clients)
        print(json.dumps({"seconds": elapsed, "verdicts": verdicts, "wrong": wrong, **state}), flush=True)

    uvloop.run(run())


def run_hold(port: int, count: int, deflate: bool) -> None:
    """``count`` idle sockets opened and held until stdin closes; one JSON line once they are open."""
    import uvloop

    async def run() -> None:
        clients, verdicts = await _open(port, count, deflate)
        print(json.dumps({"opened": len(clients), "verdicts": verdicts}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        for client in clients:
            assert client.transport is not None
            client.transport.close()

    uvloop.run(run())


# --- the harness ----------------------------------------------------------------------------------------
def nginx_config(directory: Path, port: int, upstream_port: int, sockets: int) -> Path:
    """nginx as ``deploy/nginx`` passes WebSockets on: the upgrade mapped, no buffering, long timeouts."""
    return nginx_around(
        directory,
        f"""
    map $http_upgrade $connection_upgrade {{ default upgrade; "" ""; }}
    upstream litellm {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://litellm;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 600s;
            proxy_send_timeout 600s;
        }}
    }}""",
        connections=2 * sockets + 1024,
        open_files=min(4 * sockets + 4096, resource.getrlimit(resource.RLIMIT_NOFILE)[1]),
    )


class Bench:
    """What one run starts: the upstream and the proxies; ``stop`` ends them, last started first."""

    def __init__(self, work: Path, builds: dict[str, Path], sockets: int) -> None:
        self.work, self.builds, self.sockets = work, builds, sockets
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], what: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        log = self.work / f"{what}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(argv, stdout=out, stderr=out, **kwargs)
        self.processes.append(process)
        return process

    def upstream(self) -> int:
        port = free_port()
        process = self.start([sys.executable, __file__, "upstream", str(port)], "upstream")
        wait_listening(port, process, "upstream", self.work / "upstream.log")
        return port

    def proxy(self, name: str, upstream_port: int) -> tuple[int, subprocess.Popen[bytes]]:
        """nginx (``name == "nginx"``) or the build ``name``'s sidecar, in front of the upstream."""
        port = free_port()
        if name == "nginx":
            directory = Path(tempfile.mkdtemp(prefix="nginx-", dir=self.work))
            config = nginx_config(directory, port, upstream_port, self.sockets)
            process = self.start(["nginx", "-c", str(config), "-p", str(directory)], name)
        else:
            root = self.builds[name]
            env = build_env(
                root,
                upstream_url=f"http://127.0.0.1:{upstream_port}",
                port=str(port),
                log_level="warning",
                workers="1",
                policy="blocked",  # no admin key: no budget look-ups; the relay is the same
            )
            process = self.start(build_argv(), name, env=env, cwd=root)
        wait_listening(port, process, name, self.work / f"{name}.log")
        return port, process

    def end(self, process: subprocess.Popen[bytes]) -> None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        self.processes.remove(process)

    def stop(self) -> None:
        for process in reversed(list(self.processes)):
            if process.poll() is None:
                self.end(process)


def throughput(port: int, pid: int | None, connections: int, seconds: float, window: int) -> dict[str, Any]:
    """One load run against ``port``; the CPU the proxy ``pid`` spent per echo meanwhile."""
    before = cpu_seconds(pid) if pid is not None else None
    argv = [sys.executable, __file__, "load", str(port), str(connections), str(seconds), str(window)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 90, check=True).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    result["echoes_per_s"] = result["counted"] / result["seconds"]
    if before is not None and pid is not None:
        result["cpu_us_per_echo"] = (cpu_seconds(pid) - before) * 1e6 / max(result["total"], 1)
    if result["verdicts"].get("ok", 0) != connections or result["wrong"]:
        raise RuntimeError(f"bench: a load run went wrong: {result}")
    return result


def memory(bench: Bench, name: str, upstream_port: int, sockets: int, deflate: bool) -> dict[str, Any]:
    """A fresh proxy, its RSS once warm, then with ``sockets`` idle WebSockets open through it."""
    port, process = bench.proxy(name, upstream_port)
    try:
        round_trips(port, 50)  # warm: the first sockets, the first messages
        time.sleep(1.0)
        before = rss_mb(process.pid)
        argv = [sys.executable, __file__, "hold", str(port), str(sockets), "deflate" if deflate else "plain"]
        hold = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert hold.stdout is not None and hold.stdin is not None
            ready, _, _ = select.select([hold.stdout], [], [], 60 + sockets / 50)
            if not ready:
                raise RuntimeError(f"bench: {sockets} sockets through {name} not open in time")
            opened = json.loads(hold.stdout.readline())
            time.sleep(2.0)
            samples = []
            for _ in range(5):
                samples.append(rss_mb(process.pid))
                time.sleep(0.2)
            held = statistics.median(samples)
            hold.stdin.close()
            hold.wait(timeout=30)
        finally:
            if hold.poll() is None:
                hold.kill()
                hold.wait()
    finally:
        bench.end(process)
    return {
        "sockets": sockets,
        "opened": opened["opened"],
        "verdicts": opened["verdicts"],
        "rss_before_mb": before,
        "rss_open_mb": held,
        "kib_per_socket": (held - before) * 1024 / sockets,
    }


def raise_fd_limit() -> None:
    """Our own descriptor limit, as far as the hard limit goes, inherited by what we start."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main() -> int:
    if sys.argv[1:2] == ["upstream"]:
        serve_upstream(int(sys.argv[2]))
        return 0
    if sys.argv[1:2] == ["load"]:
        run_load(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]))
        return 0
    if sys.argv[1:2] == ["hold"]:
        raise_fd_limit()
        run_hold(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "deflate")
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000, help="round trips per target and round")
    parser.add_argument("--connections", default="1,32", help="comma-separated connection counts (1,32)")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per throughput run (4)")
    parser.add_argument("--window", type=int, default=8, help="messages in flight per connection (8)")
    parser.add_argument("--sockets", type=int, default=1000, help="idle sockets for memory, 0: none (1000)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument(
        "--build",
        action="append",
        help="NAME=PATH: a sidecar checkout to run; repeatable (default sidecar=this checkout)",
    )
    parser.add_argument("--no-nginx", action="store_true", help="leave nginx out")
    parser.add_argument(
        "--out", default=str(HERE / "results-websocket.json"), help="where to write the JSON results"
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("bench: terminated"))  # so ``finally`` stops all
    raise_fd_limit()
    builds = {
        name: Path(path) for name, path in (b.split("=", 1) for b in args.build or [f"sidecar={HERE.parent}"])
    }
    described = {name: describe_build(root) for name, root in builds.items()}
    for name, about in described.items():
        print(f"bench: {name} = {about['commit']} ({about['imports']})")
    proxies = list(builds)
    if args.no_nginx:
        pass
    elif shutil.which("nginx"):
        proxies.insert(0, "nginx")
    else:
        print("bench: nginx is not installed (apt-get install nginx-light): measuring without it")
    work = Path(tempfile.mkdtemp(prefix="sidecar-websocket-"))
    bench = Bench(work, builds, args.sockets)
    latencies: dict[str, list[float]] = {}
    round_p50s: dict[str, list[float]] = {}
    loads: list[dict[str, Any]] = []
    memories: list[dict[str, Any]] = []
    try:
        upstream_port = bench.upstream()
        targets: list[tuple[str, int, int | None]] = [("direct", upstream_port, None)]
        for name in proxies:
            port, process = bench.proxy(name, upstream_port)
            targets.append((name, port, process.pid))
        time.sleep(1.0)
        for _, port, _ in targets:  # warm: first sockets, pools, code paths
            round_trips(port, 200)
            throughput(port, None, 2, 0.5, args.window)
        latencies = {name: [] for name, _, _ in targets}
        round_p50s = {name: [] for name, _, _ in targets}
        for round_ in range(args.rounds):
            for name, port, _ in _rotated(targets, round_):
                times = round_trips(port, args.messages)
                latencies[name] += times
                round_p50s[name].append(statistics.median(times))
        _print_latencies(latencies)
        for connections in (int(c) for c in args.connections.split(",") if c):
            for round_ in range(args.rounds):
                for name, port, pid in _rotated(targets, round_):
                    result = throughput(port, pid, connections, args.duration, args.window)
                    loads.append({"target": name, "connections": connections, "round": round_, **result})
                    print(
                        f"{name:<10} c={connections:<3} {result['echoes_per_s']:.0f} echoes/s"
                        + (f", {result['cpu_us_per_echo']:.1f} us CPU/echo" if pid else ""),
                        flush=True,
                    )
        for process in bench.processes[1:]:  # the proxies: memory is measured on fresh ones
            bench.end(process)
        if args.sockets:
            for deflate in (False, True):
                for round_ in range(args.rounds):
                    for name in _rotated(proxies, round_):
                        result = memory(bench, name, upstream_port, args.sockets, deflate)
                        memories.append({"target": name, "deflate": deflate, "round": round_, **result})
                        print(
                            f"{name:<10} {args.sockets} idle sockets{' (deflate)' if deflate else ''}: "
                            f"{result['opened']} open, RSS {result['rss_before_mb']:.1f} -> "
                            f"{result['rss_open_mb']:.1f} MiB, {result['kib_per_socket']:.1f} KiB/socket",
                            flush=True,
                        )
    finally:
        bench.stop()
    report = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "build")},
        "builds": described,
        "round_trips_ms": {
            name: {**_spread(times), "p50_per_round": round_p50s[name]} for name, times in latencies.items()
        },
        "throughput": loads,
        "memory": memories,
    }
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    _print_tables(report, ["direct", *proxies])
    print(f"\nJSON results: {args.out}; logs: {work}")
    return 0


def _rotated(items: list[Any], round_: int) -> list[Any]:
    shift = round_ % len(items)
    return items[shift:] + items[:shift]


def _spread(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {
        "samples": len(ordered),
        "p50": statistics.median(ordered),
        "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
    }


def _print_latencies(latencies: dict[str, list[float]]) -> None:
    for name, times in latencies.items():
        spread = _spread(times)
        print(f"{name:<10} round trip p50 {spread['p50']:.3f} ms p99 {spread['p99']:.3f} ms", flush=True)


def _print_tables(report: dict[str, Any], names: list[str]) -> None:
    trips = report["round_trips_ms"]
    direct = trips["direct"]
    counts = sorted({load["connections"] for load in report["throughput"]})
    columns = ["target", "round trip p50 / p99 (ms)", "added p50 / p99 (ms)"]
    columns += [f"echoes/s, {c} conn{'s' if c > 1 else ''}" for c in counts]
    columns += [f"CPU per echo, {c} conn{'s' if c > 1 else ''} (µs)" for c in counts]
    print("\n| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for name in names:
        trip = trips[name]
        added = (
            "-"
            if name == "direct"
            else f"{trip['p50'] - direct['p50']:+.3f} / {trip['p99'] - direct['p99']:+.3f}"
        )
        row = [name, f"{trip['p50']:.3f} / {trip['p99']:.3f}", added]
        cells = {
            c: [load for load in report["throughput"] if load["target"] == name and load["connections"] == c]
            for c in counts
        }
        row += [f"{statistics.median(r['echoes_per_s'] for r in cells[c]):.0f}" for c in counts]
        row += [
            f"{statistics.median(r['cpu_us_per_echo'] for r in cells[c]):.1f}" if name != "direct" else "-"
            for c in counts
        ]
        print("| " + " | ".join(row) + " |")
    if report["memory"]:
        print(
            "\n| target | idle sockets | open | RSS before (MiB) | RSS with them open (MiB) | KiB per socket "
            "| with permessage-deflate offered: KiB per socket |"
        )
        print("|---|---|---|---|---|---|---|")
        for name in names[1:]:
            plain = [m for m in report["memory"] if m["target"] == name and not m["deflate"]]
            deflate = [m for m in report["memory"] if m["target"] == name and m["deflate"]]
            print(
                f"| {name} | {plain[0]['sockets']} | {min(m['opened'] for m in plain + deflate)} "
                f"| {statistics.median(m['rss_before_mb'] for m in plain):.1f} "
                f"| {statistics.median(m['rss_open_mb'] for m in plain):.1f} "
                f"| {statistics.median(m['kib_per_socket'] for m in plain):.1f} "
                f"| {statistics.median(m['kib_per_socket'] for m in deflate):.1f} |"
            )


if __name__ == "__main__":
    sys.exit(main())
