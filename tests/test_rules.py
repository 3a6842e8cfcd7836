"""The table of budget levels (``sidecar/litellm/rules.py``) against what real LiteLLM proxies answered.

Every row's claims are checked on the recordings of real LiteLLM 1.83.3 to 1.110.2 (``tests/fixtures``): how
its refusal names the level, whether it is spent at ``max_budget`` already, and - the row's version quirk -
whether a caller spent at that level is refused a zero-cost model too.
"""

from __future__ import annotations

import pytest

from sidecar.litellm.budget_errors import BudgetLevel, Refusal, budget_level
from sidecar.litellm.levels import Level
from sidecar.litellm.rules import RULE, RULES, Rule, Versions, refuses_free, release_of, version_matters
from tests.fake_litellm import VERSIONS, load_recordings
from tests.seeded import BROKE, FREE_REFUSED, SCOPE, seeded

FREE_CHAT = {"model": "free-model", "messages": [{"role": "user", "content": "hi"}], "stream": False}
# Spent principals whose free chat tells about their level: KEY_GROUP_ONLY may not call free-model at all
# (LiteLLM denies it as a model it lacks), so its answer says nothing of budgets.
PRINCIPALS = [p for p in BROKE if p != "KEY_GROUP_ONLY"]


def free_chat(version: str, principal: str) -> tuple[int, object]:
    """LiteLLM ``version``'s recorded answer to ``principal``'s free chat (the end user in its header)."""
    for entry in load_recordings(version):
        if (
            entry["principal"] == principal
            and entry["request"] == "POST /v1/chat/completions"
            and entry.get("request_body") == FREE_CHAT
        ):
            return entry["status"], entry["body"]
    raise KeyError((version, principal))


@pytest.mark.parametrize(
    ("version", "principal"), [(v, p) for v in VERSIONS for p in PRINCIPALS if seeded(p, v)]
)
def test_a_level_refuses_free_models_exactly_where_its_row_says(version: str, principal: str) -> None:
    status, body = free_chat(version, principal)
    refused = Refusal.of(status, body) is not None
    assert refused is ((version, principal) in FREE_REFUSED)
    assert refuses_free(BudgetLevel(SCOPE[principal]), release_of(version)) is refused


def test_an_unknown_version_is_taken_as_the_one_that_refuses() -> None:
    """The sidecar does not know which LiteLLM it is in front of: it lists nothing it cannot vouch for."""
    assert [rule.level for rule in RULES if refuses_free(rule.level, None)] == ["user", "end_user"]
    assert [rule.level for rule in RULES if version_matters(rule.level)] == ["user", "end_user"]
    assert not refuses_free(BudgetLevel.UNKNOWN, None)


@pytest.mark.parametrize(
    ("version", "user", "end_user"),
    [
        ("1.82.0", False, True),
        ("1.83.3", False, True),
        ("1.84.0", True, True),  # between 1.83.3 and 1.88.6: the refusing one's rule
        ("1.88.6", True, True),
        ("1.105.9", True, True),
        ("1.106.2", False, False),
        ("1.110.2", False, False),
        ("1.111.0", False, False),  # after the newest read: its rule
    ],
)
def test_versions_between_and_after_those_read(version: str, user: bool, end_user: bool) -> None:
    release = release_of(version)
    assert (refuses_free(BudgetLevel.USER, release), refuses_free(BudgetLevel.END_USER, release)) == (
        user,
        end_user,
    )


@pytest.mark.parametrize(
    ("text", "release"),
    [
        ("1.88.6", (1, 88, 6)),
        ("1.110.2-stable", (1, 110, 2)),
        ("v1", None),
        ("", None),
        (None, None),
        ("1." + "9" * 5000 + ".0", None),  # past int()'s digit limit: not a version, not a crash
    ],
)
def test_a_version_is_read_as_litellm_writes_it(text: str | None, release: object) -> None:
    assert release_of(text) == release


def test_a_range_includes_its_start_and_not_its_end() -> None:
    window = Versions((1, 84, 0), (1, 106, 0))
    assert (1, 84, 0) in window and (1, 105, 99) in window
    assert (1, 83, 99) not in window and (1, 106, 0) not in window
    assert (0, 0, 1) in Versions(None, (1, 106, 0)) and (9, 9, 9) in Versions((1, 0, 0), None)


