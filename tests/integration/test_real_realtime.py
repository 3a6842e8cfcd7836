"""Realtime WebSockets through the sidecar in front of real LiteLLM, with the official ``openai`` client.

The harness (``up --beyond-chat``) gives LiteLLM two WebSocket models on a provider that serves a realtime
session: ``realtime-model`` (free) and ``realtime-paid-model``. Each principal opens a session on each, GA
(``client.realtime.connect``) and beta (``client.beta.realtime.connect``, ``OpenAI-Beta: realtime=v1``),
straight to LiteLLM and through the sidecar, and asks for one response: what the caller sees - the events
by type, the text, the close, or the refusal's status and body - must be the same both ways. LiteLLM's
answers to spent callers (the harness's README, measured): a spent key on the paid model gets HTTP 403
with an empty body before the upgrade, which the sidecar passes on with its budget marks; the free model
serves them, except 1.88.6's user budget, which sends an ``error`` event and closes 1011 after the upgrade.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.integration.conftest import REPORT, LiteLLM
from tests.seeded import SCOPE, credentials

pytestmark = pytest.mark.integration

MODELS = ("realtime-model", "realtime-paid-model")
PRINCIPALS = ("KEY_HEALTHY", "KEY_TEAM_BROKE", "KEY_KEY_BROKE", "KEY_USER_BROKE")
MARKS = ("x-sidecar-budget-exceeded", "x-sidecar-budget-scope")


@dataclass(frozen=True)
class Seen:
    """What a realtime caller saw: refused (status, body) or served (event types, text, close)."""

    status: int  # 101, or the refusal's
    body: bytes = b""
    events: tuple[str, ...] = ()
    text: str = ""
    close: tuple[int, str] | None = None  # the close LiteLLM gave, when it closed first
    marks: tuple[tuple[str, str], ...] = ()

    def shown(self) -> str:
        if self.status != 101:
            return f"{self.status} {self.body!r}"
        if self.close is not None:
            return f"101, {'/'.join(self.events)}, close {self.close[0]}"
        return "served" if self.events[-1:] == ("response.done",) else f"101, {'/'.join(self.events)}"


def session(base_url: str, principal: str, keys: dict[str, str], model: str, beta: bool) -> Seen:
    """One realtime session with the official client: connect, read ``session.created``, ask for a
    response and read its events through ``response.done`` (or whatever LiteLLM says instead)."""
    headers = credentials(principal, keys)
    key = headers.pop("Authorization").removeprefix("Bearer ")
    client = openai.OpenAI(
        base_url=base_url + "/v1",
        websocket_base_url=base_url.replace("http://", "ws://", 1) + "/v1",  # the beta client assumes wss
        api_key=key,
        max_retries=0,
        default_headers=headers,
    )
    realtime: Any = client.beta.realtime if beta else client.realtime
    events: list[str] = []
    text = ""
    try:
        with realtime.connect(model=model) as connection:
            first = connection.recv()
            events.append(first.type)
            if first.type == "session.created":
                connection.response.create()
                for event in connection:
                    events.append(event.type)
                    text += getattr(event, "delta", "") if event.type.endswith("text.delta") else ""
                    if event.type in ("response.done", "error"):
                        break
            else:
                connection.recv()  # LiteLLM's close after its error event
    except InvalidStatus as refused:
        answer = refused.response
        marks = tuple((name, answer.headers[name]) for name in MARKS if name in answer.headers)
        return Seen(answer.status_code, bytes(answer.body), marks=marks)
    except ConnectionClosed as closed:
        frame = closed.rcvd
        return Seen(
            101, events=tuple(events), text=text, close=(frame.code, frame.reason) if frame else (1006, "")
        )
    return Seen(101, events=tuple(events), text=text)


def lists_its_models(sidecar: str, principal: str, keys: dict[str, str]) -> None:
    """What a client's model picker does first: the sidecar then knows the caller, and judges an empty 403
    on its handshake (LiteLLM's answer to a wrong key too) as a budget refusal when its state says spent."""
    httpx.get(sidecar + "/v1/models", headers=credentials(principal, keys), timeout=30)


@pytest.mark.parametrize("beta", [False, True], ids=["ga", "beta"])
def test_realtime_sessions_through_the_sidecar_are_litellms_own(litellm: LiteLLM, beta: bool) -> None:
    sidecar = litellm.sidecar("all")
    table = []
    for principal in PRINCIPALS:
        lists_its_models(sidecar, principal, litellm.keys)
        for model in MODELS:
            direct = session(litellm.url, principal, litellm.keys, model, beta)
            through = session(sidecar, principal, litellm.keys, model, beta)
            assert (through.status, through.body, through.events, through.text, through.close) == (
                direct.status,
                direct.body,
                direct.events,
                direct.text,
                direct.close,
            ), (principal, model)
            assert direct.marks == ()
            table.append(f"{principal} {model}: {direct.shown()} | {through.shown()} {dict(through.marks)}")
            if principal == "KEY_HEALTHY":
                assert through.events[0] == "session.created" and through.events[-1] == "response.done"
                assert through.text == "Hello world"
            elif model == "realtime-paid-model":  # refused before the upgrade, marked through the sidecar
                assert (through.status, through.body) == (403, b"")
                assert dict(through.marks) == {
                    "x-sidecar-budget-exceeded": "true",
                    "x-sidecar-budget-scope": SCOPE[principal],
                }
            elif principal == "KEY_USER_BROKE" and litellm.version == "1.88.6":
                assert through.events == ("error",) and through.close is not None
                assert through.close[0] == 1011
            else:  # a spent caller on the free model: served
                assert through.events[-1] == "response.done"
    REPORT[f"realtime {litellm.version} {'beta' if beta else 'ga'} (direct | sidecar)"] = "; ".join(table)


def test_a_paid_realtime_model_refused_for_budget_falls_back_to_the_free_one(litellm: LiteLLM) -> None:
    sidecar = litellm.sidecar("all", fallback='{"realtime-paid-model": "realtime-model"}')
    for principal in ("KEY_TEAM_BROKE", "KEY_KEY_BROKE"):
        assert session(litellm.url, principal, litellm.keys, "realtime-paid-model", False).status == 403
        lists_its_models(sidecar, principal, litellm.keys)
        through = session(sidecar, principal, litellm.keys, "realtime-paid-model", False)
        assert through.events[0] == "session.created" and through.events[-1] == "response.done", principal
        assert through.text == "Hello world"
    fallbacks = [line for line in litellm.sidecar_log(sidecar) if line.get("event") == "fallback"]
    assert [(line["outcome"], line["target"], line["route"]) for line in fallbacks] == [
        ("served", "realtime-model", "websocket")
    ] * 2
