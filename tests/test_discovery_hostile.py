"""Discovery under hostile callers (issue 25): what ``test_http1_hostile.py`` is for the pass-through.

Each test reproduces one finding of the hostile review with raw clients (sockets that send exactly the bytes
a test gives them) against the real sidecar, in front of a scripted upstream or the fake LiteLLM:

- a discovery GET that carries a body is passed through whole; a request the sidecar builds for a caller
  (the budget view's probe) carries none of the caller's framing, so neither an upstream that answers before
  reading a body nor one that waits for it (as LiteLLM does) is left out of step or waiting;
- the pool never reuses a connection whose request did not go out whole by its own head's framing;
- a caller that hangs up stops the upstream work done for it;
- made-up credentials cost LiteLLM exactly the requests they would cost without the sidecar, and no admin
  look-up; per-caller admin look-ups stay within ``admin_lookup_rate``/``admin_lookup_concurrency``;
- a budget refusal marks only the principal that got it.

The last test states these as one property over random mixes of hostile and ordinary callers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from sidecar.litellm.credentials import key_hash
from sidecar.proxy.http1 import ConnectionPool
from tests.conftest import SidecarFactory, bearer
from tests.fake_litellm import KEYS, FakeLiteLLM, Reply, Seen
from tests.scripted import ScriptedUpstream, Stats, connect, ok, read_request, read_response, run
from tests.seeded import END_USER_HEADER

Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter
Handler = Callable[[Reader, Writer], Awaitable[None]]
JSON = [("content-type", "application/json")]
NOT_FOUND: Reply = (404, JSON, b'{"detail":"Not Found"}')
# What LiteLLM answers a key it does not know: its 401 auth_error (no recording has one: written here).
INVALID_KEY = {
    "error": {
        "message": "Authentication Error, Invalid proxy server token passed. Received API Key = sk-...0000",
        "type": "auth_error",
        "param": "None",
        "code": "401",
    }
}
PER_CALLER_LOOKUPS = ("/key/info", "/team/info", "/user/info", "/customer/info", "/organization/info")


# --- helpers -------------------------------------------------------------------------------------------


async def read_body(reader: Reader, head: bytes) -> bytes:
    """The body ``head`` declares (``Content-Length`` or chunked), read after the head."""
    lowered = head.lower()
    if b"transfer-encoding: chunked" in lowered:
        return await reader.readuntil(b"0\r\n\r\n")
    found = re.search(rb"\r\ncontent-length: *(\d+)", lowered)
    return await reader.readexactly(int(found.group(1))) if found else b""


def request_line(head: bytes) -> tuple[bytes, bytes] | None:
    """Method and target of a well-formed request line, else ``None``."""
    parts = head.split(b"\r\n", 1)[0].split(b" ")
    if len(parts) != 3 or parts[0] not in (b"GET", b"HEAD", b"POST") or parts[2] != b"HTTP/1.1":
        return None
    return parts[0], parts[1]


def header(head: bytes, name: bytes) -> bytes | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 11\r\n\r\nbad request"


def answers_before_the_body(seen: list[bytes]) -> Handler:
    """An upstream that answers as soon as it has a request's head and reads the body it declares only then,
    as an HTTP/1.1 server may: each answer names the request it answers; a request line it cannot parse
    (the previous request's missing body swallowed the start of it) gets 400."""

    async def handler(reader: Reader, writer: Writer) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            line = request_line(head)
            if line is None:
                seen.append(head)
                writer.write(BAD_REQUEST)
                await writer.drain()
                return
            writer.write(ok(b"answer to %s %s" % line))
            await writer.drain()
            seen.append(head + await read_body(reader, head))

    return handler


def reads_the_body_first(seen: list[bytes]) -> Handler:
    """An upstream that reads the whole request, the body it declares included, before it answers (as
    LiteLLM does: its auth reads the body)."""

    async def handler(reader: Reader, writer: Writer) -> None:
        while True:
            request = await read_request(reader)
            seen.append(request)
            line = request_line(request)
            writer.write(ok(b"answer to %s %s" % line) if line else BAD_REQUEST)
            await writer.drain()

    return handler


def metric(url: str, name: str) -> float:
    """The sum of the samples of ``name`` on the sidecar's /sidecar/metrics."""
    text = httpx.get(url + "/sidecar/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and line[len(name) : len(name) + 1] in (" ", "{")
    )


def samples(url: str, name: str) -> list[str]:
    return [
        line
        for line in httpx.get(url + "/sidecar/metrics", timeout=5).text.splitlines()
        if line.startswith(name)
    ]


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, Any]]:
    return [f for r in caplog.records if (f := getattr(r, "fields", {})).get("event") == name]


