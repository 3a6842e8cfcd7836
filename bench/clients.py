"""CPU per request of the pass-through client against aiohttp's, alone, against the stub upstream.

    python bench/clients.py            (needs the bench extra: pip install '.[bench]')

Both send the same 20,000 POSTs over 32 keep-alive connections and read the answers; the figure is this
process's CPU time (the stub runs in its own process) divided by the number of requests.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import uvloop

from sidecar.proxy.http1 import ConnectionPool

REQUESTS, CONNECTIONS = 20_000, 32
BODY = b'{"model":"model-00","messages":[{"role":"user","content":"hi"}]}'
HEADERS = [
    ("authorization", "Bearer sk-bench-healthy"),
    ("content-type", "application/json"),
    ("host", "bench"),
]


def cpu() -> float:
    times = os.times()
    return times.user + times.system


async def with_aiohttp(port: int) -> float:
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
    ) as session:
        url = f"http://127.0.0.1:{port}/v1/chat/completions"

        async def worker() -> None:
            for _ in range(REQUESTS // CONNECTIONS):
                async with session.post(url, headers=HEADERS, data=BODY, allow_redirects=False) as response:
                    await response.read()

        started = cpu()
        await asyncio.gather(*(worker() for _ in range(CONNECTIONS)))
        return (cpu() - started) / REQUESTS * 1000


async def with_http1(port: int) -> float:
    pool = ConnectionPool("127.0.0.1", port, False, 5.0, 30.0)
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\n"
        + b"".join(f"{name}: {value}\r\n".encode() for name, value in HEADERS)
        + b"content-length: %d\r\n\r\n" % len(BODY)
    )

    async def worker() -> None:
        for _ in range(REQUESTS // CONNECTIONS):
            response = await pool.request(head, BODY)
            await response.read()
            response.release()

    started = cpu()
    await asyncio.gather(*(worker() for _ in range(CONNECTIONS)))
    pool.close()
    return (cpu() - started) / REQUESTS * 1000


def main() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    stub = subprocess.Popen([sys.executable, str(Path(__file__).with_name("stub.py")), str(port)])
    try:
        time.sleep(1)
        for name, measure in (("aiohttp", with_aiohttp), ("sidecar.proxy.http1", with_http1)):
            print(f"{name:<14} {uvloop.run(measure(port)):.4f} ms CPU per request")
    finally:
        stub.terminate()
        stub.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
