"""The sidecar (its console script) in front of real LiteLLM 1.83.3 to 1.110.2 with real budgets.

Every seeded spent principal (key, key window, team, team member, user, end user, organisation), each
policy, each discovery route, compared with what the same LiteLLM answers directly: under ``all`` and
``free_only`` the answer is the same on every version, whether LiteLLM refused the call (rescued) or
answered it (its answer marked, or filtered to the free models); ``blocked`` is LiteLLM's answer byte for
byte; a caller within budget gets LiteLLM's answer byte for byte.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import openai
import pytest

from sidecar.litellm.admin import AdminLookups, admin_http_client
from sidecar.litellm.budget import BudgetBook, Principal
from sidecar.litellm.budget_errors import BudgetLevel, Refusal, is_budget_error
from sidecar.litellm.credentials import key_hash
from sidecar.metrics import Metrics
from tests.integration.conftest import REPORT, VIEWER_KEY, LiteLLM
from tests.official_clients import ask_chat, openai_for
from tests.seeded import BEYOND_CHAT as MODELS
from tests.seeded import (
    BROKE,
    END_USER_BROKE,
    END_USER_HEADER,
    LIST_ROUTES,
    SCOPE,
    credentials,
)

pytestmark = pytest.mark.integration


def auth(litellm: LiteLLM, principal: str) -> dict[str, str]:
    return credentials(principal, litellm.keys)


def openai_client(base: str, litellm: LiteLLM, principal: str) -> openai.OpenAI:
    """The official client as an application configures it: its key, and the end user it names."""
    return openai_for(base, auth(litellm, principal))


def direct_is_budget_error(response: httpx.Response) -> bool:
    try:
        return is_budget_error(response.status_code, response.json())
    except ValueError:
        return False


@pytest.mark.parametrize("policy", ["all", "free_only", "blocked"])
@pytest.mark.parametrize("principal", BROKE)
def test_openai_client_lists_and_retrieves(litellm: LiteLLM, principal: str, policy: str) -> None:
    direct = openai_client(litellm.url, litellm, principal)
    through = openai_client(litellm.sidecar(policy), litellm, principal)
    try:
        direct_ids: list[str] | None = [m.id for m in direct.models.list()]
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
    if policy == "free_only":  # the same on every version, refused by LiteLLM or listed by it
        assert listed == MODELS.expected(principal, "free_only", litellm.version)
    elif direct_ids is None:  # all: rescued
        assert listed == MODELS.expected(principal, "all")
    else:  # all, blocked: LiteLLM's own list
        assert listed == direct_ids == MODELS.access(principal)
    for model in MODELS.all:
        if model in listed:
            assert through.models.retrieve(model).id == model
        else:
            with pytest.raises(openai.NotFoundError):
                through.models.retrieve(model)


@pytest.mark.parametrize("policy", ["all", "free_only"])
@pytest.mark.parametrize("principal", BROKE)
def test_each_discovery_route(litellm: LiteLLM, principal: str, policy: str) -> None:
    url = litellm.sidecar(policy)
    headers = auth(litellm, principal)
    visible = [m["id"] for m in httpx.get(url + "/v1/models", headers=headers, timeout=30).json()["data"]]
    for model in MODELS.all:
        for route in ("/v1/models/{id}", "/models/{id}"):
            answer = httpx.get(url + route.format(id=model), headers=headers, timeout=30)
            assert answer.status_code == (200 if model in visible else 404), (route, answer.text)
    for route, field in LIST_ROUTES.items():
        direct = httpx.get(litellm.url + route, headers=headers, timeout=30)
        answer = httpx.get(url + route, headers=headers, timeout=30)
        assert answer.status_code == 200, (route, answer.text)
        assert answer.headers["x-sidecar-budget-exceeded"] == "true", route
        assert answer.headers["x-sidecar-policy"] == policy
        assert answer.headers["x-sidecar-budget-scope"] == SCOPE[principal], route
        names = [entry[field] for entry in answer.json()["data"]]
        if policy == "free_only" or direct_is_budget_error(direct):
            assert names == MODELS.expected(principal, policy, litellm.version), route
        else:  # all, and LiteLLM listed the models itself: its answer, marked
            assert answer.content == direct.content, route
        assert litellm.master_key not in answer.text


def test_v2_pages_are_consistent(litellm: LiteLLM) -> None:
    url = litellm.sidecar("free_only")
    for principal in ("KEY_TEAM_BROKE", "KEY_KEY_BROKE", "KEY_USER_BROKE"):
        headers = auth(litellm, principal)
        targets = [f"/v2/model/info?page={p}&size=2" for p in (1, 2, 3)]
        # refused by LiteLLM or paged by it over every model: recut over the caller's free models
        pages = [httpx.get(url + target, headers=headers).json() for target in targets]
        # none where LiteLLM refuses the caller free models too (1.88.6's user)
        free = MODELS.expected(principal, "free_only", litellm.version)
        assert free in (MODELS.free, [])
        assert [[d["model_name"] for d in page["data"]] for page in pages] == [free[:2], free[2:4], []]
        assert {(p["total_count"], p["total_pages"], p["size"]) for p in pages} == {
            (len(free), -(-len(free) // 2), 2)
        }
        assert [p["current_page"] for p in pages] == [1, 2, 3]


def test_anthropic_shape(litellm: LiteLLM) -> None:
    headers = {**auth(litellm, "KEY_KEY_BROKE"), "anthropic-version": "2023-06-01"}
    direct_master = httpx.get(
        litellm.url + "/v1/models",
        headers={"Authorization": f"Bearer {litellm.master_key}", "anthropic-version": "2023-06-01"},
    ).json()
    answer = httpx.get(litellm.sidecar("free_only") + "/v1/models", headers=headers).json()
    assert [m["id"] for m in answer["data"]] == MODELS.free
    assert set(answer) == set(direct_master)  # the shape this version uses for that header
    assert set(answer["data"][0]) == set(direct_master["data"][0])


@pytest.mark.parametrize("principal", BROKE)
@pytest.mark.parametrize("route", [*LIST_ROUTES, "/v1/models/free-model"])
def test_blocked_returns_litellms_answer_byte_for_byte(litellm: LiteLLM, principal: str, route: str) -> None:
    headers = auth(litellm, principal)
    direct = httpx.get(litellm.url + route, headers=headers, timeout=30)
    answer = httpx.get(litellm.sidecar("blocked") + route, headers=headers, timeout=30)
    if route.startswith("/v1/models/"):
        # LiteLLM refuses retrieve to ordinary keys (401), so the sidecar answers it from the caller's own
        # list as LiteLLM gave it - also where the two routes disagree (1.88.6 budgets an end user on
        # retrieve but not on the list)
        listed = httpx.get(litellm.url + "/v1/models", headers=headers, timeout=30)
        if direct_is_budget_error(listed):
            assert (answer.status_code, answer.content) == (listed.status_code, listed.content)
        elif "free-model" in [m["id"] for m in listed.json()["data"]]:
            assert answer.status_code == 200 and answer.json()["id"] == "free-model"
        else:
            assert answer.status_code == 404 and answer.json()["error"]["code"] == "model_not_found"
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


def _chat(client: openai.OpenAI, model: str, stream: bool) -> tuple[int, str]:
    try:
        return 200, ask_chat(client, model, stream)[2]
    except openai.APIStatusError as error:
        return error.status_code, error.response.text


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("principal", [*BROKE, "KEY_HEALTHY"])
@pytest.mark.parametrize("model", ["free-model", "paid-model"])
def test_chat_passes_through(litellm: LiteLLM, principal: str, model: str, stream: bool) -> None:
    direct = _chat(openai_client(litellm.url, litellm, principal), model, stream)
    through = _chat(openai_client(litellm.sidecar("all"), litellm, principal), model, stream)
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
    if not direct_is_budget_error(direct):  # listed by LiteLLM: its answer, marked
        assert answer.content == direct.content
        assert answer.headers["x-sidecar-budget-scope"] == SCOPE[principal]
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
        assert [m["id"] for m in answer.json()["data"]] == MODELS.access(principal)


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
    answer = httpx.get(litellm.sidecar("free_only") + "/v1/models", headers=headers, timeout=30)
    assert [m["id"] for m in answer.json()["data"]] == MODELS.free


def _sources(litellm: LiteLLM, principal: str) -> tuple[Refusal | None, list[BudgetLevel]]:
    """What each source alone says of ``principal``: LiteLLM's probe route (its refusal, if it refuses), and
    its budget chain (the levels it records as spent)."""
    headers = auth(litellm, principal)
    key = headers["Authorization"].removeprefix("Bearer ")

    async def main() -> tuple[Refusal | None, list[BudgetLevel]]:
        client = admin_http_client(litellm.url, litellm.master_key, timeout=30)
        async with client, httpx.AsyncClient(base_url=litellm.url, timeout=30) as caller:
            admin = AdminLookups(client, catalog_ttl=0, scope_ttl=0, metrics=Metrics(), budget_ttl=0)
            budgets = BudgetBook(admin, ttl=0, metrics=Metrics())
            answer = await caller.get("/cursor/v1/models", headers=headers)
            who = Principal(key_hash(key), True, headers.get(END_USER_HEADER))
            recorded = [level.name for level in await budgets.levels(who) if level.spent]
            return Refusal.of(answer.status_code, answer.json()), recorded

    return asyncio.run(main())


# LiteLLM keeps a key window's spend only in its counters before 1.106 (``/key/info`` has no
# ``budget_limits_usage``): the chain cannot show it there, the probe does.
WINDOW_UNRECORDED = ("1.88.6",)


@pytest.mark.parametrize("principal", BROKE)
def test_each_source_alone_sees_each_spent_level(litellm: LiteLLM, principal: str) -> None:
    """Notices a LiteLLM that changes how it checks (the probe) or reports (the chain) a budget level."""
    enforced, recorded = _sources(litellm, principal)
    assert enforced is not None, enforced  # refused on the probe route, as on a paid call
    if principal == "KEY_WINDOW_BROKE" and litellm.version in WINDOW_UNRECORDED:
        assert recorded == []
        return
    deadline = time.monotonic() + 30  # LiteLLM writes spend to Postgres in batches
    while not recorded and time.monotonic() < deadline:
        time.sleep(1)
        enforced, recorded = _sources(litellm, principal)
    assert recorded == [SCOPE[principal]]


def test_healthy_callers_are_within_on_both_sources(litellm: LiteLLM) -> None:
    assert _sources(litellm, "KEY_HEALTHY") == (None, [])


# Levels LiteLLM shows only an admin: the caller's budget view leaves them out.
ADMIN_ONLY_LEVELS = {"end_user", "org"}


@pytest.mark.parametrize("principal", [*BROKE, "KEY_HEALTHY"])
def test_each_caller_sees_its_own_budget(litellm: LiteLLM, principal: str) -> None:
    url = litellm.sidecar("free_only", phantom_after="0")
    hidden = SCOPE.get(principal) in ADMIN_ONLY_LEVELS or (
        principal == "KEY_WINDOW_BROKE" and litellm.version in WINDOW_UNRECORDED
    )
    expected = "within" if principal == "KEY_HEALTHY" else "unknown" if hidden else "spent"
    # Right after seeding, LiteLLM's records may lag its counters (it writes spend in batches): with
    # phantom_after 0 the view says phantom until they agree.
    deadline = time.monotonic() + 30
    while True:
        answer = httpx.get(url + "/sidecar/v1/budget", headers=auth(litellm, principal), timeout=30)
        assert answer.status_code == 200, answer.text
        view = answer.json()
        if view["verdict"] == expected or time.monotonic() > deadline:
            break
        time.sleep(1)
    REPORT[f"{litellm.version} budget view {principal}"] = view["verdict"]
    assert not {level["scope"] for level in view["levels"]} & ADMIN_ONLY_LEVELS
    if principal == "KEY_HEALTHY":
        assert (view["verdict"], view["refused"], view["usable_models"]) == ("within", None, MODELS.all)
        return
    assert view["refused"]["scope"] in (SCOPE[principal], "key")  # <= 1.88 names no level for a member
    assert view["usable_models"] == MODELS.expected(principal, "free_only", litellm.version)
    blocking = [level for level in view["levels"] if level["blocking"]]
    if hidden:
        assert (view["verdict"], blocking) == ("unknown", [])
        return
    assert view["verdict"] == "spent"
    (level,) = blocking
    assert level["scope"] == SCOPE[principal]
    assert level["spend"] >= level["max_budget"] and level["remaining"] == 0


def doctor_args(litellm: LiteLLM, principal: str) -> tuple[str, list[str]]:
    """The key ``principal`` calls with, and the doctor's ``--end-user`` for the end user it names."""
    if principal == "END_USER_BROKE":
        return litellm.keys["KEY_END_USER_CALLER"], ["--end-user", END_USER_BROKE]
    return litellm.keys[principal], []