def caller_of(seen: Seen) -> str:
    return (seen.header("authorization") or "").removeprefix("Bearer ").strip()


def without_end_user(seen: Seen) -> Seen:
    return Seen(seen.method, seen.target, [h for h in seen.headers if h[0] != END_USER_HEADER], seen.body)


def ask_all(url: str, callers: list[dict[str, str]], at_once: int) -> list[httpx.Response]:
    """``GET url`` once with each caller's headers, ``at_once`` at a time; the answers in order."""

    async def main() -> list[httpx.Response]:
        limit = asyncio.Semaphore(at_once)
        async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=at_once)) as client:

            async def one(headers: dict[str, str]) -> httpx.Response:
                async with limit:
                    return await client.get(url, headers=headers)

            return await asyncio.gather(*(one(headers) for headers in callers))

    return asyncio.run(main())


def json_reply(status: int, body: Any) -> Reply:
    return status, JSON, json.dumps(body).encode()


# --- 1. a discovery GET with a body; a built request with none -----------------------------------------

WITH_BODY = [
    pytest.param(b"/v1/models", id="list"),
    pytest.param(b"/v1/models/free-model", id="retrieve"),
    pytest.param(b"/sidecar/v1/budget", id="budget-view"),
]


def get_with_a_body(url: str, target: bytes) -> tuple[int, bytes]:
    """A raw caller's ``GET target`` declaring and sending a one-byte body; the answer it got."""
    with connect(url) as sock:
        sock.sendall(
            b"GET %s HTTP/1.1\r\nhost: x\r\nauthorization: Bearer sk-caller-0001\r\n"
            b"content-length: 1\r\n\r\nx" % target
        )
        status, _, body = read_response(sock)
    return status, body


@pytest.mark.parametrize("target", WITH_BODY)
def test_a_get_with_a_body_leaves_an_early_answering_upstream_in_step_for_the_next_caller(
    sidecar: SidecarFactory, target: bytes
) -> None:
    """Issue 25: the caller's 'Content-Length: 1' went with the request the sidecar built, whose body never
    came; an upstream that answers before reading a body then read the next caller's POST as that body."""
    seen: list[bytes] = []
    with ScriptedUpstream(answers_before_the_body(seen)) as upstream, httpx.Client(timeout=5) as client:
        url = sidecar(upstream_url=upstream.url, policy="blocked", admin_key=None, read_timeout=30)
        status, _ = get_with_a_body(url, target)
        assert status == 200
        for n in range(3):  # the next callers, on the pooled connections
            answer = client.post(url + "/v1/chat/completions", content=b'{"n": %d}' % n)
            assert (answer.status_code, answer.text) == (200, "answer to POST /v1/chat/completions")
        assert not any(request_line(request) is None for request in seen)


@pytest.mark.parametrize("target", WITH_BODY)
def test_a_get_with_a_body_is_answered_at_once_by_an_upstream_that_waits_for_the_body(
    sidecar: SidecarFactory, target: bytes
) -> None:
    """Issue 25: the declared body that never came left LiteLLM waiting for it until read_timeout. A
    discovery GET with a body goes through whole (``routes.carries_body``): the caller gets the upstream's
    own answer and no probe is made for it; the budget view's probe carries no framing at all."""
    seen: list[bytes] = []
    with ScriptedUpstream(reads_the_body_first(seen)) as upstream:
        url = sidecar(upstream_url=upstream.url, policy="blocked", admin_key=None, read_timeout=30)
        started = time.monotonic()
        status, body = get_with_a_body(url, target)  # the socket gives up after 5 s
        assert time.monotonic() - started < 5
    if target == b"/sidecar/v1/budget":  # the sidecar's own route: its probe is a request it builds
        assert status == 200 and json.loads(body)["verdict"] == "within"
        assert [request_line(r) for r in seen] == [(b"GET", b"/cursor/v1/models")]
        assert header(seen[0], b"content-length") is None and header(seen[0], b"expect") is None
    else:  # passed through whole, body included: LiteLLM's own answer
        assert (status, body) == (200, b"answer to GET " + target)
        assert len(seen) == 1 and request_line(seen[0]) == (b"GET", target)
        assert header(seen[0], b"content-length") == b"1" and seen[0].endswith(b"\r\n\r\nx")


