"""The opt-in budget fallback (``fallback``) in front of real LiteLLM, with the official clients.

Each seeded spent principal asks for ``paid-model``, which LiteLLM refuses for its budget, through a
sidecar with ``fallback: {paid-model: free-model}``: by chat completion, completion and Responses (the
``openai`` client) and Anthropic Messages (the ``anthropic`` client), JSON and SSE.

The suite's harness (``up --beyond-chat``) has a provider that serves all four routes: LiteLLM sends a
Responses call - and, for its OpenAI-provider models, a Messages call too - to the provider's
``/v1/responses``, and a completion to its ``/v1/completions``. So a fallback LiteLLM lets past its access
and budget checks is served on every route, and the caller gets what LiteLLM answers the free model
directly: the same ``model`` (a Responses or Messages stream names the provider's model, ``fake-model``)
and the same text.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.integration.conftest import REPORT, LiteLLM
from tests.integration.record import as_client_sends
from tests.integration.test_real_litellm import direct_is_budget_error
from tests.official_clients import (
    HI,
    Asked,
    anthropic_for,
    ask_chat,
    ask_completion,
    ask_messages,
    ask_responses,
    key_and_rest,
    openai_for,
)
from tests.seeded import BROKE, credentials

pytestmark = pytest.mark.integration

RULE = '{"paid-model": "free-model"}'
# Spent principals whose paid request LiteLLM refuses for their budget (the access-limited keys get a
# denial, which never falls back).
FALLING_BACK = [p for p in BROKE if p not in ("KEY_FREE_ONLY", "KEY_GROUP_ONLY")]


def direct(litellm: LiteLLM, principal: str, path: str, body: dict[str, Any]) -> httpx.Response:
    """The same request straight to LiteLLM, as the route's client sends it."""
    key, headers = key_and_rest(credentials(principal, litellm.keys))
    return httpx.post(litellm.url + path, json=body, headers=as_client_sends(path, key, headers), timeout=30)


ROUTES: dict[str, tuple[str, dict[str, Any], Callable[..., Asked]]] = {
    "chat": ("/v1/chat/completions", {"messages": HI}, ask_chat),
    "completion": ("/v1/completions", {"prompt": "hi"}, ask_completion),
    "responses": ("/v1/responses", {"input": "hi"}, ask_responses),
    "messages": ("/v1/messages", {"max_tokens": 16, "messages": HI}, ask_messages),
}
API_ERRORS = (openai.APIStatusError, anthropic.APIStatusError)


def test_a_free_model_outside_the_callers_scope_is_never_tried(litellm: LiteLLM) -> None:
    """A spent key that may call only ``paid-model``: the free model is not its to use, so the sidecar
    does not retry, and the caller gets LiteLLM's refusal as it came."""
    key = f"sk-paid-only-{uuid.uuid4().hex[:16]}"
    admin = {"Authorization": f"Bearer {litellm.master_key}"}
    made = httpx.post(
        litellm.url + "/key/generate",
        json={"key": key, "models": ["paid-model"], "max_budget": 0.01},
        headers=admin,
    )
    assert made.status_code == 200, made.text
    caller = {"Authorization": f"Bearer {key}"}
    chat = {"model": "paid-model", "messages": HI}
    deadline = time.monotonic() + 60
    while not direct_is_budget_error(
        paid := httpx.post(litellm.url + "/v1/chat/completions", json=chat, headers=caller, timeout=30)
    ):  # its first call spends 0.02 of its 0.01
        assert time.monotonic() < deadline, "LiteLLM never refused the spent key"
        time.sleep(0.5)
    url = litellm.sidecar("free_only", fallback=RULE)
    answer = httpx.post(url + "/v1/chat/completions", json=chat, headers=caller, timeout=30)
    assert (answer.status_code, answer.content) == (paid.status_code, paid.content)
    assert "x-sidecar-fallback-model" not in answer.headers
    refused = [line for line in litellm.sidecar_log(url) if line.get("event") == "fallback_refused"]
    assert refused and refused[-1]["target"] == "free-model"
    metrics = httpx.get(url + "/sidecar/metrics").text
    assert 'sidecar_fallbacks_total{from="paid-model",outcome="not_allowed",to="free-model"}' in metrics
    REPORT[f"{litellm.version} fallback outside the caller's scope"] = (
        f"not tried: original {paid.status_code}"
    )