# LiteLLM's messages as its source builds them (each row's ``source``), one per level.
MESSAGES = {
    BudgetLevel.KEY: "Budget has been exceeded! Key=k (sk-...0000) Current cost: 0.02, Max budget: 0.01",
    BudgetLevel.KEY_WINDOW: "ExceededBudget: Key over 1d budget. Spend=$0.0200, Limit=$0.01",
    BudgetLevel.TEAM: "Budget has been exceeded! Team=team-broke Current cost: 0.02, Max budget: 0.01",
    BudgetLevel.TEAM_MEMBER: "Budget has been exceeded! TeamMember=u:t Current cost: 0.02, Max budget: 0.01",
    BudgetLevel.USER: "ExceededBudget: User=user-broke over budget. Spend=0.02, Budget=0.01",
    BudgetLevel.END_USER: "ExceededBudget: End User=end-user-broke over budget. Spend=0.02, Budget=0.01",
    BudgetLevel.ORG: "Budget has been exceeded! Organization=org-broke Current cost: 0.18, Max budget: 0.01",
    # From the source only (licensed, or not seeded by the harness): each quotes the line its row cites.
    # proxy/hooks/model_max_budget_limiter.py:921-922 (1.110.2)
    BudgetLevel.MODEL: "LiteLLM Virtual Key: 9f86d0, key_alias: None, exceeded budget for model=paid-model",
    # proxy/auth/auth_checks.py:7445
    BudgetLevel.PROJECT: "Budget has been exceeded! Project=p1 Current cost: 2.0, Max budget: 1.0",
    # proxy/auth/auth_checks.py:7780
    BudgetLevel.ACCESS_GROUP: "Budget has been exceeded! Model access group=g Current cost: 2, Max budget: 1",
    # proxy/auth/auth_checks.py:7725
    BudgetLevel.TAG: "Budget has been exceeded! Tag=batch Current cost: 2.0, Max budget: 1.0",
}
# The per-model refusals of every entity (proxy/hooks/model_max_budget_limiter.py:922, 961, 984, 1010, 1028;
# with ", budget_model=<pattern>" when a pattern's budget is what is spent, :1093-1095).
MODEL_MESSAGES = [
    ("LiteLLM Virtual Key: 9f86d0, key_alias: k, exceeded budget for model=paid-model", "paid-model"),
    ("LiteLLM User: u1, exceeded budget for model=gpt-4o", "gpt-4o"),
    ("LiteLLM End User: e1, exceeded budget for model=openai/gpt-4o", "openai/gpt-4o"),
    ("LiteLLM Team: t1, exceeded budget for model=paid-model", "paid-model"),
    ("LiteLLM Team Member: user=u1, team=t1, exceeded budget for model=paid-model", "paid-model"),
    ("LiteLLM Team: t1, exceeded budget for model=openai/gpt-4o, budget_model=openai/*", "openai/gpt-4o"),
]


@pytest.mark.parametrize("row", RULES, ids=lambda row: str(row.level))
def test_each_row_names_its_level_compares_and_cites_its_source(row: Rule) -> None:
    assert RULE[row.level] is row
    if row.named:
        body = {"error": {"message": MESSAGES[row.level], "type": "budget_exceeded"}}
        assert budget_level(body) == row.level
        assert row.named in MESSAGES[row.level]
    else:  # the proxy's budget: its message names no level, as a key's did up to 1.88
        body = {"error": {"message": "Budget has been exceeded! Current cost: 2, Max budget: 1", "type": "x"}}
        assert budget_level(body, unnamed=BudgetLevel.UNNAMED) == BudgetLevel.UNNAMED
    at_budget = Level(row.level, "", 1.0, 1.0)
    assert at_budget.spent is row.at_limit  # ">=" or ">"
    assert Level(row.level, "", 1.5, 1.0).spent
    assert row.record == "" or (row.record.startswith("/") and row.record.endswith("/info"))
    assert row.proven is (row.record != "")  # the harness seeds exactly the levels with records
    assert ".py:" in row.source
    assert (row.free_refused is None) is (row.free_source == "")
    assert row.free_refused is None or ".py:" in row.free_source


def test_the_recorded_messages_name_the_level_their_row_says() -> None:
    """Every budget refusal the recordings hold is named by one row (or names none, before 1.106)."""
    named = set()
    for version in VERSIONS:
        for entry in load_recordings(version):
            refusal = Refusal.of(entry["status"], entry["body"]) if isinstance(entry["body"], dict) else None
            if refusal is not None:
                named.add(refusal.level)
    proven = {level for level, row in RULE.items() if row.proven}
    assert named - {BudgetLevel.UNNAMED, BudgetLevel.UNKNOWN} == proven  # every proven row, and only rows


@pytest.mark.parametrize(("message", "model"), MODEL_MESSAGES)
def test_a_per_model_refusal_names_the_level_and_the_model(message: str, model: str) -> None:
    for status, body in [
        (422, {"error": {"message": message, "type": "budget_exceeded", "param": None, "code": "422"}}),
        (429, {"error": {"message": f"429: {message}", "type": "None"}}),  # a pre-call hook's HTTPException
    ]:
        refusal = Refusal.of(status, body)
        assert refusal is not None
        assert (refusal.level, refusal.model, refusal.named) == (BudgetLevel.MODEL, model, "model")


def test_a_message_that_only_quotes_the_words_is_no_per_model_refusal() -> None:
    """An access denial quotes the caller's model name, which may say anything: not a budget refusal."""
    body = {
        "error": {"message": "key not allowed to access model=x, exceeded budget for model=y", "type": "x"}
    }
    assert Refusal.of(403, body) is None