def test_a_chunked_get_on_a_discovery_route_is_passed_through_with_its_body(sidecar: SidecarFactory) -> None:
    seen: list[bytes] = []
    with ScriptedUpstream(reads_the_body_first(seen)) as upstream:
        url = sidecar(upstream_url=upstream.url, policy="blocked", admin_key=None, read_timeout=30)
        with connect(url) as sock:
            sock.sendall(
                b"GET /v1/models HTTP/1.1\r\nhost: x\r\nauthorization: Bearer sk-caller-0001\r\n"
                b"transfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
            )
            status, _, body = read_response(sock)
    assert (status, body) == (200, b"answer to GET /v1/models")
    assert len(seen) == 1  # the caller's request, no probe
    framed = seen[0].split(b"\r\n\r\n", 1)[1]  # its body went up (framed by length or chunked)
    assert framed in (b"abc", b"3\r\nabc\r\n0\r\n\r\n")


# --- 2. the pool guard ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "body", "method"),
    [
        pytest.param(
            b"GET /hostile HTTP/1.1\r\nhost: t\r\ncontent-length: 1\r\n\r\n", None, "GET", id="length-no-body"
        ),
        pytest.param(
            b"POST /hostile HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\n\r\n",
            b"ab",
            "POST",
            id="length-short",
        ),
        pytest.param(
            b"POST /hostile HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n",
            b"{}",
            "POST",
            id="chunked-sent-raw",
        ),
    ],
)
def test_a_head_declaring_a_body_it_does_not_carry_never_leaves_its_connection_reusable(
    head: bytes, body: bytes | None, method: str
) -> None:
    seen: list[bytes] = []

    async def test(pool: ConnectionPool, stats: Stats) -> None:
        response = await pool.request(head, body, method=method)
        assert (response.status, await response.read()) == (200, b"answer to %s /hostile" % method.encode())
        response.release()
        await asyncio.sleep(0.05)
        post = b"POST /next HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\n\r\n"
        response = await pool.request(post, b"{}", method="POST")
        assert (response.status, await response.read()) == (200, b"answer to POST /next")
        response.release()

    stats = run(answers_before_the_body(seen), test)
    assert stats.connections == 2  # the next request went out on a connection of its own
    assert request_line(seen[-1]) == (b"POST", b"/next") and seen[-1].endswith(b"\r\n\r\n{}")


# --- 3. a caller that hangs up -------------------------------------------------------------------------


def test_a_caller_that_hangs_up_on_a_slow_discovery_answer_frees_the_upstream(
    sidecar: SidecarFactory,
) -> None:
    async def silent(reader: Reader, writer: Writer) -> None:
        await read_request(reader)
        await reader.read()  # LiteLLM busy; only the sidecar closing the connection ends this

    with ScriptedUpstream(silent) as upstream:
        url = sidecar(upstream_url=upstream.url, policy="blocked", admin_key=None, read_timeout=60)
        with connect(url) as sock:
            sock.sendall(
                b"GET /v1/models HTTP/1.1\r\nhost: x\r\nauthorization: Bearer sk-caller-0001\r\n\r\n"
            )
            assert upstream.wait_for(lambda stats: len(stats.requests) == 1)
            left = time.monotonic()
        assert upstream.wait_for(lambda stats: len(stats.closed_by_client) == 1, timeout=3)
        assert upstream.stats.closed_by_client[0] - left < 1.0
        assert metric(url, "sidecar_abandoned_total") == 1
        assert len(upstream.stats.requests) == 1  # the caller's request only: no probe for a stranger


