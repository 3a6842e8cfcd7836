"""Who is over budget, and at which level: each source against real recorded LiteLLM answers, and how
they are weighed (``sidecar/litellm/budget.py``)."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import httpx
import pytest

from sidecar.litellm.admin import AdminLookups, admin_http_client
from sidecar.litellm.budget import BudgetBook, Principal, SourceFailed
from sidecar.litellm.budget_errors import BudgetLevel, Reading, Refusal
from sidecar.litellm.credentials import key_hash
from sidecar.litellm.levels import Source, Spent, chain, spent
from sidecar.metrics import Metrics
from tests.conftest import SidecarFactory, bearer
from tests.fake_litellm import KEYS, VERSIONS, FakeLiteLLM
from tests.seeded import BROKE, END_USER_BROKE, SCOPE

# Real LiteLLM 1.88.6 refuses KEY_END_USER_CALLER as "End User=end-user-broke over budget" on every call,
# free chats included, even without the end-user header once the key has named that end user: the
# recordings show it. The sidecar follows what LiteLLM enforces.
REFUSED_ANYWAY = {("1.88.6", "KEY_END_USER_CALLER"): "end_user"}


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, Any]]:
    return [f for r in caplog.records if (f := getattr(r, "fields", {})).get("event") == name]


def who(name: str) -> Principal:
    key = KEYS["KEY_END_USER_CALLER" if name == "END_USER_BROKE" else name]
    return Principal(key_hash(key), True, END_USER_BROKE if name == "END_USER_BROKE" else None)


def book(fake: FakeLiteLLM, admin: bool = True) -> tuple[BudgetBook, httpx.AsyncClient]:
    client = admin_http_client(fake.url, KEYS["MASTER"], timeout=5)
    lookups = AdminLookups(client, catalog_ttl=60, scope_ttl=60, metrics=Metrics()) if admin else None
    return BudgetBook(lookups, ttl=30, metrics=Metrics()), client


def probe_of(fake: FakeLiteLLM, name: str) -> Any:
    """LiteLLM's own answer to the probe route, asked with the caller's headers (as discovery does)."""

    async def probe() -> Reading:
        async with httpx.AsyncClient(base_url=fake.url) as caller:
            answer = await caller.get("/cursor/v1/models", headers=bearer(name))
        return Reading.of(answer.status_code, answer.json())

    return probe


async def recorded_spent(budgets: BudgetBook, principal: Principal) -> list[str]:
    """The levels the principal's chain records as spent (the recorded source alone)."""
    return [level.name for level in await budgets.levels(principal) if level.spent]


def refusal_of(status: int, body: Any) -> Refusal:
    refusal = Refusal.of(status, body)
    assert refusal is not None
    return refusal


# LiteLLM 1.88 keeps a key window's spend only in its counters; /key/info reports it from 1.106 on.
NOT_RECORDED = {("1.88.6", "KEY_WINDOW_BROKE")}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("principal", BROKE)
def test_each_source_alone_names_the_spent_level(fake: FakeLiteLLM, version: str, principal: str) -> None:
    """The test that notices when a LiteLLM version changes how it checks or reports a budget level."""
    fake.use_version(version)
    name = principal

    async def main() -> tuple[Refusal | None, list[str], Any]:
        budgets, client = book(fake)
        async with client:
            enforced = (await probe_of(fake, name)()).refusal
            recorded = await recorded_spent(budgets, who(name))
            state = await budgets.state(who(name), probe_of(fake, name))
        return enforced, recorded, state

    enforced, recorded, state = asyncio.run(main())
    assert enforced is not None  # LiteLLM refuses it on the probe route on every version
    if (version, name) in NOT_RECORDED:
        assert recorded == []
    else:
        assert recorded == [SCOPE[name]]
    assert state.over and state.level == SCOPE[name]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", ["KEY_HEALTHY", "KEY_END_USER_CALLER", "MASTER"])
