"""What counts as LiteLLM's "budget exceeded" answer.

LiteLLM signals a spent budget (each level of ``rules.RULES``: key, key window, team, team member, user, end
user, organisation, a per-model budget, project, model access group, tag, the proxy's) with an error answer
whose status changed across versions: 400 up to 1.84, 429 from 1.85 to 1.100, 422 from 1.106; a few paths
use 403. The body is ``{"error": {"message": ..., "type": ..., ...}}``; on the Anthropic route
``/v1/messages`` LiteLLM 1.110 gives it Anthropic's shape, ``{"type": "error", "error": {"type":
"invalid_request_error", "message": ..., "litellm_error_type": "budget_exceeded"}}``. Most carry
``budget_exceeded`` in ``type`` (or ``litellm_error_type``); some (1.88's user check, "Max budget limit
reached.") carry ``"None"``, so the message is matched too, against LiteLLM's own wording (a per-model
budget's: "LiteLLM Team: t, exceeded budget for model=gpt-4o"). Anything
else - a 401 for a bad key, a 403 "access denied", a 5xx, a body that is not JSON - is *not* a budget
error and is passed through untouched.

A refusal is read once (``Refusal.of``: a status and a parsed body to a ``Refusal`` or nothing), and that
value serves every reader: discovery, the budget state, the budget view, ``doctor`` and the fallback. An
answer on a budget-checked route is read once too (``Reading``): a refusal, past the budget checks, or the
credential itself refused.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from sidecar.litellm.rules import RULES, BudgetLevel

__all__ = ["BudgetLevel"]  # also here, where a refusal's level has always been read from

BUDGET_STATUSES = frozenset({400, 403, 422, 429})


# How LiteLLM's own budget messages begin (every version from 1.83 to 1.110), after the "429: " that some
# routes put before an HTTPException's detail (1.88's /v1/completions and /v1/messages: "429: Max budget
# limit reached."). Matched at the start only: an access denial's message quotes the caller's model name,
# which may say anything.
_BUDGET_MESSAGES = re.compile(
    r"\s*(?:\d{3}: )?(?:Budget has been exceeded!|ExceededBudget:|Max budget limit reached\.|"
    r"LiteLLM (?:Virtual Key|User|End User|Team|Team Member): .*, exceeded budget for model=)"
)

# Whose budget is spent: the word right after LiteLLM's prefix ("Budget has been exceeded! Team=.."), or
# for a per-model budget the words before the model ("..., exceeded budget for model=gpt-4o"), as each
# level's row in ``rules.RULES`` has it; the longest first ("Key over" before "Key").
_NAMED = {rule.named: rule.level for rule in sorted(RULES, key=lambda rule: -len(rule.named)) if rule.named}


def _alternatives(prefixed: bool) -> str:
    return "|".join(
        re.escape(rule.named) + (r"\b" if rule.named[-1].isalnum() else "")
        for rule in sorted(RULES, key=lambda rule: -len(rule.named))
        if rule.named and rule.prefixed is prefixed
    )


_LEVEL = re.compile(
    rf"(?:Budget has been exceeded!|ExceededBudget:)\s*({_alternatives(True)}|Current cost)"
    rf"|({_alternatives(False)})"
)
_MODEL = re.compile(r"exceeded budget for model=([^,\s]+)")
# LiteLLM <= 1.88 names no principal for a key's own budget nor for a team member's: "Current cost: ..."
UNNAMED = BudgetLevel.UNNAMED

# The figures of LiteLLM's budget messages: "Current cost: 0.02, Max budget: 0.01" (key, team, team member,
# organisation), "Spend=0.02, Budget=0.01" (user, end user), "Spend=$0.0200, Limit=$0.01" (key window).
_FIGURES = re.compile(
    r"(?:Current cost:\s*|Spend=\$?)(?P<spend>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"
    r"(?:,\s*(?:Max budget:\s*|Budget=|Limit=\$?)(?P<budget>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?))?"
)
_WINDOW = re.compile(r"Key over (\S+) budget")
# What LiteLLM answers a credential it does not admit (a wrong, expired or blocked key), when the body is not
# a budget error.
NOT_ADMITTED_STATUSES = frozenset({401, 403})


def error_of(body: Any) -> dict[str, Any] | None:
    """The ``error`` object of an OpenAI-style error body, if it has one."""
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            return error
    return None


def is_budget_error(status: int, body: Any) -> bool:
    """True when ``status`` and the parsed JSON ``body`` are LiteLLM's spent-budget answer."""
    if status not in BUDGET_STATUSES:
        return False
    error = error_of(body)
    if error is None:
        return False
    if "budget_exceeded" in (error.get("type"), error.get("litellm_error_type")):
        return True
    message = error.get("message")
    return isinstance(message, str) and _BUDGET_MESSAGES.match(message) is not None


