"""Opt-in budget fallback (``fallback.py``), against real recorded LiteLLM answers: a paid request refused
for a spent budget is answered by the same request with a free model - with the caller's own key - or,
when that is refused too or not allowed, with LiteLLM's original refusal, byte for byte."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from sidecar.settings import SettingsError, load_settings
from tests.conftest import SidecarFactory, bearer
from tests.fake_litellm import KEYS, VERSIONS, FakeLiteLLM
from tests.test_operations import metric
from tests.test_verdicts import PAID_CHAT, PAID_STREAM, PAYING, recorded_chat

FREE_CHAT = {**PAID_CHAT, "model": "free-model"}
FREE_STREAM = {**PAID_STREAM, "model": "free-model"}
RULE = {"paid-model": "free-model"}


def chat(client: httpx.Client, url: str, principal: str, payload: dict[str, Any]) -> httpx.Response:
    return client.post(url + "/v1/chat/completions", headers=bearer(principal), json=payload)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("principal", PAYING)
@pytest.mark.parametrize(
    ("paid", "free"), [(PAID_CHAT, FREE_CHAT), (PAID_STREAM, FREE_STREAM)], ids=["json", "sse"]
)
def test_a_spent_callers_paid_request_is_answered_by_the_free_model_where_litellm_serves_it(
    fake: FakeLiteLLM,
    sidecar: SidecarFactory,
    client: httpx.Client,
    version: str,
    principal: str,
    paid: dict[str, Any],
    free: dict[str, Any],
) -> None:
    fake.use_version(version)
    url = sidecar(policy="free_only", fallback=RULE)
    refusal = recorded_chat(fake, principal, paid)
    served = recorded_chat(fake, principal, free)
    answer = chat(client, url, principal, paid)
    if served[0] == 200:  # LiteLLM lets this spent caller use the free model
        assert (answer.status_code, answer.content) == served  # the free model's own answer
        assert answer.headers["x-sidecar-fallback-from"] == "paid-model"
        assert answer.headers["x-sidecar-fallback-model"] == "free-model"
        retry = fake.seen[-1]
        assert json.loads(retry.body) == free  # only the model replaced
        assert retry.header("authorization") == bearer(principal)["Authorization"]  # the caller's own key
        outcome = "served"
    else:  # e.g. LiteLLM 1.88's user budget refuses free models too: the original refusal, unchanged
        assert (answer.status_code, answer.content) == refusal
        assert "x-sidecar-fallback-model" not in answer.headers
        outcome = "refused"
    text = client.get(url + "/sidecar/metrics").text
    sample = f'sidecar_fallbacks_total{{from="paid-model",outcome="{outcome}",to="free-model"}}'
    assert metric(text, sample) == 1
    assert not [
        s for s in fake.seen if s.header("authorization") == f"Bearer {KEYS['MASTER']}" and s.method == "POST"
    ]


def test_a_caller_within_budget_is_not_touched(
    fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client
) -> None:
    fake.use_version("1.110.2")
    url = sidecar(fallback={"*": "free-model"})
    answer = chat(client, url, "KEY_HEALTHY", PAID_CHAT)
    assert (answer.status_code, answer.content) == recorded_chat(fake, "KEY_HEALTHY", PAID_CHAT)
    assert "x-sidecar-fallback-model" not in answer.headers
    assert [json.loads(s.body)["model"] for s in fake.seen if s.method == "POST"] == ["paid-model"]


def test_an_access_denial_is_not_a_budget_refusal(
    fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client
) -> None:
    fake.use_version("1.109.1")
    url = sidecar(fallback={"*": "free-model-2"})
    answer = chat(client, url, "KEY_GROUP_ONLY", PAID_CHAT)  # may not call paid-model at all
    assert (answer.status_code, answer.content) == recorded_chat(fake, "KEY_GROUP_ONLY", PAID_CHAT)
    assert answer.status_code in (401, 403) and "x-sidecar-fallback-model" not in answer.headers
    assert len([s for s in fake.seen if s.method == "POST"]) == 1  # no retry


def test_a_target_the_catalog_does_not_call_free_is_never_tried(
    fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client
) -> None:
    fake.use_version("1.110.2")
    url = sidecar(fallback={"paid-model": "paid-model-2"})
    answer = chat(client, url, "KEY_TEAM_BROKE", PAID_CHAT)
    assert (answer.status_code, answer.content) == recorded_chat(fake, "KEY_TEAM_BROKE", PAID_CHAT)
    assert len([s for s in fake.seen if s.method == "POST"]) == 1  # no retry
    text = client.get(url + "/sidecar/metrics").text
    sample = 'sidecar_fallbacks_total{from="paid-model",outcome="not_allowed",to="paid-model-2"}'
    assert metric(text, sample) == 1


def test_an_unmapped_model_and_a_large_body_pass_through_without_a_retry(
    fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client
) -> None:
    fake.use_version("1.110.2")
    url = sidecar(fallback={"other-model": "free-model"})
    answer = chat(client, url, "KEY_TEAM_BROKE", PAID_CHAT)
    assert (answer.status_code, answer.content) == recorded_chat(fake, "KEY_TEAM_BROKE", PAID_CHAT)
    big = {**PAID_CHAT, "messages": [{"role": "user", "content": "x" * (1024 * 1024)}]}
    url = sidecar(fallback={"*": "free-model"})
    before = len(fake.seen)
    chat(client, url, "KEY_TEAM_BROKE", big)
    posts = [s for s in fake.seen[before:] if s.method == "POST"]
    assert len(posts) == 1 and len(posts[0].body) > 1024 * 1024  # sent as it came, once


def test_the_setting_comes_as_json_from_the_environment_and_is_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SIDECAR_FALLBACK", '{"*": "free-model"}')
    assert load_settings(None, policy="blocked").fallback == {"*": "free-model"}
    monkeypatch.setenv("SIDECAR_FALLBACK", '{"paid-model": "*"}')
    with pytest.raises(SettingsError, match="fallback"):
        load_settings(None, policy="blocked")