def test_callers_within_budget_are_within_on_both_sources(fake: FakeLiteLLM, version: str, name: str) -> None:
    fake.use_version(version)

    async def main() -> tuple[Any, Any, list[str]]:
        budgets, client = book(fake)
        async with client:
            enforced = (await probe_of(fake, name)()).refusal
            recorded = await recorded_spent(budgets, who(name)) if name != "MASTER" else []
            before = len(fake.admin_requests())
            await budgets.state(who(name), probe_of(fake, name))
            asked = [s.target for s in fake.admin_requests()[before:]]
        return enforced, recorded, [t for t in asked if not t.startswith("/cursor/")]

    enforced, recorded, lookups = asyncio.run(main())
    assert recorded == []
    if (version, name) in REFUSED_ANYWAY:
        assert enforced is not None and enforced.level == REFUSED_ANYWAY[version, name]
        return
    assert enforced is None
    assert lookups == []  # within budget on the probe: no admin look-up


def test_a_failing_probe_leaves_the_chain_to_decide_and_says_so(
    fake: FakeLiteLLM, caplog: pytest.LogCaptureFixture
) -> None:
    fake.use_version("1.110.2")
    fake.answer("GET", "/cursor/v1/models", 404, {"detail": "Not Found"})  # a LiteLLM without the route

    async def main() -> list[Any]:
        budgets, client = book(fake)
        async with client:
            states = [
                await budgets.state(who(n), probe_of(fake, n)) for n in ("KEY_TEAM_BROKE", "KEY_HEALTHY")
            ]
            budgets.states.forget(who("KEY_TEAM_BROKE"))
            states.append(await budgets.state(who("KEY_TEAM_BROKE"), probe_of(fake, "KEY_TEAM_BROKE")))
        return [*states, budgets._metrics]

    with caplog.at_level(logging.WARNING):
        team, healthy, again, metrics = asyncio.run(main())
    assert team.over and team.level == "team" and [s.source for s in team.spent] == ["recorded"]
    assert not healthy.over and healthy.known
    assert again.level == "team"
    failed = events(caplog, "budget_source_failed")
    assert len(failed) == 1  # once a minute per reason, however many callers
    assert failed[0]["source"] == "enforced" and failed[0]["reason"] == "/cursor/v1/models answered 404"
    assert metrics.budget_source_failures.labels("enforced")._value.get() == 3


def test_no_source_at_all_is_unknown_with_the_reason(fake: FakeLiteLLM) -> None:
    fake.answer("GET", "/cursor/v1/models", 503, b"down")

    async def probe() -> Reading:
        return Reading.of(503, None)

    async def main() -> Any:
        budgets, client = book(fake, admin=False)
        async with client:
            return await budgets.state(who("KEY_TEAM_BROKE"), probe)

    state = asyncio.run(main())
    assert not state.known and not state.over
    assert "/cursor/v1/models answered 503" in state.reason and "no admin credential" in state.reason


def test_an_unnamed_refusal_is_named_after_the_chain(fake: FakeLiteLLM) -> None:
    """LiteLLM <= 1.88 says "Current cost: ..." for a key's and a team member's budget alike."""
    fake.use_version("1.83.3")

    async def main() -> list[BudgetLevel]:
        budgets, client = book(fake)
        async with client:
            out = []
            for name in ("KEY_KEY_BROKE", "KEY_MEMBER_BROKE"):
                refusal = (await probe_of(fake, name)()).refusal
                assert refusal is not None and refusal.message is not None
                assert "Current cost" in refusal.message and "=" not in refusal.message
                budgets.saw(who(name), refusal)  # a refusal seen names no level either
                out.append((await budgets.state(who(name), probe_of(fake, name))).level)
        return out

    assert asyncio.run(main()) == ["key", "team_member"]


def test_a_refusal_seen_decides_at_once_and_is_forgotten_after_ttl() -> None:
    budgets = BudgetBook(None, ttl=0.2, metrics=Metrics())
    who = Principal("t" * 64, True)
    refusal = {
        "error": {"message": "Budget has been exceeded! Team=t1 Current cost: 2", "type": "budget_exceeded"}
    }
    assert Refusal.of(200, {"data": []}) is None  # nothing for ``saw`` to record
    assert Refusal.of(401, {"error": {"message": "bad key", "type": "auth_error"}}) is None
    assert budgets.saw(who, refusal_of(429, refusal)) == Spent(BudgetLevel.TEAM, Source.SEEN)
    state = budgets.cached(who)
    assert state is not None and state.over and state.level == "team"

    async def later() -> Any:
        await asyncio.sleep(0.25)

        async def probe() -> Reading:
            return Reading.of(200, None)

        return await budgets.state(who, probe)

    assert not asyncio.run(later()).over


