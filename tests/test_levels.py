"""Verdicts on budget refusals (``litellm/levels.py``, ``BudgetBook.refused``): spent, phantom or unknown,
against real recorded LiteLLM answers - the refusal a caller gets is never changed, only marked."""

from __future__ import annotations

import copy
import json
import logging
from typing import Any

import httpx
import pytest

from sidecar.litellm.budget_errors import BudgetLevel, stated
from sidecar.litellm.credentials import key_hash
from sidecar.litellm.levels import Finding, Level, Verdict, graced, judge
from tests.conftest import SidecarFactory, bearer
from tests.fake_litellm import KEYS, VERSIONS, FakeLiteLLM, load_recordings
from tests.seeded import BROKE, END_USER_BROKE, FREE_MODELS, SCOPE
from tests.test_budget import events, refusal_of
from tests.test_operations import metric

PAID_CHAT = {"model": "paid-model", "messages": [{"role": "user", "content": "hi"}], "stream": False}
PAID_STREAM = {**PAID_CHAT, "stream": True}
# The admin route that records each level's spend.
RECORDED_AT = {
    "key": "/key/info",
    "key_window": "/key/info",
    "team": "/team/info",
    "team_member": "/team/info",
    "user": "/user/info",
    "end_user": "/customer/info",
    "org": "/organization/info",
}
# LiteLLM 1.88 keeps a key window's spend only in its counters: nothing to compare a refusal with.
NOT_RECORDED = {("1.88.6", "KEY_WINDOW_BROKE")}
# LiteLLM 1.88.6 refuses KEY_END_USER_CALLER as the spent end user on every call once it named it.


# The spent principals whose paid chat LiteLLM refuses for their budget (KEY_FREE_ONLY and KEY_GROUP_ONLY, in
# the same spent team, may not call paid-model at all: LiteLLM denies it them as a model they lack).
PAYING = [p for p in BROKE if p not in ("KEY_FREE_ONLY", "KEY_GROUP_ONLY")]


def admin_answer(version: str, principal: str, path: str) -> tuple[str, Any]:
    """The recorded admin answer (target, body) on ``path`` for ``principal``'s chain."""
    for entry in load_recordings(version):
        if entry["principal"] == f"MASTER looking up {principal}" and entry["request"].startswith(
            f"GET {path}?"
        ):
            return entry["request"].removeprefix("GET "), entry["body"]
    raise KeyError((version, principal, path))


def lower(fake: FakeLiteLLM, principal: str) -> float:
    """Make ``principal``'s spent level a phantom in the admin's view: its recorded spend half its budget,
    as ../shared/litellm-upstream's ``phantom`` does to the real database. Returns that spend."""
    scope = SCOPE[principal]
    target, body = admin_answer(fake.version, principal, RECORDED_AT[scope])
    body = copy.deepcopy(body)
    if scope == "key":
        record = body["info"]
    elif scope == "team":
        record = body["team_info"]
    elif scope == "team_member":
        _, key_info = admin_answer(fake.version, principal, "/key/info")
        user = key_info["info"]["user_id"]
        record = next(m for m in body["team_memberships"] if m["user_id"] == user)
        record["spend"] = record["litellm_budget_table"]["max_budget"] / 2
        fake.answer("GET", target, 200, body)
        return float(record["spend"])
    elif scope == "user":
        record = body["user_info"]
    else:  # end user, organisation: the budget sits in their litellm_budget_table
        record = body
        record["spend"] = record["litellm_budget_table"]["max_budget"] / 2
        fake.answer("GET", target, 200, body)
        return float(record["spend"])
    record["spend"] = record["max_budget"] / 2
    fake.answer("GET", target, 200, body)
    return float(record["spend"])


def chat(client: httpx.Client, url: str, principal: str, payload: dict[str, Any]) -> httpx.Response:
    return client.post(url + "/v1/chat/completions", headers=bearer(principal), json=payload)


def recorded_chat(fake: FakeLiteLLM, principal: str, payload: dict[str, Any]) -> tuple[int, bytes]:
    name = "END_USER_BROKE" if principal == "END_USER_BROKE" else principal
    for entry in load_recordings(fake.version):
        if (
            entry["principal"] == name
            and entry["request"] == "POST /v1/chat/completions"
            and entry.get("request_body") == payload
        ):
            body = entry["body"]
            raw = body.encode() if isinstance(body, str) else json.dumps(body, separators=(",", ":")).encode()
            return entry["status"], raw
    raise KeyError(principal)


