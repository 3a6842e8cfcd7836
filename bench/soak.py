"""A soak: mixed traffic through the real sidecar for M minutes, the upstream stopped and killed under it,
checking that nothing leaks and no answer is lost.

    PYTHONPATH=. .venv/bin/python bench/soak.py --minutes 30 [--seed S]

What runs, all on 127.0.0.1, on ports the OS picks, every process started here stopped in a ``finally``:

- the stand-in LiteLLM (``soak_upstream.py``: real 1.88.6 answers for thousands of made-up healthy, spent
  and unknown callers, generated SSE streams, an admin API slow and failing on a schedule) in its own
  process;
- the sidecar as ``python -m sidecar`` runs it (``soak_sidecar.py``: ``sidecar.cli.main`` plus an
  observer that answers SIGUSR1 with its asyncio task count), ``policy=free_only`` with the admin key,
  ``read_timeout`` 4 s, admin look-ups bounded at 200 a second;
- here: ``--concurrency`` closed-loop clients (httpx), each sending one request after another: discovery
  (``GET /v1/models``) for a random caller of every kind, chat JSON, streamed chats read whole, streamed
  chats hung up after a few chunks, ``/healthz``. Every caller is seen once first (``prime``), so the
  sidecar's per-caller caches are full before the clock starts.

On a schedule (every ``min(40 s, run / 3.5)``, none in the last 8 s) the upstream is alternately paused
(SIGSTOP for 1.5-6 s, then SIGCONT: pauses past ``read_timeout`` give 504s) and killed (SIGKILL, down
0.5-2 s, started again on the same port: 502s and cut streams).

**Every answer is classified.** Whole: the status and body LiteLLM gives that caller (byte for byte; a
stream's every event and ``[DONE]``), or, for a spent caller's discovery, the rescue (200, marked
``x-sidecar-budget-exceeded``, the free models, the same bytes every time) or LiteLLM's own refusal (the
sidecar fails closed while the admin API fails or look-ups are shed). A hang-up: the chunks read before it
are the stream's first ones. A clean error: 502 or 504 in OpenAI's error shape whose request overlapped a
disruption that causes it (504 "did not answer in time": a pause; 502 "unreachable": a kill; 502 "closed
the connection before answering": either, as a resumed uvicorn first closes the kept-alive connections
whose timers ran out while it was stopped, and a POST is never sent twice) - or a stream cut after its
headers (the only signal left once they are out) during one. Anything else is a failure: a wrong status
or body, a stream that ends cleanly but short, a 5xx with no disruption to explain it, no answer from the
sidecar, no answer within ``--deadline`` seconds. The sidecar must also stop on SIGTERM at the end (exit
status 0, or death by the SIGTERM uvicorn re-raises once it has shut down) and log nothing at error level
but uvicorn's "Exception in ASGI application" for each stream it aborted because the upstream broke it.

**Leaks.** Every ``--sample-every`` seconds, from outside the sidecar: RSS (``/proc/PID/status``), open
descriptors (``/proc/PID/fd``), its TCP connections to the upstream's port (``/proc/net/tcp`` joined to its
socket inodes: in use and pooled, and how many of them in CLOSE_WAIT); from inside, at the same instant
(``soak_sidecar.py``, asked by SIGUSR1): asyncio tasks, requests in flight and caller connections. After a
warm-up (the first 20 % of the run) a least-squares line is fitted to each metric, leaving out samples
taken during a disruption and for 5 s after it (connections drop and come back by design then). The
descriptors, upstream connections and tasks are fitted to time and the requests in flight together, so
that a busier or a quieter moment on a shared machine is not taken for growth; caller connections are
checked alone, so a leak of them cannot hide there. The run fails if the growth a line projects over the
measured part exceeds:

- RSS: 10 % of its warm value. Python's allocator keeps freed arenas, so RSS steps up as peaks are met
  and seldom comes back; 10 % tolerates that and the caches' churn, and catches a leak of about 500
  bytes per request in the 1-minute test (about 9,000 answers) - a leaked dict with a few entries - and of
  about 30 bytes per request over 30 minutes.
- open descriptors: 20 + 10 % of warm (about 35); upstream connections, caller connections, tasks: 20 +
  25 % of warm (about 40); CLOSE_WAIT connections (a socket never closed after the upstream died): 5.
  Over the 1-minute test on a loaded 2-core machine the projected growth of these moved by up to 6
  descriptors, 12 upstream connections, 14 tasks, 10 caller connections either way with no leak; one
  left behind per request grows them by thousands there, one per hang-up (5 % of requests) by about
  450, one per hundred requests by about 90.

Numbers in the table: ``start`` before any traffic, ``warm`` and ``end`` the medians of the first and last
five measured samples, the slope per minute and the projected growth against its limit. Exit status 0
when nothing failed and nothing grew, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from soak_upstream import KINDS, MASTER, Generated, SoakLiteLLM, callers, kind_of, stream_body  # noqa: E402

READ_TIMEOUT = 4.0  # the sidecar's read_timeout here: a pause longer than this is a 504
SETTLE = 5.0  # seconds after a disruption whose samples are not fitted (idle connections close after 4 s)
WARM = 0.2  # the share of the run that is warm-up
MIXTURE = {  # what a client sends next, by weight
    "models": 40,
    "chat": 20,
    "stream": 20,
    "hangup": 10,
    "healthz": 10,
}
FREE_MODELS = {"free-model", "free-model-2", "free-embedding"}  # zero-cost in the 1.88.6 catalog
TCP_CLOSE_WAIT = "08"
# The sidecar's error answers (upstream.py) and the disruptions that are their true cause. "closed before
# answering" follows a pause too: a resumed uvicorn fires the keep-alive timers that ran out while it was
# stopped and closes connections the sidecar had just sent a request on (a POST is never retried).
CAUSES = {
    (502, "upstream LiteLLM is unreachable"): ("kill",),
    (502, "upstream LiteLLM closed the connection before answering"): ("kill", "pause"),
    (504, "upstream LiteLLM did not answer in time"): ("pause",),
}
SHORT = {
    "upstream LiteLLM is unreachable": "unreachable",
    "upstream LiteLLM closed the connection before answering": "closed",
    "upstream LiteLLM did not answer in time": "timeout",
}
# uvicorn's line for a stream the sidecar aborts (the upstream broke it after the headers were out).
CUT = ("UpstreamTimeout: upstream did not answer in time", "UpstreamClosed: upstream closed the connection")


@dataclass
class Window:
    """A disruption of the upstream: ``kind`` "pause" or "kill", from ``start`` until it answered again."""

    kind: str
    start: float
    end: float | None = None


@dataclass
class Sample:
    t: float  # seconds since the clock started (negative: before the run)
    values: dict[str, float]
    fitted: bool = True


@dataclass
class Outcomes:
    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    failures: list[str] = field(default_factory=list)

    def add(self, request: str, outcome: str) -> None:
        self.counts[(request, outcome)] += 1  # type: ignore[index]

    def fail(self, request: str, why: str) -> None:
        self.counts[(request, "FAILED")] += 1  # type: ignore[index]
        self.failures.append(f"{request}: {why}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.duration = args.minutes * 60
        self.callers = callers(args.seed, args.callers)
        self.epoch = time.time()
        self.expect = SoakLiteLLM(args.seed, args.callers, self.epoch)
        self.dir = Path(tempfile.mkdtemp(prefix="sidecar-soak-"))
        self.upstream_port = free_port()
        self.sidecar_port = free_port()
        self.url = f"http://127.0.0.1:{self.sidecar_port}"
        self.upstream: subprocess.Popen[bytes] | None = None
        self.sidecar: subprocess.Popen[bytes] | None = None
        self.windows: list[Window] = []
        self.samples: list[Sample] = []
        self.outcomes = Outcomes()
        self.rescue: bytes | None = None  # the first rescued discovery answer: every later one must match
        self.clock = 0.0  # monotonic time of t = 0
        self.stopping = False
        self.notes: list[str] = []

    # --- processes ---------------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SIDECAR_", "SOAK_"))}
        env["PYTHONPATH"] = str(ROOT)
        return env

    def start_upstream(self) -> None:
        command = [
            sys.executable,
            str(ROOT / "bench" / "soak_upstream.py"),
            *("--port", str(self.upstream_port), "--seed", str(self.args.seed)),
            *("--callers", str(self.args.callers), "--epoch", repr(self.epoch)),
        ]
        with (self.dir / "upstream.log").open("ab") as log:
            self.upstream = subprocess.Popen(command, env=self._env(), stdout=log, stderr=log)
        self._wait_for(f"http://127.0.0.1:{self.upstream_port}/health/liveliness", self.upstream, "upstream")

    def start_sidecar(self) -> None:
        env = self._env()
        env.update(
            SIDECAR_UPSTREAM_URL=f"http://127.0.0.1:{self.upstream_port}",
            SIDECAR_ADMIN_KEY=MASTER,
            SIDECAR_POLICY="free_only",
            SIDECAR_HOST="127.0.0.1",
            SIDECAR_PORT=str(self.sidecar_port),
            SIDECAR_READ_TIMEOUT=str(READ_TIMEOUT),
            SIDECAR_CONNECT_TIMEOUT="2",
            SIDECAR_ADMIN_TIMEOUT="2",
            SIDECAR_ADMIN_LOOKUP_RATE="200",
            SIDECAR_SHUTDOWN_TIMEOUT="10",
            SIDECAR_LOG_LEVEL="warning",
            SOAK_STATS_FILE=str(self.dir / "stats.jsonl"),
        )
        command = [sys.executable, str(ROOT / "bench" / "soak_sidecar.py")]
        with (self.dir / "sidecar.log").open("ab") as log:
            self.sidecar = subprocess.Popen(command, env=env, stdout=log, stderr=log)
        self._wait_for(self.url + "/healthz", self.sidecar, "sidecar")
        first = json.loads((self.dir / "stats.jsonl").read_text().splitlines()[0])
        if not Path(first["sidecar"]).resolve().is_relative_to(ROOT):
            raise RuntimeError(f"the sidecar ran {first['sidecar']}, not this tree's ({ROOT})")
        self.notes.append(f"sidecar code: {first['sidecar']}")

    def _wait_for(self, url: str, process: subprocess.Popen[bytes], name: str) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                log = (self.dir / f"{name}.log").read_text()[-2000:]
                raise RuntimeError(f"the {name} did not start (port {url}): {log}")
            time.sleep(0.05)

    async def pause(self, seconds: float) -> None:
        assert self.upstream is not None
        window = Window("pause", self.now())
        self.windows.append(window)
        self.upstream.send_signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(seconds)
        finally:
            self.upstream.send_signal(signal.SIGCONT)
            window.end = self.now()

    async def kill(self, down: float) -> None:
        assert self.upstream is not None
        window = Window("kill", self.now())
        self.windows.append(window)
        self.upstream.kill()
        self.upstream.wait()
        await asyncio.sleep(down)
        await asyncio.to_thread(self.start_upstream)
        window.end = self.now()

    def _disrupter_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.stopping = True

    def stop_all(self) -> None:
        for process in (self.sidecar, self.upstream):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.kill()
                process.wait()

    # --- the clock and the disruptions -------------------------------------------------------------

    def now(self) -> float:
        return time.monotonic() - self.clock

    def disrupted(self, start: float, end: float, kind: str | None = None) -> bool:
        """Whether a request from ``start`` to ``end`` overlapped a disruption (of ``kind``)."""
        for window in self.windows:
            if kind is not None and window.kind != kind:
                continue
            until = (window.end if window.end is not None else float("inf")) + 1.0
            if start <= until and end >= window.start:
                return True
        return False

    async def disrupt(self) -> None:
        period = min(40.0, self.duration / 3.5)
        k = 0
        while (at := period * (k + 0.5)) <= self.duration - 8:
            await asyncio.sleep(max(0.0, at - self.now()))
            if k % 2 == 0:
                await self.pause(self.rng.uniform(1.5, 6.0))
            else:
                await self.kill(self.rng.uniform(0.5, 2.0))
            k += 1

    # --- sampling ----------------------------------------------------------------------------------

    def measure(self) -> dict[str, float]:
        assert self.sidecar is not None
        pid = self.sidecar.pid
        status = Path(f"/proc/{pid}/status").read_text()
        rss_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
        inodes = set()
        fds = 0
        for fd in os.listdir(f"/proc/{pid}/fd"):
            fds += 1
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        upstream = close_wait = 0
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with contextlib.suppress(OSError), open(table) as lines:
                next(lines)
                for line in lines:
                    parts = line.split()
                    if parts[9] in inodes and int(parts[2].rsplit(":", 1)[1], 16) == self.upstream_port:
                        upstream += 1
                        close_wait += parts[3] == TCP_CLOSE_WAIT
        inside = self.ask_inside(pid)
        return {
            "rss_mb": rss_kb / 1024,
            "fds": fds,
            "upstream_conns": upstream,
            "close_wait": close_wait,
            "tasks": inside.get("tasks", float("nan")),
            "requests": inside.get("requests", float("nan")),
            "connections": inside.get("connections", float("nan")),
        }

    def ask_inside(self, pid: int) -> dict[str, float]:
        """The observer's counts (``soak_sidecar.py``), asked with SIGUSR1 now."""
        stats = self.dir / "stats.jsonl"
        lines = len(stats.read_text().splitlines())
        os.kill(pid, signal.SIGUSR1)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            now = stats.read_text().splitlines()
            if len(now) > lines and now[-1].endswith("}"):
                counts: dict[str, float] = json.loads(now[-1])
                return counts
            time.sleep(0.005)
        return {}

    async def sample(self) -> None:
        while not self.stopping:
            t = self.now()
            values = await asyncio.to_thread(self.measure)
            fitted = not any(
                w.start - 0.5 <= t <= (w.end if w.end is not None else float("inf")) + SETTLE
                for w in self.windows
            )
            self.samples.append(Sample(t, values, fitted))
            await asyncio.sleep(self.args.sample_every)

    # --- traffic -----------------------------------------------------------------------------------

    async def client(self, http: httpx.AsyncClient) -> None:
        kinds, weights = list(MIXTURE), list(MIXTURE.values())
        while not self.stopping and self.now() < self.duration:
            kind = self.rng.choices(kinds, weights)[0]
            await self.one(http, kind, self.rng.choice(KINDS))

    async def one(self, http: httpx.AsyncClient, request: str, who: str) -> None:
        key = self.rng.choice(self.callers[who])
        label = f"{request}/{who}" if request != "healthz" else "healthz"
        started = self.now()
        try:
            async with asyncio.timeout(self.args.deadline):
                await getattr(self, f"_{request}")(http, label, key, started)
        except TimeoutError:
            self.outcomes.fail(label, f"no answer within {self.args.deadline} s (t={started:.1f})")
        except httpx.HTTPError as exc:
            self.outcomes.fail(label, f"no answer from the sidecar: {type(exc).__name__}: {exc}")

    def _headers(self, key: str) -> dict[str, str]:
        return {"authorization": f"Bearer {key}"}

    async def _healthz(self, http: httpx.AsyncClient, label: str, key: str, started: float) -> None:
        answer = await http.get(self.url + "/healthz")
        if (answer.status_code, answer.content) == (200, b'{"status":"ok"}'):
            self.outcomes.add(label, "whole")
        else:
            self.outcomes.fail(label, f"{answer.status_code} {answer.content[:200]!r}")

    async def _models(self, http: httpx.AsyncClient, label: str, key: str, started: float) -> None:
        answer = await http.get(self.url + "/v1/models", headers=self._headers(key))
        status, _, payload = self.expect.reply("GET", "/v1/models", key, b"")  # type: ignore[misc]
        if (answer.status_code, answer.content) == (status, payload):
            outcome = "refused: LiteLLM's own (fail closed)" if label.endswith("spent") else "whole"
            self.outcomes.add(label, outcome)
        elif label.endswith("spent") and answer.status_code == 200:
            self._rescued(label, answer)
        else:
            self._error(label, answer.status_code, answer.content, started)

    def _rescued(self, label: str, answer: httpx.Response) -> None:
        marked = answer.headers.get("x-sidecar-budget-exceeded") == "true"
        if self.rescue is None:
            ids = {entry["id"] for entry in answer.json().get("data", [])}
            if marked and ids and ids <= FREE_MODELS:
                self.rescue = answer.content
            else:
                self.outcomes.fail(label, f"a rescue that is not the free models: {answer.content[:300]!r}")
                return
        if marked and answer.content == self.rescue:
            self.outcomes.add(label, "rescued (the free models)")
        else:
            self.outcomes.fail(label, f"a rescue unlike the others: {answer.content[:300]!r}")

    def _chat_request(self, stream: bool, key: str) -> tuple[dict[str, Any], Any]:
        model = (
            "free-model"
            if stream and self.rng.random() < 0.7
            else self.rng.choice(["free-model", "paid-model"])
        )
        body = {
            "model": model,
            "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": self.rng.randint(3, 10),
            "user": uuid.UUID(int=self.rng.getrandbits(128)).hex,
            **({"stream": True} if stream else {}),
        }
        return body, self.expect.reply("POST", "/v1/chat/completions", key, json.dumps(body).encode())

    async def _chat(self, http: httpx.AsyncClient, label: str, key: str, started: float) -> None:
        body, (status, _, payload) = self._chat_request(False, key)
        answer = await http.post(self.url + "/v1/chat/completions", json=body, headers=self._headers(key))
        if (answer.status_code, answer.content) == (status, payload):
            self.outcomes.add(label, "whole")
        else:
            self._error(label, answer.status_code, answer.content, started)

    async def _stream(self, http: httpx.AsyncClient, label: str, key: str, started: float) -> None:
        await self._streamed(http, label, key, started, hang_up=False)

    async def _hangup(self, http: httpx.AsyncClient, label: str, key: str, started: float) -> None:
        await self._streamed(http, label, key, started, hang_up=True)

    async def _streamed(
        self, http: httpx.AsyncClient, label: str, key: str, started: float, hang_up: bool
    ) -> None:
        body, expected = self._chat_request(True, key)
        if hang_up and isinstance(expected, Generated):
            stop_after = self.rng.randint(1, expected.n - 1)  # events, of n and [DONE]
        else:
            stop_after = None
        whole = (
            stream_body(expected.rid, expected.model, expected.n) if isinstance(expected, Generated) else None
        )
        received = b""
        request = http.build_request(
            "POST", self.url + "/v1/chat/completions", json=body, headers=self._headers(key)
        )
        answer = await http.send(request, stream=True)
        try:
            if whole is None or answer.status_code != 200:
                await answer.aread()
                status, _, payload = expected if whole is None else (200, None, whole)
                if whole is None and (answer.status_code, answer.content) == (status, payload):
                    self.outcomes.add(label, "whole")
                else:
                    self._error(label, answer.status_code, answer.content, started)
                return
            try:
                async for chunk in answer.aiter_raw():
                    received += chunk
                    if stop_after is not None and received.count(b"\n\n") >= stop_after:
                        if whole.startswith(received):
                            self.outcomes.add(label, "hung up (prefix right)")
                        else:
                            self.outcomes.fail(label, f"wrong stream before the hang-up: {received[-300:]!r}")
                        return
            except httpx.HTTPError as exc:
                if whole.startswith(received) and self.disrupted(started, self.now()):
                    self.outcomes.add(label, "cut after its headers (disruption)")
                else:
                    why = f"stream broken with no disruption ({type(exc).__name__}, t={started:.1f})"
                    self.outcomes.fail(label, why)
                return
            if received == whole:
                self.outcomes.add(label, "whole")
            else:
                self.outcomes.fail(label, f"a stream that ended cleanly but not whole: {received[-300:]!r}")
        finally:
            await answer.aclose()

    def _error(self, label: str, status: int, content: bytes, started: float) -> None:
        """A clean 502/503/504 with an OpenAI-style body, explained by a disruption; else a failure."""
        ended = self.now()
        try:
            error = json.loads(content)["error"]
            shaped = isinstance(error["message"], str) and error["code"] == str(status)
        except (ValueError, KeyError, TypeError):
            shaped = False
        causes = CAUSES.get((status, error["message"])) if shaped else None
        if status in (502, 503, 504) and shaped:
            for cause in causes or ():
                if self.disrupted(started, ended, cause):
                    self.outcomes.add(label, f"{status} {SHORT[error['message']]} ({cause})")
                    return
            windows = [(w.kind, round(w.start, 1), w.end and round(w.end, 1)) for w in self.windows[-3:]]
            why = f"{status} with no disruption to explain it (t={started:.1f}-{ended:.1f}, {windows})"
            self.outcomes.fail(label, f"{why}: {content[:200]!r}")
            return
        self.outcomes.fail(label, f"unexpected {status} (t={started:.1f}): {content[:300]!r}")

    async def prime(self, http: httpx.AsyncClient) -> None:
        """Every caller's discovery once, before the clock starts: the per-caller caches fill."""
        queue = [key for kind in KINDS for key in self.callers[kind]]
        self.rng.shuffle(queue)

        async def worker() -> None:
            while queue:
                key = queue.pop()
                await self.one_key(http, key, kind_of(key))

        await asyncio.gather(*(worker() for _ in range(self.args.concurrency)))

    async def one_key(self, http: httpx.AsyncClient, key: str, who: str) -> None:
        label = f"prime/{who}"
        try:
            async with asyncio.timeout(self.args.deadline):
                await self._models(http, label, key, self.now())
        except (TimeoutError, httpx.HTTPError) as exc:
            self.outcomes.fail(label, f"no answer: {type(exc).__name__}")

    # --- the run -----------------------------------------------------------------------------------

    async def run(self) -> None:
        # Kept-alive connections are let go after 4 s, before the sidecar's (uvicorn's) 5 s: a request
        # sent on a connection as the server closes it is a client's race, not a lost answer.
        limits = httpx.Limits(
            max_connections=self.args.concurrency,
            max_keepalive_connections=self.args.concurrency,
            keepalive_expiry=4.0,
        )
        timeout = httpx.Timeout(self.args.deadline)
        async with httpx.AsyncClient(limits=limits, timeout=timeout) as http:
            self.clock = time.monotonic()
            self.samples.append(Sample(-1.0, await asyncio.to_thread(self.measure), False))
            started = time.monotonic()
            await self.prime(http)
            primed = sum(len(v) for v in self.callers.values())
            self.notes.append(f"primed: {primed} callers' discovery in {time.monotonic() - started:.1f} s")
            self.clock = time.monotonic()
            sampler = asyncio.ensure_future(self.sample())
            disrupter = asyncio.create_task(self.disrupt())
            # A stand-in that cannot start again (its port taken meanwhile) ends the run, not its clients.
            disrupter.add_done_callback(self._disrupter_done)
            try:
                await asyncio.gather(*(self.client(http) for _ in range(self.args.concurrency)))
            finally:
                self.stopping = True
                disrupter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await disrupter
                await sampler
            answered = sum(n for (request, _), n in self.outcomes.counts.items() if request != "prime")
            self.notes.append(
                f"traffic: {answered} answers in {self.now():.0f} s ({answered / self.now():.0f}/s)"
            )
            metrics = (await http.get(self.url + "/sidecar/metrics")).text
        self.notes.append(_counters(metrics))

    def finish(self) -> None:
        """SIGTERM: the sidecar must stop by itself, with exit status 0; its log must hold no traceback."""
        assert self.sidecar is not None
        self.sidecar.send_signal(signal.SIGTERM)
        try:
            code = self.sidecar.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.outcomes.fail("shutdown", "the sidecar did not stop within 20 s of SIGTERM")
            return
        if code not in (0, -signal.SIGTERM):  # uvicorn ends by the signal it handled (drain_delay 0)
            self.outcomes.fail("shutdown", f"the sidecar exited with status {code}")
        levels: collections.Counter[str] = collections.Counter()
        for line in (self.dir / "sidecar.log").read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                self.outcomes.fail("sidecar log", f"not a JSON line: {line[:200]}")
                continue
            levels[f"{entry.get('level')}:{entry.get('event') or entry.get('message', '')[:60]}"] += 1
            cut = entry.get("message", "").startswith("Exception in ASGI application") and any(
                str(entry.get("error", "")).endswith(text) or text in str(entry.get("error", ""))
                for text in CUT
            )
            if entry.get("level") in ("error", "critical") and not (cut and self.windows):
                self.outcomes.fail("sidecar log", line[:300])
        self.notes.append("sidecar log: " + ", ".join(f"{k} x{v}" for k, v in sorted(levels.items())))