def test_a_refusal_is_evidence_about_the_principal_that_got_it_and_no_other() -> None:
    """Issue 25: a caller naming its own spent end user ``victim over budget. x`` got LiteLLM's refusal
    "End User=victim over budget. x over budget"; the id parsed out of that text used to mark every caller
    naming end user ``victim`` as spent."""
    budgets = BudgetBook(None, ttl=30, metrics=Metrics())
    crafted = "victim over budget. x"
    refusal = {
        "error": {"message": f"ExceededBudget: End User={crafted} over budget.", "type": "budget_exceeded"}
    }
    attacker = Principal("a" * 64, True, crafted)
    budgets.saw(attacker, refusal_of(422, refusal))
    assert budgets.cached(Principal("b" * 64, True, "victim")) is None  # the victim: its own probe decides
    assert budgets.cached(Principal("b" * 64, True, crafted)) is None  # nor another key, same end user
    assert budgets.cached(Principal("a" * 64, True)) is None  # nor the same key without that end user
    own = budgets.cached(attacker)
    assert own is not None and own.over and own.level == "end_user"


def _records(**levels: Any) -> dict[str, Any]:
    return levels


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        (_records(key={"info": {"spend": 1.0, "max_budget": 1.0}}), ["key"]),  # at the limit: spent
        (_records(key={"info": {"spend": 0.99, "max_budget": 1.0}}), []),
        (_records(key={"info": {"spend": 5, "max_budget": None}}), []),
        (_records(team={"team_info": {"spend": 1.0, "max_budget": 1.0}}), []),  # a team must go past it
        (_records(team={"team_info": {"spend": 1.01, "max_budget": 1.0}}), ["team"]),
        (_records(end_user={"spend": 1.0, "litellm_budget_table": {"max_budget": 1.0}}), []),
        (_records(end_user={"spend": 2, "litellm_budget_table": {"max_budget": 1.0}}), ["end_user"]),
        (_records(org={"spend": 1.0, "litellm_budget_table": {"max_budget": 1.0}}), ["org"]),
        (_records(user={"user_info": {"spend": 1.0, "max_budget": 1.0}}), ["user"]),
        (_records(key={"info": {"spend": True, "max_budget": 0}}), []),  # not a figure
        (_records(key="not an object", team=[1]), []),
    ],
)
def test_levels_compare_as_litellm_checks_them(records: dict[str, Any], expected: list[str]) -> None:
    assert [s.level for s in spent(chain(records))] == expected


def test_budget_windows_and_their_reset() -> None:
    def key(reset: str, spend: float, limits_as_json: bool = False) -> dict[str, Any]:
        limits: Any = [{"budget_duration": "1d", "max_budget": 0.01, "reset_at": reset}]
        usage = {"1d": {"current_spend": spend}}
        return {
            "info": {
                "budget_limits": json.dumps(limits) if limits_as_json else limits,
                "budget_limits_usage": usage,
            }
        }

    def spent_levels(records: dict[str, Any]) -> tuple[Spent, ...]:
        return spent(chain(records))

    found = spent_levels({"key": key("2026-12-04T00:00:00+00:00", 0.02)})
    assert found == (Spent(BudgetLevel.KEY_WINDOW, Source.RECORDED, "2026-12-04T00:00:00+00:00"),)
    assert spent_levels({"key": key("2026-12-04T00:00:00Z", 0.02, limits_as_json=True)})
    # past reset_at LiteLLM keeps enforcing the counter until its reset job runs: still spent
    assert spent_levels({"key": key("2026-12-03T11:59:00+00:00", 0.02)})
    assert spent_levels({"key": key("2026-12-04T00:00:00+00:00", 0.001)}) == ()


def test_sources_are_not_asked_for_what_they_cannot_answer() -> None:
    async def main() -> None:
        budgets = BudgetBook(None, ttl=30, metrics=Metrics())
        with pytest.raises(SourceFailed, match="no admin credential"):
            await budgets.levels(Principal("t" * 64, True))

    asyncio.run(main())


# Through the sidecar: the budget state is what discovery answers by.