def verdicts(text: str) -> dict[tuple[str, str], float]:
    found = {}
    for line in text.splitlines():
        if line.startswith("sidecar_budget_refusals_total{"):
            labels, _, value = line.partition("} ")
            parts = dict(
                p.split("=") for p in labels.removeprefix("sidecar_budget_refusals_total{").split(",")
            )
            found[(parts["scope"].strip('"'), parts["verdict"].strip('"'))] = float(value)
    return found


@pytest.mark.parametrize(
    ("message", "figures"),
    [
        ("Budget has been exceeded! Current cost: 0.02, Max budget: 0.01", (0.02, 0.01)),
        (
            "Budget has been exceeded! Team=team-broke Current cost: 0.019999999999998012, Max budget: 0.01",
            (0.019999999999998012, 0.01),
        ),
        ("ExceededBudget: User=user-broke over budget. Spend=0.02, Budget=0.01", (0.02, 0.01)),
        ("ExceededBudget: Key over 1d budget. Spend=$0.0200, Limit=$0.01", (0.02, 0.01)),
        ("ExceededBudget: End User=e over budget. Spend=1e-05, Budget=0", (1e-05, 0.0)),
        ("Max budget limit reached.", (None, None)),
    ],
)
def test_the_figures_litellm_states_are_read_from_each_message_format(
    message: str, figures: tuple[float | None, float | None]
) -> None:
    assert stated({"error": {"message": message, "type": "budget_exceeded"}}) == figures


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("principal", PAYING)
@pytest.mark.parametrize("payload", [PAID_CHAT, PAID_STREAM], ids=["json", "sse"])
def test_a_genuinely_spent_callers_refusal_is_spent_and_passes_through_unmarked(
    fake: FakeLiteLLM,
    sidecar: SidecarFactory,
    client: httpx.Client,
    caplog: pytest.LogCaptureFixture,
    version: str,
    principal: str,
    payload: dict[str, Any],
) -> None:
    fake.use_version(version)
    url = sidecar(policy="free_only", phantom_after=0)
    expected = recorded_chat(fake, principal, payload)
    with caplog.at_level(logging.INFO):
        answer = chat(client, url, principal, payload)
    assert (answer.status_code, answer.content) == expected  # byte for byte
    assert "x-sidecar-budget-phantom" not in answer.headers
    (logged,) = events(caplog, "budget_refusal")
    if (version, principal) in NOT_RECORDED:
        assert logged["verdict"] == "unknown" and logged["scope"] == "key_window"
        return
    assert (logged["verdict"], logged["scope"]) == ("spent", SCOPE[principal])
    assert logged["recorded"] >= logged["max_budget"] > 0
    assert logged["enforced"] is None or logged["enforced"] >= logged["max_budget"]
    assert KEYS[principal if principal != "END_USER_BROKE" else "KEY_END_USER_CALLER"] not in json.dumps(
        logged
    )
    text = client.get(url + "/sidecar/metrics").text
    assert verdicts(text) == {(SCOPE[principal], "spent"): 1.0}


PHANTOMS = [p for p in PAYING if p != "KEY_WINDOW_BROKE"]  # a window's spend has no single record


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("principal", PHANTOMS)
@pytest.mark.parametrize("payload", [PAID_CHAT, PAID_STREAM], ids=["json", "sse"])
def test_a_refusal_the_records_do_not_bear_out_is_a_phantom_marked_on_an_unchanged_answer(
    fake: FakeLiteLLM,
    sidecar: SidecarFactory,
    client: httpx.Client,
    caplog: pytest.LogCaptureFixture,
    version: str,
    principal: str,
    payload: dict[str, Any],
) -> None:
    fake.use_version(version)
    recorded_spend = lower(fake, principal)
    url = sidecar(policy="free_only", phantom_after=0)
    expected = recorded_chat(fake, principal, payload)
    with caplog.at_level(logging.INFO):
        answer = chat(client, url, principal, payload)
    assert (answer.status_code, answer.content) == expected
    assert answer.headers["x-sidecar-budget-phantom"] == "true"
    (logged,) = events(caplog, "budget_refusal")
    assert (logged["verdict"], logged["scope"], logged["recorded"]) == (
        "phantom",
        SCOPE[principal],
        recorded_spend,
    )
    if logged["enforced"] is not None:  # "Max budget limit reached." (1.88's user check) states none
        assert logged["enforced"] > recorded_spend
    text = client.get(url + "/sidecar/metrics").text
    assert verdicts(text) == {(SCOPE[principal], "phantom"): 1.0}
    # Discovery follows what LiteLLM enforces - free models only - and says it is a phantom.
    models = client.get(url + "/v1/models", headers=bearer(principal))
    assert models.status_code == 200
    assert models.headers["x-sidecar-budget-phantom"] == "true"
    assert models.headers["x-sidecar-budget-scope"] == SCOPE[principal]
    assert {m["id"] for m in models.json()["data"]} <= set(FREE_MODELS)


