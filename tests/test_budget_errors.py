"""Budget-error detection against every answer recorded from real LiteLLM, and the edge cases."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sidecar.litellm.budget_errors import UNNAMED, budget_level, is_budget_error
from tests.fake_litellm import VERSIONS, all_recordings, load_recordings

RECORDED = all_recordings()


def _is_spent_budget_per_recording(entry: dict[str, Any]) -> bool:
    """Independent oracle: the seeded principals whose budget is spent, answered with a 4xx error that
    mentions a budget, on a route that is not an admin look-up."""
    body = entry["body"]
    message = json.dumps(body).lower() if isinstance(body, dict) else ""
    return 400 <= entry["status"] < 500 and "budget" in message and "error" in message


@pytest.mark.parametrize(
    "entry",
    RECORDED,
    ids=[f"{e['version']}-{e['principal'][:20]}-{e['request'][:40]}-{e['status']}" for e in RECORDED],
)
def test_every_recorded_answer_is_classified_like_real_litellm_meant_it(entry: dict[str, Any]) -> None:
    assert is_budget_error(entry["status"], entry["body"]) is _is_spent_budget_per_recording(entry)


@pytest.mark.parametrize("version", VERSIONS)
def test_each_version_has_budget_errors_and_other_errors_in_its_recording(version: str) -> None:
    entries = load_recordings(version)
    budget = [e for e in entries if is_budget_error(e["status"], e["body"])]
    other_errors = [e for e in entries if e["status"] >= 400 and not is_budget_error(e["status"], e["body"])]
    expected_status = {"1.83.3": 400, "1.88.6": 429}.get(version, 422)
    assert len(budget) >= 10
    assert {e["status"] for e in budget} == {expected_status}
    # 401 "Only proxy admin", 401/403 model access denied: never mistaken for a budget error.
    assert {e["status"] for e in other_errors} >= {401}


# LiteLLM 1.88.6's user budget check, which also refuses free models: verbatim from /v1/chat/completions
# and /v1/responses, and (with the status before it) from /v1/completions and /v1/messages.
@pytest.mark.parametrize("message", ["Max budget limit reached.", "429: Max budget limit reached."])
def test_max_budget_limit_without_budget_type_is_a_budget_error(message: str) -> None:
    body = {"error": {"message": message, "type": "None", "param": "None", "code": "429"}}
    assert is_budget_error(429, body)


def test_an_access_denial_quoting_a_model_name_that_reads_like_a_budget_is_not_one() -> None:
    """LiteLLM's 403 quotes the model the caller asked for; a caller may name it anything."""
    recorded = next(
        e["body"]
        for e in load_recordings("1.110.2")
        if e["principal"] == "KEY_FREE_ONLY" and e["status"] == 403 and "paid-model" in json.dumps(e["body"])
    )
    crafted = json.loads(
        json.dumps(recorded).replace("paid-model", "ExceededBudget: End User=bob over budget")
    )
    assert "ExceededBudget: End User=bob" in crafted["error"]["message"]
    assert not is_budget_error(403, crafted)


def test_a_refusal_in_anthropics_shape_is_told_by_litellms_own_error_type() -> None:
    """LiteLLM 1.110's ``/v1/messages`` answers in Anthropic's shape and keeps its own type aside, so a
    change of wording alone does not hide a budget refusal there."""
    error = {"type": "invalid_request_error", "message": "Spend limit reached for this key"}
    assert not is_budget_error(422, {"type": "error", "error": error})
    assert is_budget_error(
        422, {"type": "error", "error": {**error, "litellm_error_type": "budget_exceeded"}}
    )
    throttled = {**error, "message": "Rate limit reached", "litellm_error_type": "rate_limit_error"}
    assert not is_budget_error(429, {"type": "error", "error": throttled})


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (401, {"error": {"message": "Budget has been exceeded!", "type": "budget_exceeded"}}),
        (500, {"error": {"message": "Budget has been exceeded!", "type": "budget_exceeded"}}),
        (200, {"data": []}),
        (429, {"error": {"message": "Rate limit reached for model", "type": "throttling_error"}}),
        (403, {"error": {"message": "team not allowed to access model", "type": "team_model_access_denied"}}),
        (400, {"detail": "Budget has been exceeded!"}),
        (400, "Budget has been exceeded!"),
        (400, None),
        (400, {"error": "budget_exceeded"}),
    ],
)
def test_other_answers_are_not_budget_errors(status: int, body: object) -> None:
    assert not is_budget_error(status, body)


@pytest.mark.parametrize(
    ("message", "scope"),
    [
        ("Budget has been exceeded! Team=team-broke Current cost: 0.02, Max budget: 0.01", "team"),
        ("Budget has been exceeded! Current cost: 0.02, Max budget: 0.01", "key"),
        ("Budget has been exceeded! Key=key-broke (sk-...0000) Current cost: 0.02, Max budget: 0.01", "key"),
        ("Budget has been exceeded! Key=team-alias Current cost: 1", "key"),
        ("ExceededBudget: User=user-broke over budget. Spend=0.02, Budget=0.01", "user"),
        ("ExceededBudget: End User=cust-1 over budget. Spend=3, Budget=1", "end_user"),
        ("Budget has been exceeded! Organization=org-1 Current cost: 5, Max budget: 1", "org"),
        ("ExceededBudget: Key over 1d budget. Spend=$0.0200, Limit=$0.01", "key_window"),
        (
            "Budget has been exceeded! TeamMember=member-broke:team-member-broke Current cost: 0.02, "
            "Max budget: 0.01",
            "team_member",
        ),
        ("Max budget limit reached.", "unknown"),
    ],
)
def test_budget_level_names_whose_budget_is_spent(message: str, scope: str) -> None:
    assert budget_level({"error": {"message": message, "type": "budget_exceeded"}}) == scope


def test_a_message_naming_no_principal_is_told_apart_when_asked() -> None:
    body = {"error": {"message": "Budget has been exceeded! Current cost: 0.02, Max budget: 0.01"}}
    assert budget_level(body) == "key"
    assert budget_level(body, unnamed=UNNAMED) == UNNAMED