def test_a_refusal_on_a_passed_through_call_marks_the_caller_before_anything_else_shows_it(
    fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client
) -> None:
    fake.use_version("1.110.2")
    refusal = {
        "error": {
            "message": "Budget has been exceeded! Team=team-x Current cost: 3",
            "type": "budget_exceeded",
        }
    }
    fake.answer("POST", "/v1/chat/completions", 422, refusal)
    url = sidecar(policy="free_only")
    chat = client.post(
        url + "/v1/chat/completions", headers=bearer("KEY_HEALTHY"), json={"model": "paid-model"}
    )
    assert (chat.status_code, chat.json()) == (422, refusal)  # the refusal itself passes through unchanged
    before = len(fake.seen)
    answer = client.get(url + "/v1/models", headers=bearer("KEY_HEALTHY"))
    assert answer.headers["x-sidecar-budget-scope"] == "team"
    assert [m["id"] for m in answer.json()["data"]] == ["free-model", "free-model-2", "free-embedding"]
    asked = [s.target for s in fake.seen[before:]]
    assert "/cursor/v1/models" not in asked  # the refusal seen was enough: no probe
    text = client.get(url + "/sidecar/metrics").text
    # KEY_HEALTHY's team is within budget in LiteLLM's records: not borne out, but not yet a phantom
    assert 'sidecar_budget_refusals_total{scope="team",verdict="unknown"} 1.0' in text


def test_a_large_or_streamed_answer_is_not_read_for_evidence(
    fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client
) -> None:
    big = {
        "error": {"message": "Budget has been exceeded! Team=t", "type": "budget_exceeded"},
        "pad": "x" * 70_000,
    }
    fake.answer("POST", "/v1/chat/completions", 429, big)
    url = sidecar(policy="free_only")
    chat = client.post(
        url + "/v1/chat/completions", headers=bearer("KEY_HEALTHY"), json={"model": "paid-model"}
    )
    assert chat.status_code == 429 and chat.json() == big
    answer = client.get(url + "/v1/models", headers=bearer("KEY_HEALTHY"))
    assert "x-sidecar-budget-exceeded" not in answer.headers  # over the notice limit: not read


def test_within_budget_callers_get_litellms_bytes_and_warm_calls_cost_one_round_trip(
    fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client
) -> None:
    fake.use_version("1.110.2")
    url = sidecar(policy="free_only")
    direct = client.get(fake.url + "/v1/models", headers=bearer("KEY_HEALTHY"))
    first = client.get(url + "/v1/models", headers=bearer("KEY_HEALTHY"))
    before = len(fake.seen)
    second = client.get(url + "/v1/models", headers=bearer("KEY_HEALTHY"))
    assert first.content == second.content == direct.content
    assert [s.target for s in fake.seen[before:]] == ["/v1/models"]
    assert fake.admin_requests() == []


def test_unknown_state_falls_back_to_litellms_answer_and_logs_why(
    fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    fake.use_version("1.110.2")
    fake.answer("GET", "/cursor/v1/models", 502, b"bad gateway")
    fake.answer("GET", f"/key/info?key={key_hash(KEYS['KEY_TEAM_BROKE'])}", 500, {"error": "db down"})
    url = sidecar(policy="free_only")
    direct = client.get(fake.url + "/v1/models", headers=bearer("KEY_TEAM_BROKE"))
    with caplog.at_level(logging.WARNING):
        answer = client.get(url + "/v1/models", headers=bearer("KEY_TEAM_BROKE"))
    assert answer.content == direct.content and "x-sidecar-budget-exceeded" not in answer.headers
    assert "/cursor/v1/models answered 502" in events(caplog, "budget_unknown")[0]["reason"]
    assert "sidecar_budget_unknown_total 1.0" in client.get(url + "/sidecar/metrics").text


def test_the_end_user_a_request_names_is_budgeted(
    fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client
) -> None:
    fake.use_version("1.110.2")
    url = sidecar(policy="free_only")
    caller = bearer("KEY_END_USER_CALLER")
    assert "x-sidecar-budget-exceeded" not in client.get(url + "/v1/models", headers=caller).headers
    named = client.get(url + "/v1/models", headers=bearer("END_USER_BROKE"))
    assert named.headers["x-sidecar-budget-scope"] == "end_user"
    assert [m["id"] for m in named.json()["data"]] == ["free-model", "free-model-2", "free-embedding"]