def _message(body: Any) -> str:
    message = (error_of(body) or {}).get("message")
    return message if isinstance(message, str) else ""


def budget_level(body: Any, unnamed: BudgetLevel = BudgetLevel.KEY) -> BudgetLevel:
    """Whose budget is spent - a level of ``rules.RULES`` (``key``, ``team``, ... ``model``, ``tag``) - or
    ``unknown``. A message that names no principal (LiteLLM <= 1.88 for a key's and a team
    member's budget) gives ``unnamed``, by default ``key``."""
    match = _LEVEL.search(_message(body))
    if match is None:
        return BudgetLevel.UNKNOWN
    return _NAMED.get(match.group(1) or match.group(2), unnamed)


def stated(body: Any) -> tuple[float | None, float | None]:
    """The spend and the budget a LiteLLM budget message states, where it states them."""
    match = _FIGURES.search(_message(body))
    if match is None:
        return None, None
    budget = match.group("budget")
    return float(match.group("spend")), None if budget is None else float(budget)


@dataclass(frozen=True, slots=True)
class Refusal:
    """LiteLLM's budget refusal, read once: the level its message names and the figures it states."""

    status: int
    level: BudgetLevel  # the level its message names: UNNAMED when it names none, UNKNOWN
    message: str | None
    enforced: float | None = None  # the spend it states: LiteLLM's counter
    budget: float | None = None  # the budget it states
    window: str | None = None  # the key budget window it names ("Key over 1d budget": "1d")
    model: str | None = None  # the model whose own budget is spent ("exceeded budget for model=gpt-4o")

    @classmethod
    def of(cls, status: int, body: Any) -> Refusal | None:
        """The refusal ``status`` and the parsed JSON ``body`` are, or ``None`` when they are not one."""
        if not is_budget_error(status, body):
            return None
        message = _message(body)
        enforced, budget = stated(body)
        window = _WINDOW.search(message)
        model = _MODEL.search(message)
        return cls(
            status,
            budget_level(body, unnamed=UNNAMED),
            message if isinstance((error_of(body) or {}).get("message"), str) else None,
            enforced,
            budget,
            window.group(1) if window else None,
            model.group(1) if model else None,
        )

    @classmethod
    def read(cls, status: int, raw: bytes | bytearray) -> Refusal | None:
        """The refusal in an answer's bytes (a small answer: its reader bounds it), if it is one."""
        if status not in BUDGET_STATUSES:
            return None
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: nested deeper than Python parses
            return None
        return cls.of(status, body)

    @property
    def named(self) -> BudgetLevel:
        """The level as shown: one the message does not name is a key's (LiteLLM's most common case)."""
        return BudgetLevel.KEY if self.level == UNNAMED else self.level

    def shown(self) -> dict[str, Any]:
        """The refusal as the budget view and ``doctor`` show it: the level it names, the spend it states
        (LiteLLM's counter) and its message."""
        return {"scope": self.named, "enforced": self.enforced, "message": self.message}


@dataclass(frozen=True, slots=True)
class Reading:
    """LiteLLM's answer on a budget-checked route (the probe route, or discovery's own), read once."""

    status: int
    refusal: Refusal | None = None
    passed: bool = False  # past LiteLLM's budget checks: within budget as it enforces it

    @classmethod
    def of(cls, status: int, body: Any) -> Reading:
        """``body``: the parsed JSON of a (small) 4xx answer; anything for another status."""
        refusal = Refusal.of(status, body)
        return cls(status, refusal, refusal is None and (status == 200 or past_budget_checks(status, body)))

    @property
    def refuses_credential(self) -> bool:
        """LiteLLM refused the credential itself (a wrong, expired or blocked key): 401/403 that is
        neither a budget error nor past the budget checks."""
        return self.status in NOT_ADMITTED_STATUSES and self.refusal is None and not self.passed


def past_budget_checks(status: int, body: Any) -> bool:
    """LiteLLM up to 1.88 answers a caller past its budget checks 401 "Cursor API key not found" on the
    probe route when no Cursor credentials are configured: past the budget checks, so within budget."""
    detail = body.get("detail") if isinstance(body, dict) else None
    return status == 401 and isinstance(detail, str) and detail.startswith("Cursor API key not found")
