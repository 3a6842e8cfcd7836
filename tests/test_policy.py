"""What a caller gets on discovery (``sidecar/litellm/policy.py``): tables of plain data, no sockets.

Each row is one situation - the policy, whether LiteLLM's answer can be cut (every route but
``/v2/model/info``), LiteLLM's status, its refusal and the verdict on it, the caller's budget state - and
the outcome that must follow, with its marks.
"""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.litellm.budget_errors import UNNAMED, BudgetLevel, Refusal
from sidecar.litellm.levels import NOT_ADMITTED, BudgetState, Finding, Source, Spent, Verdict
from sidecar.litellm.policy import (
    Action,
    Outcome,
    Policy,
    Usable,
    asks_version,
    decide,
    phantom_marks,
    usable,
)

ALL, FREE_ONLY, BLOCKED = Policy.ALL, Policy.FREE_ONLY, Policy.BLOCKED
PASS, BLOCK, MARK, FILTER, RESCUE = Action.PASS, Action.BLOCK, Action.MARK, Action.FILTER, Action.RESCUE

TEAM_REFUSAL = Refusal(
    422, BudgetLevel.TEAM, "Budget has been exceeded! Team=t Current cost: 2, Max budget: 1", 2.0, 1.0
)
UNNAMED_REFUSAL = Refusal(400, UNNAMED, "Budget has been exceeded! Current cost: 2, Max budget: 1", 2.0, 1.0)
SPENT = Verdict(Finding.SPENT, BudgetLevel.TEAM)
PHANTOM = Verdict(Finding.PHANTOM, BudgetLevel.TEAM)

WITHIN = BudgetState()
OVER_TEAM = BudgetState(
    (Spent(BudgetLevel.TEAM, Source.ENFORCED), Spent(BudgetLevel.TEAM, Source.RECORDED)), verdict=SPENT
)
OVER_PHANTOM = BudgetState((Spent(BudgetLevel.TEAM, Source.ENFORCED),), verdict=PHANTOM)
OVER_RECORDED = BudgetState(
    (Spent(BudgetLevel.USER, Source.RECORDED), Spent(BudgetLevel.TEAM, Source.RECORDED))
)
UNKNOWN = BudgetState(known=False, reason="enforced: down; recorded: down")
REFUSED_CREDENTIAL = BudgetState(known=False, reason=NOT_ADMITTED)

EXCEEDED = (b"x-sidecar-budget-exceeded", b"true")
PHANTOM_MARK = (b"x-sidecar-budget-phantom", b"true")


def marks(
    policy: str, level: str, *more: tuple[bytes, bytes], usable: str = "free"
) -> tuple[tuple[bytes, bytes], ...]:
    return (
        EXCEEDED,
        (b"x-sidecar-policy", policy.encode()),
        (b"x-sidecar-budget-scope", level.encode()),
        (b"x-sidecar-budget-usable", usable.encode()),
        *more,
    )


# policy, cuttable, status, refusal, verdict, state -> action, level, rendered, marks
TABLE: list[tuple[Any, ...]] = [
    # LiteLLM refused the call for budget (up to 1.108, some routes to some levels)
    (BLOCKED, True, 422, TEAM_REFUSAL, SPENT, None, BLOCK, "team", False, ()),
    (BLOCKED, True, 422, TEAM_REFUSAL, PHANTOM, None, BLOCK, "team", False, (PHANTOM_MARK,)),
    (BLOCKED, True, 422, TEAM_REFUSAL, None, None, BLOCK, "team", False, ()),  # no credential: not judged
    (ALL, True, 422, TEAM_REFUSAL, SPENT, OVER_TEAM, RESCUE, "team", True, marks("all", "team")),
    (FREE_ONLY, True, 422, TEAM_REFUSAL, SPENT, WITHIN, RESCUE, "team", True, marks("free_only", "team")),
    (FREE_ONLY, False, 422, TEAM_REFUSAL, SPENT, None, RESCUE, "team", True, marks("free_only", "team")),
    (
        ALL,
        True,
        422,
        TEAM_REFUSAL,
        PHANTOM,
        OVER_PHANTOM,
        RESCUE,
        "team",
        True,
        marks("all", "team", PHANTOM_MARK),
    ),
    # the refusal names the level, whatever the state says
    (ALL, True, 422, TEAM_REFUSAL, SPENT, OVER_RECORDED, RESCUE, "team", True, marks("all", "team")),
    # LiteLLM answered 200 to a caller over budget (1.109 and later answer every discovery route)
    (ALL, True, 200, None, None, OVER_TEAM, MARK, "team", False, marks("all", "team")),
    (ALL, False, 200, None, None, OVER_TEAM, MARK, "team", False, marks("all", "team")),
    (FREE_ONLY, True, 200, None, None, OVER_TEAM, FILTER, "team", False, marks("free_only", "team")),
    (FREE_ONLY, False, 200, None, None, OVER_TEAM, FILTER, "team", True, marks("free_only", "team")),
    (
        FREE_ONLY,
        True,
        200,
        None,
        None,
        OVER_PHANTOM,
        FILTER,
        "team",
        False,
        marks("free_only", "team", PHANTOM_MARK),
    ),
    (FREE_ONLY, True, 200, None, None, OVER_RECORDED, FILTER, "team", False, marks("free_only", "team")),
    # anything else: LiteLLM's answer as it is
    (BLOCKED, True, 200, None, None, None, PASS, None, False, ()),  # blocked never asks the state
    (ALL, True, 200, None, None, WITHIN, PASS, None, False, ()),
    (FREE_ONLY, True, 200, None, None, WITHIN, PASS, None, False, ()),
    (FREE_ONLY, True, 404, None, None, OVER_TEAM, PASS, None, False, ()),  # an error LiteLLM gave is its own
    (FREE_ONLY, True, 401, None, None, REFUSED_CREDENTIAL, PASS, None, False, ()),
    (FREE_ONLY, True, 200, None, None, UNKNOWN, PASS, None, False, ()),
]