def _counters(metrics: str) -> str:
    wanted = (
        "sidecar_upstream_errors_total{",
        "sidecar_abandoned_total ",
        "sidecar_rescues_total{",
        "sidecar_fail_closed_total{",
        "sidecar_admin_lookups_shed_total ",
        "sidecar_at_capacity_total ",
    )
    found = [line for line in metrics.splitlines() if line.startswith(wanted) and not line.endswith(" 0.0")]
    return "sidecar metrics: " + "; ".join(found)


# --- the verdict on the samples --------------------------------------------------------------------


LIMITS = {  # metric -> (constant, share of the warm value): the growth allowed over the measured part
    "rss_mb": (0.0, 0.10),
    "fds": (20.0, 0.10),
    "upstream_conns": (20.0, 0.25),
    "close_wait": (5.0, 0.0),
    "tasks": (20.0, 0.25),
    "connections": (20.0, 0.25),
}
# What a metric moves with, besides a leak: the requests in flight at the instant of the sample. The line
# is fitted to time and these together, so that a busier or quieter moment (the machine is shared) is not
# taken for growth. ``connections`` (uvicorn's caller connections) is checked on its own, so a leak of
# them cannot hide in a covariate.
COVARIATES = {"fds": ("requests",), "upstream_conns": ("requests",), "tasks": ("requests",)}