def test_a_caller_that_hangs_up_on_its_budget_view_frees_the_probe(sidecar: SidecarFactory) -> None:
    """/sidecar/v1/budget asks LiteLLM's probe route with the caller's key; a caller that leaves while
    LiteLLM is slow must not leave that request holding a connection until read_timeout."""

    async def silent(reader: Reader, writer: Writer) -> None:
        await read_request(reader)
        await reader.read()

    with ScriptedUpstream(silent) as upstream:
        url = sidecar(upstream_url=upstream.url, policy="blocked", admin_key=None, read_timeout=60)
        with connect(url) as sock:
            sock.sendall(
                b"GET /sidecar/v1/budget HTTP/1.1\r\nhost: x\r\nauthorization: Bearer sk-caller-0001\r\n\r\n"
            )
            assert upstream.wait_for(lambda stats: len(stats.requests) == 1)
            left = time.monotonic()
        assert upstream.wait_for(lambda stats: len(stats.closed_by_client) == 1, timeout=3)
        assert upstream.stats.closed_by_client[0] - left < 1.0
        assert b"/cursor/v1/models" in upstream.stats.requests[0]


def test_a_known_caller_that_hangs_up_frees_its_probe_too(sidecar: SidecarFactory) -> None:
    """A credential LiteLLM admitted lately is probed alongside its request: when its caller leaves, both
    upstream requests made for it are closed, not only the one the caller was waiting for (no other caller
    shares that probe here). Fails on 5ff34ca: the probe runs as the budget states' single-flight load,
    which a leaving caller does not cancel, and holds its connection until read_timeout."""
    first: list[bytes] = []

    async def slow_after_the_first_pair(reader: Reader, writer: Writer) -> None:
        while True:
            request = await read_request(reader)
            first.append(request)
            if len(first) > 2:  # the caller's first /v1/models and its probe are answered at once
                await reader.read()
                return
            writer.write(ok(b'{"object":"list","data":[]}', b"content-type: application/json\r\n"))
            await writer.drain()

    with ScriptedUpstream(slow_after_the_first_pair) as upstream, httpx.Client(timeout=5) as client:
        url = sidecar(upstream_url=upstream.url, admin_key="sk-admin-unused", read_timeout=60, budget_ttl=0)
        headers = {"authorization": "Bearer sk-caller-0001"}
        assert client.get(url + "/v1/models", headers=headers).status_code == 200  # admitted now
        assert [request_line(r) for r in first] == [(b"GET", b"/v1/models"), (b"GET", b"/cursor/v1/models")]
        with connect(url) as sock:
            sock.sendall(
                b"GET /v1/models HTTP/1.1\r\nhost: x\r\nauthorization: Bearer sk-caller-0001\r\n\r\n"
            )
            assert upstream.wait_for(lambda stats: len(first) == 4)  # its request and its probe
            left = time.monotonic()
        assert upstream.wait_for(lambda stats: len(stats.closed_by_client) == 2, timeout=3), (
            "an upstream request made for a caller that left is still open"
        )
        assert max(upstream.stats.closed_by_client) - left < 1.0
        assert metric(url, "sidecar_abandoned_total") == 1


# --- 4. strangers cost LiteLLM nothing -----------------------------------------------------------------


def litellm_refuses_strangers(fake: FakeLiteLLM) -> None:
    """The fake answers a key it has no recording for as LiteLLM answers a key it does not know: 401."""

    def by_caller(seen: Seen) -> Reply:
        if caller_of(seen) not in KEYS.values():
            return json_reply(401, INVALID_KEY)
        return fake.recorded(seen) or NOT_FOUND

    for route in ("/v1/models", "/cursor/v1/models"):
        fake.overrides[("GET", route)] = by_caller