@pytest.mark.parametrize(
    ("policy", "cuttable", "status", "refusal", "verdict", "state", "action", "level", "rendered", "marked"),
    TABLE,
)
def test_the_outcome_of_each_situation(
    policy: Policy,
    cuttable: bool,
    status: int,
    refusal: Refusal | None,
    verdict: Verdict | None,
    state: BudgetState | None,
    action: Action,
    level: str | None,
    rendered: bool,
    marked: tuple[tuple[bytes, bytes], ...],
) -> None:
    outcome = decide(
        policy, cuttable=cuttable, status=status, refusal=refusal, verdict=verdict, state=state, release=V110
    )
    assert (outcome.action, outcome.level, outcome.rendered) == (action, level, rendered)
    assert outcome.marks == marked


def test_a_state_no_source_could_establish_passes_and_says_why() -> None:
    outcome = decide(FREE_ONLY, cuttable=True, status=200, refusal=None, verdict=None, state=UNKNOWN)
    assert outcome.unknown == "enforced: down; recorded: down"
    refused = decide(
        FREE_ONLY, cuttable=True, status=401, refusal=None, verdict=None, state=REFUSED_CREDENTIAL
    )
    assert refused.unknown == ""  # a credential LiteLLM refuses is not a budget question: nothing to warn of


@pytest.mark.parametrize(
    ("outcome", "marked"),
    [
        (Outcome(RESCUE, ALL, BudgetLevel.TEAM, rendered=True), ()),
        (Outcome(RESCUE, ALL, BudgetLevel.TEAM, phantom=True, rendered=True), (PHANTOM_MARK,)),
        (Outcome(FILTER, FREE_ONLY, BudgetLevel.KEY, phantom=True), (PHANTOM_MARK,)),
    ],
)
def test_an_outcome_that_cannot_be_carried_out_fails_towards_litellms_answer(
    outcome: Outcome, marked: tuple[tuple[bytes, bytes], ...]
) -> None:
    failed = outcome.failed("/model/info answered 500", "lookup_failed")
    assert (failed.action, failed.rendered, failed.cause) == (Action.FAIL, False, "lookup_failed")
    assert failed.marks == marked  # LiteLLM's answer: only a phantom is still said


@pytest.mark.parametrize(
    ("verdict", "marked"),
    [(None, ()), (Verdict(Finding.UNKNOWN, BudgetLevel.TEAM), ()), (SPENT, ()), (PHANTOM, (PHANTOM_MARK,))],
)
def test_a_refusal_on_a_passed_through_call_is_marked_only_when_phantom(
    verdict: Verdict | None, marked: tuple[tuple[bytes, bytes], ...]
) -> None:
    assert phantom_marks(verdict) == marked


# The one rule that names the level of a refusal naming none ("Current cost: ...", LiteLLM <= 1.88 for a
# key's and a team member's budget): recorded levels of the state, verdict -> the level named.
NAMING: list[tuple[tuple[str, ...], Verdict | None, str]] = [
    (("key",), None, "key"),
    (("team_member",), None, "team_member"),
    # the one spent key/member level
    (("team_member", "team"), Verdict(Finding.SPENT, BudgetLevel.KEY), "team_member"),
    # two: the verdict's
    (("key", "team_member"), Verdict(Finding.PHANTOM, BudgetLevel.TEAM_MEMBER), "team_member"),
    ((), Verdict(Finding.PHANTOM, BudgetLevel.TEAM_MEMBER), "team_member"),
    ((), Verdict(Finding.SPENT, BudgetLevel.TEAM), "key"),  # a verdict elsewhere cannot be what it meant
    ((), None, "key"),
]