def fit(rows: list[list[float]], ys: list[float]) -> list[float]:
    """Least squares: the coefficients of ``ys`` on the columns of ``rows`` (normal equations)."""
    k = len(rows[0])
    a = [
        [sum(r[i] * r[j] for r in rows) for j in range(k)]
        + [sum(r[i] * y for r, y in zip(rows, ys, strict=True))]
        for i in range(k)
    ]
    for col in range(k):
        pivot = max(range(col, k), key=lambda r: abs(a[r][col]))
        if abs(a[pivot][col]) < 1e-9:
            raise ZeroDivisionError
        a[col], a[pivot] = a[pivot], a[col]
        for r in range(k):
            if r != col:
                factor = a[r][col] / a[col][col]
                a[r] = [x - factor * y for x, y in zip(a[r], a[col], strict=True)]
    return [a[i][k] / a[i][i] for i in range(k)]


def slope(samples: list[Sample], metric: str) -> float:
    """The metric's growth per second, the requests in flight held equal."""
    ys = [s.values[metric] for s in samples]
    covariates = COVARIATES.get(metric, ())
    try:
        return fit([[1.0, s.t, *(s.values[c] for c in covariates)] for s in samples], ys)[1]
    except ZeroDivisionError:  # a covariate that did not move
        return fit([[1.0, s.t] for s in samples], ys)[1]


