"""``GET /sidecar/v1/budget``: a caller's own budget with its own key, against real recorded LiteLLM answers -
what blocks it, the verdict, what it may still call, and nothing LiteLLM would not show that caller."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.conftest import SidecarFactory, bearer
from tests.fake_litellm import KEYS, VERSIONS, FakeLiteLLM
from tests.seeded import ALL_MODELS, BROKE, SCOPE, expected_models
from tests.test_levels import lower

VIEW = "/sidecar/v1/budget"
# Levels LiteLLM shows no caller but an admin: their records stay out of the view.
ADMIN_ONLY = {"end_user", "org"}
NOT_RECORDED = {("1.88.6", "KEY_WINDOW_BROKE")}  # 1.88 keeps a window's spend only in its counters


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("principal", BROKE)
def test_a_spent_caller_sees_what_blocks_it_and_what_it_may_still_call(
    fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client, version: str, principal: str
) -> None:
    fake.use_version(version)
    url = sidecar(policy="blocked", phantom_after=0)  # the view does not depend on the policy
    answer = client.get(url + VIEW, headers=bearer(principal))
    assert answer.status_code == 200
    view = answer.json()
    scope = SCOPE[principal]
    assert view["refused"]["scope"] in (scope, "key")  # LiteLLM <= 1.88 names no level for a member
    assert "Budget has been exceeded" in view["refused"]["message"] or "budget" in view["refused"]["message"]
    assert view["usable_models"] == expected_models(principal, "free_only", version)
    assert not {level["scope"] for level in view["levels"]} & ADMIN_ONLY
    blocking = [level for level in view["levels"] if level["blocking"]]
    if scope in ADMIN_ONLY:
        assert (view["verdict"], blocking) == ("unknown", [])  # judged on what the caller may see only
    elif (version, principal) in NOT_RECORDED:
        assert view["verdict"] == "unknown"
    else:
        assert view["verdict"] == "spent"
        (level,) = blocking
        assert level["scope"] == scope
        assert level["spend"] >= level["max_budget"] and level["remaining"] == 0 and level["spent"]


@pytest.mark.parametrize("version", VERSIONS)
def test_a_caller_within_budget_may_call_every_model_it_may_access(
    fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client, version: str
) -> None:
    fake.use_version(version)
    url = sidecar()
    view = client.get(url + VIEW, headers=bearer("KEY_HEALTHY")).json()
    assert view == {"verdict": "within", "refused": None, "levels": [], "usable_models": ALL_MODELS}


def test_a_phantom_shows_the_recorded_spend_under_the_budget(
    fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client
) -> None:
    fake.use_version("1.110.2")
    spend = lower(fake, "KEY_TEAM_BROKE")
    url = sidecar(phantom_after=0)
    view = client.get(url + VIEW, headers=bearer("KEY_TEAM_BROKE")).json()
    assert view["verdict"] == "phantom"
    (team,) = [level for level in view["levels"] if level["scope"] == "team"]
    assert (team["id"], team["spend"], team["spent"], team["blocking"]) == ("team-broke", spend, False, True)
    assert team["remaining"] == pytest.approx(team["max_budget"] - spend)
    assert view["refused"]["enforced"] > team["max_budget"]
    assert view["usable_models"] == expected_models("KEY_TEAM_BROKE", "free_only")


def test_a_personal_key_sees_its_users_budget(
    fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client
) -> None:
    fake.use_version("1.109.1")
    view = client.get(sidecar() + VIEW, headers=bearer("KEY_USER_BROKE")).json()
    (user,) = view["levels"]
    assert (user["scope"], user["id"], user["blocking"]) == ("user", "user-broke", True)


@pytest.mark.parametrize("headers", [{"Authorization": "Bearer sk-not-a-key"}, {}], ids=["bad", "none"])
def test_a_bad_or_missing_key_gets_litellms_own_401(
    fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client, headers: dict[str, str]
) -> None:
    refusal = {"error": {"message": "Authentication Error, No api key passed in.", "type": "auth_error"}}
    fake.answer("GET", "/cursor/v1/models", 401, refusal)
    answer = client.get(sidecar() + VIEW, headers=headers)
    assert (answer.status_code, answer.json()) == (401, refusal)
    assert not fake.admin_requests()  # nothing looked up for a caller LiteLLM does not know


def test_the_view_asks_litellm_with_the_callers_own_key_only(
    fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client
) -> None:
    url = sidecar()
    client.get(url + VIEW, headers=bearer("KEY_KEY_BROKE"))
    callers = [s for s in fake.seen if s.header("authorization") != f"Bearer {KEYS['MASTER']}"]
    assert [s.target for s in callers] == ["/cursor/v1/models"]
    assert all(s.header("authorization") == f"Bearer {KEYS['KEY_KEY_BROKE']}" for s in callers)
    assert all(KEYS["KEY_KEY_BROKE"] not in s.target for s in fake.admin_requests())


def test_other_methods_are_refused(fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client) -> None:
    answer = client.post(sidecar() + VIEW, headers=bearer("KEY_HEALTHY"))
    assert answer.status_code == 405
    assert not fake.seen


def test_asking_the_view_does_not_hold_back_a_phantom_at_a_level_the_caller_may_not_see(
    fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client
) -> None:
    """The view judges on the whole chain like every other refusal: polling it must not restart the
    phantom grace of an organisation's budget, which the caller itself may not see."""
    fake.use_version("1.88.6")
    lower(fake, "KEY_ORG_BROKE")
    url = sidecar(phantom_after=1)
    paid = {"model": "paid-model", "messages": [{"role": "user", "content": "hi"}]}
    first = client.post(url + "/v1/chat/completions", headers=bearer("KEY_ORG_BROKE"), json=paid)
    assert "x-sidecar-budget-phantom" not in first.headers  # within the grace
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        view = client.get(url + VIEW, headers=bearer("KEY_ORG_BROKE")).json()
        assert (view["verdict"], [lv for lv in view["levels"] if lv["scope"] == "org"]) == ("unknown", [])
        time.sleep(0.2)
    later = client.post(url + "/v1/chat/completions", headers=bearer("KEY_ORG_BROKE"), json=paid)
    assert later.headers["x-sidecar-budget-phantom"] == "true"