@pytest.mark.parametrize(("recorded", "verdict", "named"), NAMING)
def test_a_refusal_naming_no_level_is_named_in_one_place(
    recorded: tuple[str, ...], verdict: Verdict | None, named: str
) -> None:
    state = BudgetState(tuple(Spent(BudgetLevel(level), Source.RECORDED) for level in recorded))
    assert state.named(UNNAMED, verdict) == named
    assert state.named(BudgetLevel.ORG, verdict) == "org"  # a level the refusal names is the level
    outcome = decide(ALL, cuttable=True, status=400, refusal=UNNAMED_REFUSAL, verdict=verdict, state=state)
    assert outcome.level == named


@pytest.mark.parametrize(
    ("policy", "asks", "shown"),
    [(ALL, True, ["free", "paid"]), (FREE_ONLY, True, ["free"]), (BLOCKED, False, ["free", "paid"])],
)
def test_what_each_policy_asks_and_shows(policy: Policy, asks: bool, shown: list[str]) -> None:
    visible = policy.visible(lambda name: name == "free", lambda name: name != "denied", Usable.FREE)
    assert policy.asks_budget is asks
    assert [name for name in ("free", "paid", "denied") if visible(name)] == shown
    none = policy.visible(lambda name: name == "free", lambda name: name != "denied", Usable.NONE)
    assert [name for name in ("free", "paid", "denied") if none(name)] == (
        [] if policy is FREE_ONLY else shown
    )


V83, V88, V106, V110 = (1, 83, 3), (1, 88, 6), (1, 106, 2), (1, 110, 2)
USER, END_USER, TEAM = BudgetLevel.USER, BudgetLevel.END_USER, BudgetLevel.TEAM
# What a caller spent at these levels may use on that LiteLLM (``None``: a version the sidecar could not
# read: any version's refusal counts). Measured by the harness (its README, "free chat" per principal).
USABLE: list[tuple[tuple[BudgetLevel, ...], Any, Usable]] = [
    ((), V88, Usable.ALL),
    ((), None, Usable.ALL),
    ((TEAM,), V88, Usable.FREE),
    ((TEAM,), None, Usable.FREE),
    ((USER,), V83, Usable.FREE),
    ((USER,), V88, Usable.NONE),
    ((USER,), V106, Usable.FREE),
    ((USER,), V110, Usable.FREE),
    ((USER,), None, Usable.NONE),
    ((END_USER,), V83, Usable.NONE),
    ((END_USER,), V88, Usable.NONE),
    ((END_USER,), V106, Usable.FREE),
    ((END_USER,), V110, Usable.FREE),
    ((END_USER,), None, Usable.NONE),
    ((TEAM, USER), V88, Usable.NONE),  # one level that refuses free models is enough
    ((BudgetLevel.UNKNOWN,), V88, Usable.FREE),
    ((UNNAMED,), V88, Usable.FREE),
]


@pytest.mark.parametrize(("levels", "release", "expected"), USABLE)
def test_what_a_spent_caller_may_use_now(
    levels: tuple[BudgetLevel, ...], release: Any, expected: Usable
) -> None:
    now = usable(levels, release)
    assert now is expected
    admits = now.admits(lambda name: name.startswith("free"), lambda name: name != "free-denied")
    shown = [name for name in ("free", "free-2", "free-denied", "paid") if admits(name)]
    assert (
        shown
        == {Usable.ALL: ["free", "free-2", "paid"], Usable.FREE: ["free", "free-2"], Usable.NONE: []}[now]
    )
    assert asks_version(levels) is any(level in (USER, END_USER) for level in levels)


OVER_USER = BudgetState((Spent(USER, Source.ENFORCED), Spent(USER, Source.RECORDED)), verdict=SPENT)
USER_REFUSAL = Refusal(429, USER, "ExceededBudget: User=u over budget. Spend=2, Budget=1", 2.0, 1.0)
END_USER_REFUSAL = Refusal(
    400, END_USER, "ExceededBudget: End User=e over budget. Spend=2, Budget=1", 2.0, 1.0
)