def trends(samples: list[Sample], duration: float) -> tuple[list[list[str]], list[str]]:
    warm_at = WARM * duration
    measured = [s for s in samples if s.t >= warm_at and s.fitted and all(v == v for v in s.values.values())]
    rows, failures = [], []
    if len(measured) < 5:
        return rows, [f"only {len(measured)} samples after the warm-up: run longer or sample more often"]
    span = measured[-1].t - measured[0].t
    for metric, (constant, share) in LIMITS.items():
        start = samples[0].values[metric]
        warm = statistics.median(s.values[metric] for s in measured[:5])
        end = statistics.median(s.values[metric] for s in measured[-5:])
        per_s = slope(measured, metric)
        growth = per_s * span
        limit = constant + share * warm
        ok = growth <= limit
        rows.append(
            [
                metric,
                f"{start:.1f}",
                f"{warm:.1f}",
                f"{end:.1f}",
                f"{per_s * 60:+.2f}",
                f"{growth:+.1f}",
                f"{limit:.1f}",
                "ok" if ok else "GROWS",
            ]
        )
        if not ok:
            failures.append(f"{metric} grows: {growth:+.1f} over {span:.0f} s (limit {limit:.1f})")
    return rows, failures


def table(rows: list[list[str]], header: list[str]) -> Iterator[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        yield "  ".join(
            cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )


def report(soak: Soak) -> int:
    rows, trend_failures = trends(soak.samples, soak.duration)
    print(
        f"\nsoak: {soak.args.minutes:g} min, seed {soak.args.seed}, {soak.args.concurrency} clients, "
        f"{3 * soak.args.callers} distinct callers, {len(soak.samples)} samples every "
        f"{soak.args.sample_every:g} s"
    )
    for note in soak.notes:
        print("  " + note)
    disruptions = collections.Counter(w.kind for w in soak.windows)
    print(
        f"  disruptions: {disruptions['pause']} pauses, {disruptions['kill']} kills and restarts; "
        f"admin API slow 30-40 s and failing 40-50 s of every minute"
    )
    print()
    for line in table(rows, ["metric", "start", "warm", "end", "slope/min", "growth", "limit", ""]):
        print("  " + line)
    print()
    by_request: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for (request, outcome), count in soak.outcomes.counts.items():  # type: ignore[misc]
        by_request[request][outcome] += count
    total = sum(soak.outcomes.counts.values())
    print(f"  answers: {total}")
    for request in sorted(by_request):
        parts = ", ".join(f"{outcome} {count}" for outcome, count in sorted(by_request[request].items()))
        print(f"    {request:<16} {parts}")
    failures = soak.outcomes.failures + trend_failures
    if failures:
        print(f"\nFAILED: {len(failures)}")
        for failure in failures[:40]:
            print("  " + failure)
        if len(failures) > 40:
            print(f"  ... and {len(failures) - 40} more")
        return 1
    print("\nok: every answer whole or a clean error with its cause, nothing grew")
    return 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--callers", type=int, default=2000, help="distinct callers of each kind (default 2000)"
    )
    parser.add_argument("--concurrency", type=int, default=100, help="clients at once (default 100)")
    parser.add_argument("--sample-every", type=float, default=2.0, help="seconds (default 2)")
    parser.add_argument(
        "--deadline", type=float, default=30.0, help="seconds an answer may take (default 30)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the logs' directory")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    soak = Soak(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the ``finally`` below stops what was started
    try:
        soak.start_upstream()
        soak.start_sidecar()
        asyncio.run(soak.run())
        soak.finish()
    finally:
        soak.stop_all()
        if args.keep:
            with (soak.dir / "samples.jsonl").open("w") as out:
                for sample in soak.samples:
                    out.write(
                        json.dumps({"t": round(sample.t, 2), "fitted": sample.fitted, **sample.values}) + "\n"
                    )
            windows = [{"kind": w.kind, "start": w.start, "end": w.end} for w in soak.windows]
            (soak.dir / "windows.json").write_text(json.dumps(windows))
            print(f"logs and samples: {soak.dir}")
        else:
            shutil.rmtree(soak.dir, ignore_errors=True)
    return report(soak)


if __name__ == "__main__":
    sys.exit(main())