@pytest.mark.parametrize("kind", ["virtual-keys", "other-credentials-naming-end-users"])
def test_a_flood_of_made_up_keys_costs_litellm_one_request_each_and_no_admin_look_up(
    fake: FakeLiteLLM, sidecar: SidecarFactory, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    """Issue 25: 11,000 made-up keys on /v1/models made 11,001 admin look-ups (and a probe each)."""
    fake.use_version("1.110.2")
    litellm_refuses_strangers(fake)
    url = sidecar()
    flood = 300
    if kind == "virtual-keys":
        callers = [{"authorization": f"Bearer sk-made-up-{n:05d}"} for n in range(flood)]
    else:
        callers = [
            {"authorization": f"Bearer made-up-{n:05d}", END_USER_HEADER: f"victim-{n}"} for n in range(flood)
        ]
    with caplog.at_level(logging.INFO):
        answers = ask_all(url + "/v1/models", callers, at_once=20)
    assert all((answer.status_code, answer.json()) == (401, INVALID_KEY) for answer in answers)
    assert len(fake.seen) == flood
    assert {(s.method, s.target) for s in fake.seen} == {("GET", "/v1/models")}  # no probe
    assert fake.admin_requests() == []
    assert events(caplog, "budget_unknown") == [] and events(caplog, "budget_source_failed") == []
    assert samples(url, "sidecar_budget_source_failures_total") == []
    assert metric(url, "sidecar_budget_unknown_total") == 0


def test_a_key_revoked_after_litellm_admitted_it_costs_no_admin_look_up(
    fake: FakeLiteLLM, sidecar: SidecarFactory, caplog: pytest.LogCaptureFixture
) -> None:
    fake.use_version("1.110.2")
    url = sidecar(budget_ttl=0)  # every request establishes the state again
    with caplog.at_level(logging.INFO), httpx.Client(timeout=10) as client:
        assert client.get(url + "/v1/models", headers=bearer("KEY_HEALTHY")).status_code == 200
        assert [s.target for s in fake.seen] == ["/v1/models", "/cursor/v1/models"]  # admitted
        for route in ("/v1/models", "/cursor/v1/models"):  # then the key is deleted in LiteLLM
            fake.answer("GET", route, 401, INVALID_KEY)
        for _ in range(3):
            answer = client.get(url + "/v1/models", headers=bearer("KEY_HEALTHY"))
            assert (answer.status_code, answer.json()) == (401, INVALID_KEY)
    assert fake.admin_requests() == []
    assert {s.target for s in fake.seen} == {"/v1/models", "/cursor/v1/models"}
    assert events(caplog, "budget_unknown") == [] and events(caplog, "budget_source_failed") == []
    assert samples(url, "sidecar_budget_source_failures_total") == []


# --- 5. the admin look-up bound ------------------------------------------------------------------------


@dataclass
class InFlight:
    now: int = 0
    most: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def enter(self) -> None:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)

    def leave(self) -> None:
        with self.lock:
            self.now -= 1


def spent_keys_everywhere(fake: FakeLiteLLM, keys: list[str], lookups: InFlight) -> dict[str, Any]:
    """Each of ``keys`` is real and spent at its own level, as KEY_KEY_BROKE is on LiteLLM 1.88: LiteLLM
    refuses it /v1/models and the probe, and its /key/info reports it over its max_budget (each look-up
    taking 0.2 s, counted in ``lookups``). Returns the refusal."""
    refusal: dict[str, Any] = fake.recorded_body("KEY_KEY_BROKE", "GET /v1/models")
    record = fake.recorded_body(
        "MASTER looking up KEY_KEY_BROKE", f"GET /key/info?key={key_hash(KEYS['KEY_KEY_BROKE'])}"
    )

    def refused_if_spent(seen: Seen) -> Reply:
        if caller_of(seen) in keys:
            return json_reply(429, refusal)
        return fake.recorded(seen) or NOT_FOUND

    async def key_info(seen: Seen) -> Reply:
        lookups.enter()
        try:
            await asyncio.sleep(0.2)
        finally:
            lookups.leave()
        return json_reply(200, {**record, "key": seen.target.rsplit("=", 1)[1]})

    fake.overrides[("GET", "/v1/models")] = refused_if_spent
    fake.overrides[("GET", "/cursor/v1/models")] = refused_if_spent
    for key in keys:
        fake.overrides[("GET", f"/key/info?key={key_hash(key)}")] = key_info
    return refusal


