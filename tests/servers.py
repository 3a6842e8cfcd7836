"""Real HTTP servers on 127.0.0.1 for the tests: uvicorn in a thread, on a port the OS picks."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from typing import Any

import uvicorn


class _Server(uvicorn.Server):
    """uvicorn's server, stopped as soon as a test is done with it.

    uvicorn looks at ``should_exit`` every 0.1 s, and once stopping gives the open connections a fixed
    0.1 s before it waits for them to close: right for a process, but 0.15 s of nothing for each of the
    hundreds of servers the tests start and stop. Here the stop wakes the main loop at once, and the wait
    ends as soon as the last connection has closed; what a stop does is uvicorn's: close the listeners,
    shut every connection down, wait for them (cancelling what outlives ``timeout_graceful_shutdown``),
    then the application's lifespan shutdown.
    """

    _loop: asyncio.AbstractEventLoop | None = None
    _exit: asyncio.Event | None = None

    def stop(self) -> None:
        """From any thread."""
        self.should_exit = True
        if self._loop is not None and self._exit is not None:
            self._loop.call_soon_threadsafe(self._exit.set)

    async def main_loop(self) -> None:
        self._loop, self._exit = asyncio.get_running_loop(), asyncio.Event()
        counter = 0
        while not await self.on_tick(counter):  # uvicorn's tick: its Date header, max requests, ...
            counter = (counter + 1) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._exit.wait(), 0.1)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()
        try:
            async with asyncio.timeout(self.config.timeout_graceful_shutdown):
                while self.server_state.connections or self.server_state.tasks:
                    await asyncio.sleep(0.002)
        except TimeoutError:
            for task in self.server_state.tasks:
                task.cancel()
        for server in self.servers:
            await server.wait_closed()
        await self.lifespan.shutdown()


class ServerThread:
    def __init__(self, config: uvicorn.Config) -> None:
        # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and without
        # it every answer on a kept-alive connection waited 40 ms for the client's delayed ACK (Nagle).
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = _Server(config)
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    def __enter__(self) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("test server did not start")
            time.sleep(0.002)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.stop()
        self._thread.join(timeout=10)
        self._sock.close()


def plain_config(app: Any) -> uvicorn.Config:
    """The fake upstream writes its own Date and Server headers (recorded ones, or LiteLLM-like)."""
    return uvicorn.Config(
        app,
        lifespan="on",
        log_config=None,
        access_log=False,
        loop="asyncio",
        http="h11",
        server_header=False,
        date_header=False,
    )