@pytest.mark.parametrize("principal", [*BROKE, "KEY_HEALTHY"])
def test_the_doctor_finds_each_genuinely_spent_key_consistent(litellm: LiteLLM, principal: str) -> None:
    key, extra = doctor_args(litellm, principal)
    unrecorded = principal == "KEY_WINDOW_BROKE" and litellm.version in WINDOW_UNRECORDED
    expected = "within" if principal == "KEY_HEALTHY" else "unknown" if unrecorded else "spent"
    # Right after seeding LiteLLM's records may lag its counters: doctor's --settle (phantom_after) covers it.
    code, out, err = litellm.doctor(key, *extra, "--json")
    assert key not in out + err
    found = json.loads(out)
    REPORT[f"{litellm.version} doctor {principal}"] = f"{found['verdict']} (exit {code})"
    assert (found["verdict"], code) == (expected, {"within": 0, "spent": 0, "unknown": 2}[expected])
    assert found["litellm"]["version"] == litellm.version
    if principal == "KEY_HEALTHY":
        assert found["refused"] is None and found["models"]["accessible"] == MODELS.all
        assert found["policies"]["free_only"] == found["policies"]["all"] == MODELS.all
        return
    assert found["models"]["accessible"] == MODELS.expected(principal, "all")
    assert found["refused"]["scope"] in (SCOPE[principal], "key")  # <= 1.88 names no level for a member
    assert found["policies"]["free_only"] == MODELS.expected(principal, "free_only", litellm.version)
    if not unrecorded:
        (level,) = [level for level in found["levels"] if level["blocking"]]
        assert level["scope"] == SCOPE[principal]
        assert level["spend"] >= level["max_budget"] and level["remaining"] == 0