def test_admin_look_ups_for_callers_stay_within_their_bound_and_the_rest_get_litellms_answer(
    fake: FakeLiteLLM, sidecar: SidecarFactory, caplog: pytest.LogCaptureFixture
) -> None:
    fake.use_version("1.88.6")
    lookups = InFlight()
    keys = [f"sk-spent-{n:04d}" for n in range(40)]
    refusal = spent_keys_everywhere(fake, keys, lookups)
    url = sidecar(admin_lookup_rate=5, admin_lookup_concurrency=2)
    callers = [{"authorization": f"Bearer {key}"} for key in keys]
    with caplog.at_level(logging.INFO):
        started = time.monotonic()
        answers = ask_all(url + "/v1/models", callers, at_once=len(callers))
        elapsed = time.monotonic() - started
    asked = [s for s in fake.seen if s.target.startswith(PER_CALLER_LOOKUPS)]
    assert len(asked) <= 5 + 5 * elapsed + 1  # a burst of admin_lookup_rate, then admin_lookup_rate a second
    assert lookups.most <= 2
    rescued = [a for a in answers if a.headers.get("x-sidecar-budget-exceeded") == "true"]
    theirs = [a for a in answers if a not in rescued]
    assert rescued and theirs
    assert all(a.status_code == 200 and a.headers["x-sidecar-budget-scope"] == "key" for a in rescued)
    for answer in theirs:  # LiteLLM's own refusal, unchanged
        assert (answer.status_code, answer.json()) == (429, refusal)
        assert not any(name.startswith("x-sidecar") for name in answer.headers)
    assert metric(url, "sidecar_admin_lookups_shed_total") >= len(theirs)
    assert len(events(caplog, "admin_lookups_shed")) == 1  # at most one line every 10 s
    assert events(caplog, "budget_source_failed") == []  # a look-up shed is the bound kept, not a failure


# --- 6. a refusal is evidence about its own principal only ---------------------------------------------


def test_one_caller_cannot_word_its_refusal_to_mark_another_end_user_as_spent(
    fake: FakeLiteLLM, sidecar: SidecarFactory
) -> None:
    fake.use_version("1.110.2")
    crafted = "victim over budget. x"
    refusal = {
        "error": {
            "message": f"ExceededBudget: End User={crafted} over budget. Spend=0.02, Budget=0.01",
            "type": "budget_exceeded",
            "param": None,
            "code": "422",
        }
    }

    def chat(seen: Seen) -> Reply:
        if seen.header(END_USER_HEADER) == crafted:  # the attacker spent its own end user's budget
            return json_reply(422, refusal)
        return fake.recorded(seen) or NOT_FOUND

    def any_end_user(seen: Seen) -> Reply:  # these keys list models whichever end user they name
        return fake.recorded(without_end_user(seen)) or NOT_FOUND

    fake.overrides[("POST", "/v1/chat/completions")] = chat
    fake.overrides[("GET", "/v1/models")] = any_end_user
    fake.overrides[("GET", "/cursor/v1/models")] = any_end_user
    url = sidecar()
    with httpx.Client(timeout=10) as client:
        attacker = {**bearer("KEY_END_USER_CALLER"), END_USER_HEADER: crafted}
        answer = client.post(url + "/v1/chat/completions", headers=attacker, json={"model": "free-model"})
        assert (answer.status_code, answer.json()) == (422, refusal)
        victim = {**bearer("KEY_HEALTHY"), END_USER_HEADER: "victim"}
        listed = client.get(url + "/v1/models", headers=victim)
    assert listed.status_code == 200 and len(listed.json()["data"]) == 4
    assert not any(name.startswith("x-sidecar") for name in listed.headers)


# --- 7. the property -----------------------------------------------------------------------------------

ADMIN_KEY = "sk-admin-property"
MARKER = re.compile(rb"mk-\d{4}-\d{4}")
KINDS = ("post", "list", "retrieve", "with-body", "bad-key", "spent", "hostile-path", "hang-up")
HOSTILE_PATHS = (b"//v1/models", b"/v1/models/%2e%2e", b"/v1/models/..", b"/models/a%2fb", b"/v1/models//x")