def fallbacks(litellm: LiteLLM, url: str) -> list[dict[str, Any]]:
    return [line for line in litellm.sidecar_log(url) if line.get("event") == "fallback"]


def fallbacks_refused(litellm: LiteLLM, url: str) -> list[dict[str, Any]]:
    return [line for line in litellm.sidecar_log(url) if line.get("event") == "fallback_refused"]


def next_fallback(litellm: LiteLLM, url: str, before: int) -> dict[str, Any]:
    """The ``fallback`` line after the first ``before``: written once the answer is sent, so it may come
    a moment after the client has read the end of a stream."""
    deadline = time.monotonic() + 10
    while len(lines := fallbacks(litellm, url)) <= before:
        assert time.monotonic() < deadline, "the sidecar logged no fallback line"
        time.sleep(0.05)
    assert len(lines) == before + 1, lines[before:]
    return lines[before]


@pytest.mark.parametrize("principal", FALLING_BACK)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("route", list(ROUTES))
def test_a_refused_paid_request_falls_back_to_the_free_model(
    litellm: LiteLLM, route: str, principal: str, stream: bool
) -> None:
    path, fields, ask = ROUTES[route]
    paid = direct(litellm, principal, path, {"model": "paid-model", **fields, "stream": stream})
    assert direct_is_budget_error(paid), (paid.status_code, paid.text)
    # Whether LiteLLM lets this spent caller use the free model at all, on this route.
    free = direct(litellm, principal, path, {"model": "free-model", **fields, "stream": stream})
    allowed = not direct_is_budget_error(free)
    url = litellm.sidecar("free_only", fallback=RULE)
    before = len(fallbacks(litellm, url))
    made = anthropic_for if route == "messages" else openai_for
    # What LiteLLM answers the free model directly, through the same client: its model name and text.
    with made(litellm.url, credentials("KEY_HEALTHY", litellm.keys)) as client:
        _, free_model, free_text = ask(client, "free-model", stream)
    assert free_text, (route, stream)
    refused_before = len(fallbacks_refused(litellm, url))
    try:
        with made(url, credentials(principal, litellm.keys)) as client:
            raw, model, text = ask(client, "paid-model", stream)
    except API_ERRORS as exc:
        raw = None
        assert (exc.status_code, exc.response.content) == (paid.status_code, paid.content)  # the original
    if not allowed:  # e.g. LiteLLM 1.88 refuses a spent user even free models: the sidecar knows it
        # (rules.RULES) and does not try - the original refusal, and a fallback_refused line
        assert raw is None
        assert len(fallbacks(litellm, url)) == before
        assert [line["target"] for line in fallbacks_refused(litellm, url)[refused_before:]] == ["free-model"]
        key = f"{litellm.version} fallback {route} {principal} {'sse' if stream else 'json'}"
        REPORT[key] = f"not tried (free models refused at this level): original {paid.status_code}"
        return
    line = next_fallback(litellm, url, before)
    assert (line["model"], line["target"]) == ("paid-model", "free-model")
    if raw is not None:
        outcome = f"served, model {model!r}"
        assert line["outcome"] == "served"
        assert raw.headers["x-sidecar-fallback-from"] == "paid-model"
        assert raw.headers["x-sidecar-fallback-model"] == "free-model"
        assert (model, text) == (free_model, free_text)
    elif line["retry_budget_refusal"]:
        outcome = f"retry refused for budget ({line['retry_status']}): original {paid.status_code}"
    else:
        failed = f"{line['retry_status']} {line['retry_error']}"
        outcome = f"retry admitted, failed {failed}: original {paid.status_code}"
    REPORT[f"{litellm.version} fallback {route} {principal} {'sse' if stream else 'json'}"] = outcome
    # LiteLLM lets this caller use the free model: the free model's answer, on every route
    assert raw is not None, outcome
