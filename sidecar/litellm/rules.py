"""The budget levels LiteLLM enforces, one row each: the one table of what the sidecar knows about them.

A row says, for one level, how LiteLLM's refusal names it, which admin record holds it, how its spend is
compared with its ``max_budget``, whether LiteLLM shows that record to the caller's own key, and on which
LiteLLM versions a caller spent at that level is refused **zero-cost models too** - each with the LiteLLM
source it comes from (``litellm/…`` paths, lines per version 1.83.3 / 1.88.6 / 1.106.2 / 1.109.1 /
1.110.2). ``budget_errors`` builds its message patterns from it, ``levels`` its comparisons, ``policy``
what a spent caller may use now; adding a level or a version quirk is one row here.

Zero-cost models. From 1.83 on LiteLLM skips every budget check of a request for a zero-cost model
(``proxy/auth/user_api_key_auth.py``: ``skip_budget_checks = _is_model_cost_zero(...)``, 1.83.3:1290,
1.88.6:1464; from 1.106: ``request_skips_budget_checks``), so a spent caller may still use the free models -
except where a level is checked outside that skip:

- **user** (a personal key's user), 1.88.6: the ``max_budget_limiter`` pre-call hook
  (``proxy/hooks/max_budget_limiter.py:66``) refuses "Max budget limit reached." whenever the user's spend
  counter is at its budget, whatever the model costs. 1.83.3 has the hook, but it reads a cached user row
  (``:24-28``) that nothing writes (``proxy/utils.py:4480``, ``_cache_user_row``, has no caller), so it
  never refuses; 1.106.2 has no such hook (the user check sits in ``common_checks`` behind ``if not
  skip_all_budget_checks``, ``proxy/auth/auth_checks.py:1207``, 1.109.1:1393, 1.110.2:1414).
- **end user**, up to 1.88.6: ``get_end_user_object`` checks the end user's budget itself
  (``proxy/auth/auth_checks.py``, 1.83.3:1005 and :1036, 1.88.6:1158 and :1191), before and outside the
  zero-cost skip. From 1.106.2 ``check_end_user_budget`` runs only in ``common_checks`` behind ``if not
  skip_all_budget_checks`` (1.106.2:1313, 1.109.1:1498, 1.110.2:1519).

Versions between two that were read take the rule of the one that refuses (1.84 to 1.105 are treated as
1.88.6 for the user); versions after the newest read (1.110.2) take its rules. When the sidecar does not
know the version it is in front of, it takes a level as refusing free models if any version does
(``refuses_free(level, None)``): it then lists no model it cannot vouch for.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

Release = tuple[int, int, int]


class BudgetLevel(enum.StrEnum):
    """Which of a caller's budgets LiteLLM checks: the values of ``x-sidecar-budget-scope``, of the
    ``scope`` log field and metric label, narrowest first (the order several spent levels are named in)."""

    KEY = "key"  # the key's own max_budget
    KEY_WINDOW = "key_window"  # one of the key's budget windows (budget_limits, LiteLLM >= 1.106)
    TEAM = "team"
    TEAM_MEMBER = "team_member"  # the key's user's membership of its team
    USER = "user"  # the key's user (personal keys)
    END_USER = "end_user"  # the end user (customer) the request names
    ORG = "org"  # the organisation
    MODEL = "model"  # a per-model budget (model_max_budget of a key, user, end user, team or member)
    PROJECT = "project"  # the key's project
    ACCESS_GROUP = "access_group"  # a model access group's budget (LiteLLM >= 1.106)
    TAG = "tag"  # a request tag's budget
    PROXY = "proxy"  # the proxy-wide max_budget
    UNKNOWN = "unknown"  # a level the sidecar cannot name
    # A refusal that names no level (LiteLLM <= 1.88: "Current cost: ..." for a key's or a team member's
    # budget): resolved against the caller's chain (``levels.BudgetState.named``), never shown.
    UNNAMED = "unnamed"


@dataclass(frozen=True, slots=True)
class Versions:
    """LiteLLM versions ``since`` (inclusive) up to ``until`` (exclusive); ``None``: open on that side."""

    since: Release | None = None
    until: Release | None = None

    def __contains__(self, release: Release) -> bool:
        return (self.since is None or release >= self.since) and (self.until is None or release < self.until)


@dataclass(frozen=True, slots=True)
class Rule:
    """One budget level as LiteLLM enforces it."""

    level: BudgetLevel
    # How LiteLLM's refusal names it: right after "Budget has been exceeded!"/"ExceededBudget:", or, where
    # ``prefixed`` is false, anywhere in a budget refusal's message; "": it names none.
    named: str
    record: str  # the admin route whose answer records it (``levels.chain`` reads it); "": none read
    at_limit: bool  # spent at max_budget already (``>=``); else only past it (``>``)
    own: bool  # LiteLLM shows that record to the caller's own key (the budget view shows it)
    source: str  # where LiteLLM builds the refusal and compares (1.110.2 unless said)
    free_refused: Versions | None = None  # versions on which it refuses zero-cost models too
    free_source: str = ""  # why, in LiteLLM's source (the module docstring has the whole story)
    prefixed: bool = True
    licence: str = ""  # where LiteLLM asks for an enterprise licence to set such a budget; "": it does not
    proven: bool = True  # recognised on real LiteLLM (the integration suite); else from its source only


_AUTH = "proxy/auth/auth_checks.py"
RULES: tuple[Rule, ...] = (
    Rule(
        BudgetLevel.KEY,
        "Key",
        "/key/info",
        True,
        True,
        f'{_AUTH}:6797 "Budget has been exceeded! Key=" (1.88.6:3507; 1.83.3 names no key)',
    ),
    Rule(
        BudgetLevel.KEY_WINDOW,
        "Key over",
        "/key/info",
        True,
        True,
        f'{_AUTH}:6842 "ExceededBudget: Key over <duration> budget" (1.88.6:3542)',
    ),
    Rule(
        BudgetLevel.TEAM,
        "Team=",
        "/team/info",
        False,
        True,
        f'{_AUTH}:7273 "Budget has been exceeded! Team=" (1.88.6:3899, 1.83.3:3154)',
    ),
    Rule(
        BudgetLevel.TEAM_MEMBER,
        "TeamMember=",
        "/team/info",
        True,
        True,
        'proxy/auth/user_api_key_auth.py:3371 "Budget has been exceeded! TeamMember=" (1.106.2:2465; '
        "before 1.106 the message names no member)",
    ),
    Rule(
        BudgetLevel.USER,
        "User=",
        "/user/info",
        True,
        True,
        f'{_AUTH}:1462 "ExceededBudget: User=" (1.88.6:702, 1.83.3:562)',
        Versions((1, 84, 0), (1, 106, 0)),
        "proxy/hooks/max_budget_limiter.py:66 (1.88.6): the pre-call hook refuses at the user's budget "
        "whatever the model costs; 1.83.3's never fires, 1.106.2 has none",
    ),
    Rule(
        BudgetLevel.END_USER,
        "End User=",
        "/customer/info",
        False,
        False,
        f'{_AUTH}:1998 "ExceededBudget: End User=" (1.88.6:1104, 1.83.3:953)',
        Versions(None, (1, 106, 0)),
        f"{_AUTH}:1158,1191 (1.88.6; 1.83.3:1005,1036): get_end_user_object checks the budget outside the "
        "zero-cost skip; from 1.106.2 only common_checks does (1.110.2:1519)",
    ),
    Rule(
        BudgetLevel.ORG,
        "Organization=",
        "/organization/info",
        True,
        False,
        f'{_AUTH}:7653 "Budget has been exceeded! Organization=" (1.88.6:4254, 1.83.3:3466)',
        licence="from 1.106 (the harness cannot make one there; measured)",
    ),
    # Per-model budgets: checked for the requested model only, so only that model is spent; a zero-cost
    # model skips every budget check. LiteLLM names the model, not the level word the others use.
    Rule(
        BudgetLevel.MODEL,
        ", exceeded budget for model=",
        "",
        True,
        False,
        'proxy/hooks/model_max_budget_limiter.py:922,961,984,1010,1028 "LiteLLM Virtual Key|User|End User|'
        'Team|Team Member: ..., exceeded budget for model=<model>", compared at :1090 (1.88.6:81,136)',
        prefixed=False,
        licence="for a key: proxy/management_endpoints/key_management_endpoints.py:8570 (measured: 1.88.6, "
        "1.110.2)",
        proven=False,
    ),
    Rule(
        BudgetLevel.PROJECT,
        "Project=",
        "",
        True,
        False,
        f'{_AUTH}:7445 "Budget has been exceeded! Project=", compared at :7423 (1.88.6:4063, 1.83.3:3284)',
        proven=False,
    ),
    Rule(
        BudgetLevel.ACCESS_GROUP,
        "Model access group=",
        "",
        True,
        False,
        f'{_AUTH}:7780 "Budget has been exceeded! Model access group=", compared at :7775 (1.106.2:6915, '
        "1.109.1:7820; none before 1.106)",
        proven=False,
    ),
    Rule(
        BudgetLevel.TAG,
        "Tag=",
        "",
        False,
        False,
        f'{_AUTH}:7725 "Budget has been exceeded! Tag=", compared at :7720 (1.88.6:4312, 1.83.3:3518)',
        proven=False,
    ),
    # The proxy-wide budget's refusal names no level ("Budget has been exceeded! Current cost: ...",
    # exceptions.py:1147, the default message of BudgetExceededError), as a key's or a team member's did up
    # to 1.88: it is read as theirs (``levels.BudgetState.named``).
    Rule(
        BudgetLevel.PROXY,
        "",
        "",
        False,
        False,
        f"{_AUTH}:946 _global_proxy_budget_check, spend > max_budget; exceptions.py:1147 (1.88.6:356; "
        "1.83.3:319)",
        proven=False,
    ),
)
RULE = {rule.level: rule for rule in RULES}


def release_of(version: str | None) -> Release | None:
    """``(major, minor, patch)`` of a LiteLLM version (``1.88.6``, ``1.110.2-stable``), if it is one."""
    found = re.match(r"(\d{1,6})\.(\d{1,6})\.(\d{1,6})", version or "")
    return None if found is None else (int(found[1]), int(found[2]), int(found[3]))


def refuses_free(level: BudgetLevel, version: Release | None) -> bool:
    """Whether LiteLLM ``version`` refuses zero-cost models too to a caller spent at ``level``; for an
    unknown version, whether any version does (the conservative answer)."""
    rule = RULE.get(level)
    if rule is None or rule.free_refused is None:
        return False
    return version is None or version in rule.free_refused


def version_matters(level: BudgetLevel) -> bool:
    """Whether what a caller spent at ``level`` may use depends on LiteLLM's version."""
    rule = RULE.get(level)
    return rule is not None and rule.free_refused is not None