@dataclass
class EchoUpstream:
    """A LiteLLM stand-in that puts each request's ``x-marker`` in its answer (model ids included), refuses
    ``sk-bad-*`` keys, reports ``sk-spent-*`` keys over budget on the probe route, answers the admin's
    /key/info, and never answers a request marked ``x-behave: slow`` (only its closing ends it)."""

    open: int = 0
    # connection -> (marker, target) of a slow request it holds
    unanswered: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    lookups: InFlight = field(default_factory=InFlight)
    lookup_times: list[float] = field(default_factory=list)

    async def __call__(self, reader: Reader, writer: Writer) -> None:
        self.open += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                body = await read_body(reader, head)
                if not await self._answer(head, body, reader, writer):
                    return
        finally:
            self.open -= 1
            self.unanswered.pop(id(writer), None)

    async def _answer(self, head: bytes, body: bytes, reader: Reader, writer: Writer) -> bool:
        line = request_line(head)
        if line is None:
            writer.write(BAD_REQUEST)
            return False
        target = line[1]
        path = target.split(b"?")[0]
        key = (header(head, b"authorization") or b"").removeprefix(b"Bearer ")
        marker = header(head, b"x-marker") or b"none"
        if key == ADMIN_KEY.encode():
            self.lookups.enter()
            self.lookup_times.append(time.monotonic())
            try:
                await asyncio.sleep(0.05)
            finally:
                self.lookups.leave()
            token = target.rsplit(b"=", 1)[1].decode()
            record = {
                "key": token,
                "info": {"spend": 2.0, "max_budget": 1.0, "team_id": None, "user_id": None},
            }
            writer.write(_json(200, record))
            return True
        if header(head, b"x-behave") == b"slow":
            self.unanswered[id(writer)] = (marker, target)
            await reader.read()
            return False
        if key.startswith(b"sk-bad-"):
            writer.write(
                _json(401, {"error": {"message": f"Invalid key {marker.decode()}", "type": "auth_error"}})
            )
        elif path == b"/cursor/v1/models" and key.startswith(b"sk-spent-"):
            message = (
                f"Budget has been exceeded! Key=spent Current cost: 2.0, Max budget: 1.0 {marker.decode()}"
            )
            writer.write(
                _json(422, {"error": {"message": message, "type": "budget_exceeded", "code": "422"}})
            )
        elif path in (b"/v1/models", b"/cursor/v1/models"):
            model = {"id": f"m-{marker.decode()}", "object": "model", "created": 1, "owned_by": "openai"}
            writer.write(_json(200, {"data": [model], "object": "list"}))
        else:
            echoed = {
                "marker": marker.decode(),
                "target": target.decode("latin-1"),
                "body": body.decode("latin-1"),
            }
            writer.write(_json(200, echoed))
        await writer.drain()
        return True


def _json(status: int, payload: Any) -> bytes:
    body = json.dumps(payload).encode()
    return b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
        status,
        len(body),
        body,
    )


@dataclass
class Planned:
    kind: str
    marker: str
    method: bytes
    target: bytes
    headers: dict[str, str]
    body: bytes = b""
    raw: bool = True
    known: bool = False  # a hang-up by a caller LiteLLM admitted just before: its probe goes alongside


def plan(rng: random.Random, worker: int, n: int) -> Planned:
    marker = f"mk-{worker:04d}-{n:04d}"
    kind = rng.choice(KINDS)
    headers = {"x-marker": marker, "authorization": f"Bearer sk-good-{rng.randrange(4)}"}
    raw = rng.random() < 0.5
    if kind == "post":
        body = b'{"m":"%s"}' % marker.encode()
        return Planned(kind, marker, b"POST", b"/v1/chat/completions", headers, body, raw)
    if kind == "list":
        return Planned(kind, marker, b"GET", rng.choice((b"/v1/models", b"/models")), headers, raw=raw)
    if kind == "retrieve":
        return Planned(kind, marker, b"GET", b"/v1/models/m-" + marker.encode(), headers, raw=raw)
    if kind == "with-body":
        target = rng.choice((b"/v1/models", b"/v1/models/m-" + marker.encode(), b"/model/info"))
        return Planned(kind, marker, b"GET", target, headers, b"x")
    if kind == "bad-key":
        bad = {**headers, "authorization": f"Bearer sk-bad-{worker}-{n}"}
        return Planned(kind, marker, b"GET", rng.choice((b"/v1/models", b"/v1/models/x")), bad, raw=raw)
    if kind == "spent":
        spent = {**headers, "authorization": f"Bearer sk-spent-{rng.randrange(30)}"}
        return Planned(kind, marker, b"GET", b"/v1/models", spent, raw=raw)
    if kind == "hostile-path":
        return Planned(kind, marker, b"GET", rng.choice(HOSTILE_PATHS), headers)  # as sent: raw
    # A hang-up: a key of its own (a slow answer is never shared with a caller that stays), new to the
    # sidecar or admitted by LiteLLM just before.
    slow = {**headers, "x-behave": "slow", "authorization": f"Bearer sk-leaving-{worker}-{n}"}
    target = rng.choice((b"/v1/models", b"/v1/models/m-x"))
    return Planned(kind, marker, b"GET", target, slow, known=rng.random() < 0.5)