def test_the_doctor_cannot_diagnose_a_key_litellm_does_not_know(litellm: LiteLLM) -> None:
    code, out, err = litellm.doctor("sk-nobody-knows-this-key")
    assert (code, out) == (2, "")
    assert err.startswith("litellm-budget-sidecar doctor: LiteLLM does not accept this key: ")
    assert " answered 401 " in err and err.count("\n") == 1
    assert "sk-nobody-knows-this-key" not in err


def test_the_doctor_says_when_litellm_refuses_its_admin_key(litellm: LiteLLM) -> None:
    code, out, err = litellm.doctor(litellm.keys["KEY_TEAM_BROKE"], admin_key="sk-not-an-admin-key")
    assert (code, out) == (2, "")
    assert err.startswith("litellm-budget-sidecar doctor: LiteLLM refuses the admin key: ")
    assert "sk-not-an-admin-key" not in err and err.count("\n") == 1


def test_a_budget_raised_in_litellm_clears_within_budget_ttl(litellm: LiteLLM) -> None:
    """A fresh key is spent, then LiteLLM's budget raised: the sidecar follows within ``budget_ttl``."""
    key = f"sk-reset-{uuid.uuid4().hex[:16]}"
    admin = {"Authorization": f"Bearer {litellm.master_key}"}
    made = httpx.post(litellm.url + "/key/generate", json={"key": key, "max_budget": 0.01}, headers=admin)
    assert made.status_code == 200, made.text
    caller = {"Authorization": f"Bearer {key}"}
    chat = {"model": "paid-model", "messages": [{"role": "user", "content": "hi"}]}
    deadline = time.monotonic() + 60
    while not direct_is_budget_error(
        httpx.post(litellm.url + "/v1/chat/completions", json=chat, headers=caller)
    ):
        assert time.monotonic() < deadline, "LiteLLM never refused the spent key"
        time.sleep(0.5)
    url = litellm.sidecar("free_only", budget_ttl="2")
    spent = httpx.get(url + "/v1/models", headers=caller, timeout=30)
    assert spent.headers["x-sidecar-budget-scope"] == "key"
    assert [m["id"] for m in spent.json()["data"]] == MODELS.free
    raised = httpx.post(litellm.url + "/key/update", json={"key": key, "max_budget": 100.0}, headers=admin)
    assert raised.status_code == 200, raised.text
    while direct_is_budget_error(httpx.get(litellm.url + "/cursor/v1/models", headers=caller)):
        assert time.monotonic() < deadline + 60, "LiteLLM never lifted its refusal"
        time.sleep(0.5)
    lifted = time.monotonic()
    while True:
        answer = httpx.get(url + "/v1/models", headers=caller, timeout=30)
        direct = httpx.get(litellm.url + "/v1/models", headers=caller, timeout=30)
        if "x-sidecar-budget-exceeded" not in answer.headers:
            break
        assert time.monotonic() - lifted < 2 + 5, "the sidecar kept the spent state past budget_ttl"
        time.sleep(0.2)
    assert answer.content == direct.content
    REPORT[f"{litellm.version} reset"] = (
        f"cleared {time.monotonic() - lifted:.1f}s after LiteLLM (budget_ttl 2s)"
    )