def test_a_fresh_disagreement_is_unknown_until_it_lasts(
    fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    """Right after a caller crosses its budget LiteLLM's records lag its counters: not a phantom yet."""
    fake.use_version("1.109.1")
    lower(fake, "KEY_TEAM_BROKE")
    url = sidecar(policy="all", phantom_after=3600)
    with caplog.at_level(logging.INFO):
        answer = chat(client, url, "KEY_TEAM_BROKE", PAID_CHAT)
    assert answer.status_code == 422 and "x-sidecar-budget-phantom" not in answer.headers
    (logged,) = events(caplog, "budget_refusal")
    assert logged["verdict"] == "unknown" and "phantom after 3600 s" in logged["reason"]


@pytest.mark.parametrize("policy", ["blocked", "all"])
def test_refusals_are_judged_under_every_policy_and_discovery_stays_as_the_policy_says(
    fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client, policy: str
) -> None:
    fake.use_version("1.88.6")  # refuses discovery to a spent team
    lower(fake, "KEY_TEAM_BROKE")
    url = sidecar(policy=policy, phantom_after=0)
    refused = fake.recorded_body("KEY_TEAM_BROKE", "GET /v1/models")
    models = client.get(url + "/v1/models", headers=bearer("KEY_TEAM_BROKE"))
    assert models.headers["x-sidecar-budget-phantom"] == "true"
    if policy == "blocked":
        assert (models.status_code, models.json()) == (429, refused)  # LiteLLM's own answer
    else:
        assert models.status_code == 200 and len(models.json()["data"]) == 4
    chat_answer = chat(client, url, "KEY_TEAM_BROKE", PAID_CHAT)
    assert chat_answer.status_code == 429 and chat_answer.headers["x-sidecar-budget-phantom"] == "true"


def test_without_an_admin_credential_refusals_are_counted_unknown(
    fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client
) -> None:
    url = sidecar(policy="blocked", admin_key=None)
    answer = chat(client, url, "KEY_TEAM_BROKE", PAID_CHAT)
    assert answer.status_code == 429 and "x-sidecar-budget-phantom" not in answer.headers
    assert verdicts(client.get(url + "/sidecar/metrics").text) == {("team", "unknown"): 1.0}
    assert not fake.admin_requests()


def test_a_burst_of_refusals_costs_one_round_of_look_ups(
    fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client
) -> None:
    url = sidecar(policy="all", phantom_after=0)
    for _ in range(20):
        assert chat(client, url, "KEY_KEY_BROKE", PAID_CHAT).status_code == 429
    looked_up = [s.target for s in fake.admin_requests()]
    assert looked_up.count(f"/key/info?key={key_hash(KEYS['KEY_KEY_BROKE'])}") == 1
    assert verdicts(client.get(url + "/sidecar/metrics").text) == {("key", "spent"): 20.0}


def test_an_end_users_phantom_is_named_by_its_id() -> None:
    levels = (Level(BudgetLevel.END_USER, END_USER_BROKE, 0.005, 0.01),)
    body = {
        "error": {
            "message": f"ExceededBudget: End User={END_USER_BROKE} over budget. Spend=0.02, Budget=0.01"
        }
    }
    verdict = judge(refusal_of(422, body), levels)
    assert (verdict.verdict, verdict.level, verdict.enforced) == ("phantom", "end_user", 0.02)
    assert verdict.fields()["id"] == END_USER_BROKE


def test_a_refusal_naming_no_level_is_judged_against_the_key_and_the_membership() -> None:
    """LiteLLM <= 1.88: "Current cost: ..." for a key's and a team member's budget alike."""
    body = {"error": {"message": "Budget has been exceeded! Current cost: 0.02, Max budget: 0.5"}}
    key, member = Level(BudgetLevel.KEY, "", 0.1, 1.0), Level(BudgetLevel.TEAM_MEMBER, "u:t", 0.1, 0.5)
    refusal = refusal_of(422, body)
    assert judge(refusal, (key, member)).level == "team_member"  # the budget it states is the member's
    assert judge(refusal, (key, Level(BudgetLevel.TEAM_MEMBER, "u:t", 0.5, 0.5))).verdict == "spent"
    assert judge(refusal, ()).verdict == "unknown"


PHANTOM_KEY = Verdict(Finding.PHANTOM, BudgetLevel.KEY, 0.02, Level(BudgetLevel.KEY, "", 0.005, 0.01))


@pytest.mark.parametrize(
    ("verdict", "lasted", "grace", "found"),
    [
        (PHANTOM_KEY, 0.0, 30.0, "unknown"),  # a new phantom: the spend may not be written yet
        (PHANTOM_KEY, 29.9, 30.0, "unknown"),
        (PHANTOM_KEY, 30.0, 30.0, "phantom"),  # it has lasted the grace
        (PHANTOM_KEY, 0.0, 0.0, "phantom"),  # no grace: a phantom at once
        (Verdict(Finding.SPENT, BudgetLevel.KEY), 0.0, 30.0, "spent"),  # only a phantom waits
        (Verdict(Finding.UNKNOWN, BudgetLevel.ORG), 0.0, 30.0, "unknown"),
    ],
)
def test_a_new_phantom_is_unknown_until_it_has_lasted_the_grace(
    verdict: Verdict, lasted: float, grace: float, found: str
) -> None:
    """``graced``: the one rule the sidecar (``BudgetBook``, so the budget view) and ``doctor`` follow."""
    judged = graced(verdict, lasted, grace)
    assert (judged.verdict, judged.level, judged.enforced, judged.recorded) == (
        found,
        verdict.level,
        verdict.enforced,
        verdict.recorded,
    )
    if found != verdict.verdict:
        assert judged.reason == (
            f"recorded spend below max_budget for {lasted:.0f} s so far: LiteLLM writes spend in batches; "
            f"phantom after {grace:g} s"
        )


def test_a_per_model_budget_is_named_with_its_model_and_only_that_model_drops_out(
    fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    """A key whose own budget for ``paid-model`` is spent (``model_max_budget``, licensed: from LiteLLM's
    source, proxy/hooks/model_max_budget_limiter.py:921-922 in 1.110.2): LiteLLM refuses that model and
    serves every other. The refusal names the level ``model`` and the model; discovery, the budget view
    and the metric follow it from the refusal alone - no look-up per model."""
    fake.use_version("1.110.2")
    token = key_hash(KEYS["KEY_HEALTHY"])
    message = f"LiteLLM Virtual Key: {token}, key_alias: None, exceeded budget for model=paid-model"
    refusal = {"error": {"message": message, "type": "budget_exceeded", "param": None, "code": "422"}}
    fake.answer("POST", "/v1/chat/completions", 422, refusal)
    url = sidecar(policy="all")
    with caplog.at_level(logging.INFO, logger="sidecar.litellm.budget"):
        refused = client.post(url + "/v1/chat/completions", headers=bearer("KEY_HEALTHY"), json=PAID_CHAT)
    assert (refused.status_code, refused.json()) == (422, refusal)  # LiteLLM's refusal, unchanged
    (line,) = [f for r in caplog.records if (f := getattr(r, "fields", {})).get("event") == "budget_refusal"]
    assert (line["scope"], line["model"], line["verdict"]) == ("model", "paid-model", "unknown")
    text = client.get(url + "/sidecar/metrics").text
    assert metric(text, 'sidecar_budget_refusals_total{scope="model",verdict="unknown"}') == 1
    listed = client.get(url + "/v1/models", headers=bearer("KEY_HEALTHY"))
    direct = client.get(fake.url + "/v1/models", headers=bearer("KEY_HEALTHY"))
    assert listed.content == direct.content  # under all: LiteLLM's own list, marked
    assert listed.headers["x-sidecar-budget-scope"] == "model"
    assert listed.headers["x-sidecar-budget-usable"] == "others"
    view = client.get(url + "/sidecar/v1/budget", headers=bearer("KEY_HEALTHY")).json()
    assert view["usable_models"] == [m for m in json_ids(direct) if m != "paid-model"]
    assert not [s for s in fake.admin_requests() if "paid-model" in s.target]


def json_ids(answer: httpx.Response) -> list[str]:
    return [entry["id"] for entry in answer.json()["data"]]
