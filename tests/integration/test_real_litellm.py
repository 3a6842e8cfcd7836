"""The sidecar (its console script) in front of real LiteLLM 1.83.3, 1.88.6 and 1.106.2 with real budgets.

Every expectation compares with what the same LiteLLM answers directly: where LiteLLM refuses a spent
principal with a budget error the sidecar must rescue (or, ``blocked``, return it byte for byte); where
that version answers by itself, the sidecar must pass its answer through untouched.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest

from sidecar.litellm.budget_errors import is_budget_error
from tests.integration.conftest import REPORT, VIEWER_KEY, LiteLLM
from tests.seeded import ACCESS, ALL_MODELS, BROKE, LIST_ROUTES, expected_models

pytestmark = pytest.mark.integration


EIGHT_ROUTES = [*LIST_ROUTES, "/v1/models/{id}", "/models/{id}"]


def auth(litellm: LiteLLM, principal: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {litellm.keys[principal]}"}


def direct_is_budget_error(response: httpx.Response) -> bool:
    try:
        return is_budget_error(response.status_code, response.json())
    except ValueError:
        return False


@pytest.mark.parametrize("policy", ["all", "free_only", "blocked"])
@pytest.mark.parametrize("principal", BROKE)
def test_openai_client_lists_and_retrieves(litellm: LiteLLM, principal: str, policy: str) -> None:
    key = litellm.keys[principal]
    direct = openai.OpenAI(base_url=litellm.url + "/v1", api_key=key, max_retries=0)
    through = openai.OpenAI(base_url=litellm.sidecar(policy) + "/v1", api_key=key, max_retries=0)
    try:
        direct_ids = [m.id for m in direct.models.list()]
    except openai.APIStatusError as refused:
        assert is_budget_error(refused.status_code, refused.response.json())
        if policy == "blocked":  # the client sees exactly what LiteLLM said
            with pytest.raises(openai.APIStatusError) as same:
                through.models.list()
            assert (same.value.status_code, same.value.response.content) == (
                refused.status_code,
                refused.response.content,
            )
            return
        direct_ids = None
    listed = [m.id for m in through.models.list()]
    if direct_ids is None:
        assert listed == expected_models(principal, policy)
    else:  # this version lists the models itself: passed through as LiteLLM answered
        assert listed == direct_ids == ACCESS[principal]
    for model in ALL_MODELS:
        if model in listed:
            assert through.models.retrieve(model).id == model
        else:
            with pytest.raises(openai.NotFoundError):
                through.models.retrieve(model)


@pytest.mark.parametrize("policy", ["all", "free_only"])
@pytest.mark.parametrize("principal", BROKE)
@pytest.mark.parametrize("route", EIGHT_ROUTES)
def test_each_discovery_route(litellm: LiteLLM, principal: str, policy: str, route: str) -> None:
    url = litellm.sidecar(policy)
    headers = auth(litellm, principal)
    if "{id}" in route:
        for model in ALL_MODELS:
            answer = httpx.get(url + route.format(id=model), headers=headers, timeout=30)
            visible_in_list = [m["id"] for m in httpx.get(url + "/v1/models", headers=headers).json()["data"]]
            assert answer.status_code == (200 if model in visible_in_list else 404), answer.text
        return
    direct = httpx.get(litellm.url + route, headers=headers, timeout=30)
    answer = httpx.get(url + route, headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text
    names = [entry[LIST_ROUTES[route]] for entry in answer.json()["data"]]
    if direct_is_budget_error(direct):
        assert answer.headers["x-sidecar-budget-exceeded"] == "true"
        assert names == expected_models(principal, policy)
        assert litellm.master_key not in answer.text
    else:
        assert answer.content == direct.content
        assert "x-sidecar-budget-exceeded" not in answer.headers


def test_v2_pages_are_consistent(litellm: LiteLLM) -> None:
    url = litellm.sidecar("free_only")
    for principal in ("KEY_TEAM_BROKE", "KEY_KEY_BROKE", "KEY_USER_BROKE"):
        headers = auth(litellm, principal)
        targets = [f"/v2/model/info?page={p}&size=2" for p in (1, 2, 3)]
        if not direct_is_budget_error(httpx.get(litellm.url + targets[0], headers=headers)):
            # this version pages for the spent principal by itself (1.106 for all): passed through
            for target in targets:
                direct = httpx.get(litellm.url + target, headers=headers)
                assert httpx.get(url + target, headers=headers).content == direct.content
            continue
        pages = [httpx.get(url + target, headers=headers).json() for target in targets]
        assert [[d["model_name"] for d in page["data"]] for page in pages] == [
            ["free-model", "free-model-2"],
            ["free-embedding"],
            [],
        ]
        assert {(p["total_count"], p["total_pages"], p["size"]) for p in pages} == {(3, 2, 2)}
        assert [p["current_page"] for p in pages] == [1, 2, 3]


def test_anthropic_shape(litellm: LiteLLM) -> None:
    headers = {**auth(litellm, "KEY_KEY_BROKE"), "anthropic-version": "2023-06-01"}
    direct_master = httpx.get(
        litellm.url + "/v1/models",
        headers={"Authorization": f"Bearer {litellm.master_key}", "anthropic-version": "2023-06-01"},
    ).json()
    answer = httpx.get(litellm.sidecar("free_only") + "/v1/models", headers=headers).json()
    assert [m["id"] for m in answer["data"]] == ["free-model", "free-model-2", "free-embedding"]
    assert set(answer) == set(direct_master)  # the shape this version uses for that header
    assert set(answer["data"][0]) == set(direct_master["data"][0])


@pytest.mark.parametrize("principal", BROKE)
@pytest.mark.parametrize("route", [*LIST_ROUTES, "/v1/models/free-model"])
def test_blocked_returns_litellms_answer_byte_for_byte(litellm: LiteLLM, principal: str, route: str) -> None:
    headers = auth(litellm, principal)
    direct = httpx.get(litellm.url + route, headers=headers, timeout=30)
    answer = httpx.get(litellm.sidecar("blocked") + route, headers=headers, timeout=30)
    if route.startswith("/v1/models/") and direct.status_code == 401:
        # LiteLLM refuses retrieve to ordinary keys; the sidecar answers it from the caller's own list
        listed = httpx.get(litellm.url + "/v1/models", headers=headers, timeout=30)
        if direct_is_budget_error(listed):
            assert (answer.status_code, answer.content) == (listed.status_code, listed.content)
        return
    assert (answer.status_code, answer.content) == (direct.status_code, direct.content)


@pytest.mark.parametrize("route", [*LIST_ROUTES, "/v1/models?return_wildcard_routes=true"])
def test_healthy_key_is_identical_with_and_without_sidecar(litellm: LiteLLM, route: str) -> None:
    headers = auth(litellm, "KEY_HEALTHY")
    direct = httpx.get(litellm.url + route, headers=headers, timeout=30)
    answer = httpx.get(litellm.sidecar("all") + route, headers=headers, timeout=30)
    assert (answer.status_code, answer.content) == (direct.status_code, direct.content)
    drop = {"date"}
    assert {k: v for k, v in answer.headers.items() if k not in drop} == {
        k: v for k, v in direct.headers.items() if k not in drop
    }


def _chat(base: str, key: str, model: str, stream: bool) -> tuple[int, str]:
    client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
    messages = [{"role": "user", "content": "hi"}]
    try:
        if stream:
            chunks = client.chat.completions.create(model=model, messages=messages, stream=True)  # type: ignore[arg-type]
            return 200, "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        reply = client.chat.completions.create(model=model, messages=messages)  # type: ignore[arg-type]
        return 200, reply.choices[0].message.content or ""
    except openai.APIStatusError as error:
        return error.status_code, error.response.text


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("principal", [*BROKE, "KEY_HEALTHY"])
@pytest.mark.parametrize("model", ["free-model", "paid-model"])
def test_chat_passes_through(litellm: LiteLLM, principal: str, model: str, stream: bool) -> None:
    key = litellm.keys[principal]
    direct = _chat(litellm.url, key, model, stream)
    through = _chat(litellm.sidecar("all"), key, model, stream)
    assert through == direct
    if direct[0] == 200:
        assert through[1] == "Hello world"


def test_streamed_chat_arrives_in_chunks(litellm: LiteLLM) -> None:
    body = {"model": "free-model", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with httpx.stream(
        "POST",
        litellm.sidecar("all") + "/v1/chat/completions",
        json=body,
        headers=auth(litellm, "KEY_FREE_ONLY"),
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]" and len(events) >= 3


@pytest.mark.parametrize("principal", BROKE)
def test_least_privilege_viewer_key(litellm: LiteLLM, principal: str) -> None:
    """A ``proxy_admin_viewer`` key as admin credential: enough, except where LiteLLM refuses it a look-up."""
    url = litellm.sidecar("all", admin_key=VIEWER_KEY)
    headers = auth(litellm, principal)
    direct = httpx.get(litellm.url + "/v1/models", headers=headers, timeout=30)
    answer = httpx.get(url + "/v1/models", headers=headers, timeout=30)
    if not direct_is_budget_error(direct):
        assert answer.content == direct.content
        return
    viewer = {"Authorization": f"Bearer {VIEWER_KEY}"}
    user_lookup = httpx.get(litellm.url + "/user/info", params={"user_id": "user-broke"}, headers=viewer)
    if principal == "KEY_USER_BROKE" and user_lookup.status_code != 200:
        # LiteLLM refuses the viewer another user's info: the sidecar fails closed
        assert (answer.status_code, answer.content) == (direct.status_code, direct.content)
        REPORT[f"{litellm.version} viewer key"] = (
            f"/user/info answers {user_lookup.status_code}: user keys fail closed"
        )
    else:
        assert answer.status_code == 200
        assert [m["id"] for m in answer.json()["data"]] == ACCESS[principal]


def test_compose_init_step_spends_a_team_budget_on_real_litellm(litellm: LiteLLM) -> None:
    """The docker-compose demo's init step, run against this real LiteLLM (same prices as the demo's)."""
    key = "sk-demo-team-broke-0000000"
    env = {
        **os.environ,
        "LITELLM_URL": litellm.url,
        "LITELLM_MASTER_KEY": litellm.master_key,
        "DEMO_KEY": key,
    }
    script = Path(__file__).resolve().parents[2] / "demo" / "compose" / "init_budget.py"
    result = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    headers = {"Authorization": f"Bearer {key}"}
    chat = {"model": "paid-model", "messages": [{"role": "user", "content": "hi"}]}
    paid = httpx.post(litellm.url + "/v1/chat/completions", json=chat, headers=headers, timeout=30)
    assert direct_is_budget_error(paid)
    direct = httpx.get(litellm.url + "/v1/models", headers=headers, timeout=30)
    answer = httpx.get(litellm.sidecar("free_only") + "/v1/models", headers=headers, timeout=30)
    if direct_is_budget_error(direct):
        assert [m["id"] for m in answer.json()["data"]] == ["free-model", "free-model-2", "free-embedding"]
    else:
        assert answer.content == direct.content