# A caller at a level that refuses free models too: ``free_only`` lists none (an empty list in LiteLLM's
# shape, marked), ``all`` lists everything and says none is usable now; on versions that serve free models
# to that level, the free ones.
# policy, status, refusal, state, release -> action, rendered, marks
SPENT_FREE_TOO: list[tuple[Any, ...]] = [
    (FREE_ONLY, 200, None, OVER_USER, V88, FILTER, False, marks("free_only", "user", usable="none")),
    (FREE_ONLY, 200, None, OVER_USER, V110, FILTER, False, marks("free_only", "user")),
    (FREE_ONLY, 200, None, OVER_USER, None, FILTER, False, marks("free_only", "user", usable="none")),
    (ALL, 200, None, OVER_USER, V88, MARK, False, marks("all", "user", usable="none")),
    (ALL, 200, None, OVER_USER, V106, MARK, False, marks("all", "user")),
    (FREE_ONLY, 429, USER_REFUSAL, OVER_USER, V88, RESCUE, True, marks("free_only", "user", usable="none")),
    (
        FREE_ONLY,
        400,
        END_USER_REFUSAL,
        WITHIN,
        V83,
        RESCUE,
        True,
        marks("free_only", "end_user", usable="none"),
    ),
    (ALL, 400, END_USER_REFUSAL, None, V83, RESCUE, True, marks("all", "end_user", usable="none")),
    (BLOCKED, 400, END_USER_REFUSAL, None, V83, BLOCK, False, ()),
]


@pytest.mark.parametrize(
    ("policy", "status", "refusal", "state", "release", "action", "rendered", "marked"), SPENT_FREE_TOO
)
def test_a_level_that_refuses_free_models_too_lists_none_as_usable(
    policy: Policy,
    status: int,
    refusal: Refusal | None,
    state: BudgetState | None,
    release: Any,
    action: Action,
    rendered: bool,
    marked: tuple[tuple[bytes, bytes], ...],
) -> None:
    outcome = decide(
        policy, cuttable=True, status=status, refusal=refusal, verdict=None, state=state, release=release
    )
    assert (outcome.action, outcome.rendered, outcome.marks) == (action, rendered, marked)


MODEL = BudgetLevel.MODEL
MODEL_REFUSAL = Refusal(
    422, MODEL, "LiteLLM Team: t, exceeded budget for model=paid-model", model="paid-model"
)
OVER_MODEL = BudgetState((Spent(MODEL, Source.SEEN, model="paid-model"),))
OVER_MODEL_AND_TEAM = BudgetState((Spent(MODEL, Source.SEEN, model="free-2"), Spent(TEAM, Source.ENFORCED)))
MODELS = ("free", "free-2", "paid", "paid-model")


# A per-model budget refuses its model only (proxy/hooks/model_max_budget_limiter.py): the caller may use
# every other model - under ``free_only`` the free ones - known from the refusal, with no look-up per model.
# policy, status, refusal, state -> action, marks, what ``free_only`` renders / ``usable`` admits
PER_MODEL: list[tuple[Any, ...]] = [
    (
        FREE_ONLY,
        200,
        None,
        OVER_MODEL,
        FILTER,
        marks("free_only", "model", usable="others"),
        ["free", "free-2"],
    ),
    (ALL, 200, None, OVER_MODEL, MARK, marks("all", "model", usable="others"), ["free", "free-2", "paid"]),
    (
        ALL,
        422,
        MODEL_REFUSAL,
        WITHIN,
        RESCUE,
        marks("all", "model", usable="others"),
        ["free", "free-2", "paid"],
    ),
    # with another level spent too (named: the wider one): the free models, but not the one whose own budget
    # is spent
    (FREE_ONLY, 200, None, OVER_MODEL_AND_TEAM, FILTER, marks("free_only", "team", usable="free"), ["free"]),
]


@pytest.mark.parametrize(("policy", "status", "refusal", "state", "action", "marked", "shown"), PER_MODEL)
def test_a_per_model_budget_takes_only_its_model_out(
    policy: Policy,
    status: int,
    refusal: Refusal | None,
    state: BudgetState,
    action: Action,
    marked: tuple[tuple[bytes, bytes], ...],
    shown: list[str],
) -> None:
    outcome = decide(
        policy, cuttable=True, status=status, refusal=refusal, verdict=None, state=state, release=V88
    )
    assert (outcome.action, outcome.marks) == (action, marked)
    is_free, allowed = (lambda name: name.startswith("free")), (lambda name: True)
    if policy is FREE_ONLY:
        visible = policy.visible(is_free, allowed, outcome.usable, outcome.without)
    else:
        visible = outcome.usable.admits(is_free, allowed, outcome.without)
    assert [name for name in MODELS if visible(name)] == shown
