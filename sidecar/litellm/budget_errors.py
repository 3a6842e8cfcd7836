"""What counts as LiteLLM's "budget exceeded" answer.

LiteLLM signals a spent budget (key, key window, team, team member, user, end user or organisation) with an
error answer whose status changed across versions: 400 up to 1.84, 429 from 1.85 to 1.100, 422 from 1.106;
a few paths use 403. The body is ``{"error": {"message": ..., "type": ..., ...}}``; on the Anthropic route
``/v1/messages`` LiteLLM 1.110 gives it Anthropic's shape, ``{"type": "error", "error": {"type":
"invalid_request_error", "message": ..., "litellm_error_type": "budget_exceeded"}}``. Most carry
``budget_exceeded`` in ``type`` (or ``litellm_error_type``); some (1.88's user check, "Max budget limit
reached.") carry ``"None"``, so the message is matched too, against LiteLLM's own wording. Anything
else - a 401 for a bad key, a 403 "access denied", a 5xx, a body that is not JSON - is *not* a budget
error and is passed through untouched.
"""

from __future__ import annotations

import re
from typing import Any

BUDGET_STATUSES = frozenset({400, 403, 422, 429})

# How LiteLLM's own budget messages begin (every version from 1.83 to 1.110), after the "429: " that some
# routes put before an HTTPException's detail (1.88's /v1/completions and /v1/messages: "429: Max budget
# limit reached."). Matched at the start only: an access denial's message quotes the caller's model name,
# which may say anything.
_BUDGET_MESSAGES = re.compile(
    r"\s*(?:\d{3}: )?(?:Budget has been exceeded!|ExceededBudget:|Max budget limit reached\.)"
)

# Whose budget is spent: the word right after LiteLLM's prefix ("Budget has been exceeded! Team=..").
_SCOPE = re.compile(
    r"(?:Budget has been exceeded!|ExceededBudget:)\s*"
    r"(End User=|Organization=|TeamMember=|Team=|User=|Key over|Key\b|Current cost)"
)
_SCOPE_NAMES = {
    "End User=": "end_user",
    "Organization=": "org",
    "TeamMember=": "team_member",  # LiteLLM >= 1.106
    "Team=": "team",
    "User=": "user",
    "Key over": "key_window",  # "Key over 1d budget"
    "Key": "key",
}
# LiteLLM <= 1.88 names no principal for a key's own budget nor for a team member's: "Current cost: ..."
UNNAMED = "unnamed"


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


def budget_scope(body: Any, unnamed: str = "key") -> str:
    """Whose budget is spent - ``key``, ``key_window``, ``team``, ``team_member``, ``user``, ``end_user``,
    ``org`` - or ``unknown``. A message that names no principal (LiteLLM <= 1.88 for a key's and a team
    member's budget) gives ``unnamed``, by default ``key``."""
    match = _SCOPE.search(_message(body))
    if match is None:
        return "unknown"
    return _SCOPE_NAMES.get(match.group(1), unnamed)