def send_raw(url: str, planned: Planned, rng: random.Random) -> bytes | None:
    """The request, byte by byte, on a connection of its own; the answer's body (``None``: hung up)."""
    lines = [b"%s %s HTTP/1.1" % (planned.method, planned.target), b"host: x"]
    lines += [f"{name}: {value}".encode() for name, value in planned.headers.items()]
    if planned.body:
        lines.append(b"content-length: %d" % len(planned.body))
    if planned.known:  # LiteLLM admits the key first, and the budget state it got expires (budget_ttl)
        quick = {k: v for k, v in planned.headers.items() if k != "x-behave"}
        send_raw(url, Planned("list", planned.marker, b"GET", b"/v1/models", quick), rng)
        time.sleep(0.25)
    with connect(url) as sock:
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + planned.body)
        if planned.kind == "hang-up":
            time.sleep(rng.uniform(0.0, 0.2))
            return None
        return read_response(sock)[2]


@pytest.mark.parametrize("seed", range(3))
def test_every_answer_is_its_own_requests_and_no_connection_outlives_its_caller(
    sidecar: SidecarFactory, seed: int
) -> None:
    rng = random.Random(seed)
    upstream_state = EchoUpstream()
    workers, per_worker = 6, 20
    plans = [[plan(rng, w, n) for n in range(per_worker)] for w in range(workers)]
    answers: dict[str, bytes | None] = {}
    errors: list[BaseException] = []

    with ScriptedUpstream(upstream_state) as upstream:
        url = sidecar(
            upstream_url=upstream.url,
            admin_key=ADMIN_KEY,
            read_timeout=30,
            budget_ttl=0.2,
            admin_lookup_rate=5,
            admin_lookup_concurrency=2,
        )

        def worker(mine: list[Planned], own_rng: random.Random) -> None:
            try:
                with httpx.Client(timeout=5) as client:
                    for planned in mine:
                        if planned.raw:
                            answers[planned.marker] = send_raw(url, planned, own_rng)
                            continue
                        answer = client.request(
                            planned.method.decode(),
                            url + planned.target.decode(),
                            headers=planned.headers,
                            content=planned.body or None,
                        )
                        answers[planned.marker] = answer.content
            except BaseException as exc:  # noqa: BLE001 - reported by the test below
                errors.append(exc)

        started = time.monotonic()
        threads = [
            threading.Thread(target=worker, args=(plans[w], random.Random(seed * 100 + w)))
            for w in range(workers)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        elapsed = time.monotonic() - started
        assert errors == []
        for planned in (p for mine in plans for p in mine):
            body = answers[planned.marker]
            if planned.kind == "hang-up":
                assert body is None
                continue
            assert body is not None and set(MARKER.findall(body)) == {planned.marker.encode()}, (
                planned,
                body,
            )
        assert upstream_state.lookups.most <= 2  # admin_lookup_concurrency
        assert len(upstream_state.lookup_times) <= 5 + 5 * elapsed + 1  # admin_lookup_rate
        # No upstream connection is left holding a request whose caller has gone ...
        pinned = upstream.wait_for(lambda _: not upstream_state.unanswered, timeout=3)
        assert pinned, f"still open for callers that left: {sorted(upstream_state.unanswered.values())}"
        # ... and what stays open is the pool's idle connections (at most two per caller at a time: its
        # request and its probe) and the admin client's.
        assert upstream_state.open <= 2 * workers + 2
