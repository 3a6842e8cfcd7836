"""The budget levels of one caller's chain as LiteLLM records them, and what a budget refusal says of them.

A *level* is one budget LiteLLM checks for a caller: the key's own ``max_budget``, each of the key's budget
windows, its team's, its team membership's, its user's (personal keys), the end user's, the
organisation's. ``chain`` reads them from LiteLLM's admin answers (``admin.AdminLookups.budget_records``,
or the same routes asked with the caller's own key): recorded spend, ``max_budget``, reset time, and
whether the level is spent - compared as LiteLLM's own check does (each level's row in ``rules.RULES``: spend
at ``max_budget`` is already spent for a key, a key window, a team member, a user and an organisation; a
team and an end user must go past it).

``judge`` weighs one budget refusal against them. LiteLLM enforces budgets from its own spend counters
(``spend:key:<sha256>``, ``spend:team:<id>``, ...), not from the database; its message states the
counter ("Current cost: 0.02", "Spend=0.02"). The verdict:

- ``spent``: the refusing level's recorded spend is at its ``max_budget`` too - a real spent budget;
- ``phantom``: the refusing level's recorded spend is below its ``max_budget`` - LiteLLM's counter runs
  ahead of its own records (leaked budget reservations, stale counters: LiteLLM #27639, #27735), or the
  spend is not written yet (LiteLLM writes it in batches: ``graced`` says ``unknown`` until the
  disagreement has lasted the grace, ``phantom_after``, for the sidecar and ``doctor`` alike);
- ``unknown``: the level cannot be compared (no admin answer, a level the records do not show).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sidecar.litellm.budget_errors import UNNAMED, BudgetLevel, Refusal
from sidecar.litellm.rules import RULES

# The order levels are named in when several are spent: the narrowest first.
_ORDER = {level: rank for rank, level in enumerate(BudgetLevel)}
# Levels that are spent at max_budget already; the others (team, end user) only past it (``rules.RULES``).
_AT_LIMIT = frozenset(rule.level for rule in RULES if rule.at_limit)
# Seconds a refusal the records do not bear out must last before it is a phantom (``graced``): the default
# of the ``phantom_after`` setting, which the sidecar and ``doctor`` both use. LiteLLM writes spend to its
# database in batches (proxy_batch_write_at, 10 s by default): right after a caller crosses its budget the
# records lag its counters for seconds.
PHANTOM_AFTER = 30.0
# The levels a refusal that names none can mean (LiteLLM <= 1.88).
_UNNAMED_MEANS = (BudgetLevel.KEY, BudgetLevel.TEAM_MEMBER)


class Finding(enum.StrEnum):
    """A verdict: the values of the ``verdict`` log field, metric label and JSON field."""

    SPENT = "spent"  # the refusing level is recorded as spent too
    PHANTOM = "phantom"  # the refusing level is recorded within budget
    UNKNOWN = "unknown"  # the refusing level cannot be compared
    WITHIN = "within"  # no refusal: the budget view's and ``doctor``'s
    INCONSISTENT = "inconsistent"  # no refusal, a level recorded as spent: ``doctor``'s


class Source(enum.StrEnum):
    """What says a level is spent (``budget.py``): the values of the ``source``/``sources`` log fields
    and of the ``source`` metric label."""

    ENFORCED = "enforced"  # LiteLLM's refusal on the probe route
    RECORDED = "recorded"  # LiteLLM's database, read with the admin credential
    SEEN = "seen"  # a refusal LiteLLM sent the caller on its way


@dataclass(frozen=True, slots=True)
class Level:
    """One budget level of a caller's chain, as LiteLLM records it."""

    name: BudgetLevel  # which budget it is
    id: str  # team, user, end-user or organisation id; "user:team" for a member; window duration; "" key
    spend: float | None
    max_budget: float
    resets_at: str | None = None

    @property
    def spent(self) -> bool:
        if self.spend is None:
            return False
        return self.spend >= self.max_budget if self.name in _AT_LIMIT else self.spend > self.max_budget

    @property
    def remaining(self) -> float:
        return max(0.0, self.max_budget - (self.spend or 0.0))

    def shown(self, blocking: bool) -> dict[str, Any]:
        """The level as the budget view and ``doctor`` show it; ``blocking``: LiteLLM refuses at it now."""
        return {
            "scope": self.name,
            "id": self.id,
            "spend": self.spend,
            "max_budget": self.max_budget,
            "remaining": self.remaining,
            "resets_at": self.resets_at,
            "spent": self.spent,
            "blocking": blocking,
        }


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a budget refusal says: ``spent``, ``phantom`` or ``unknown``, for the level that refused."""

    verdict: Finding
    level: BudgetLevel  # the refusing level; UNKNOWN when LiteLLM's message names none the chain shows
    enforced: float | None = None  # the spend LiteLLM's message states (its counter)
    recorded: Level | None = None  # that level as recorded
    reason: str = ""  # why ``unknown``

    def fields(self) -> dict[str, Any]:
        """The verdict as log fields (and the budget view's), without the caller's identity."""
        level = self.recorded
        found: dict[str, Any] = {"verdict": self.verdict, "scope": self.level, "enforced": self.enforced}
        if level is not None:
            found.update(
                id=level.id, recorded=level.spend, max_budget=level.max_budget, resets_at=level.resets_at
            )
        if self.reason:
            found["reason"] = self.reason
        return found


def judge(refusal: Refusal, levels: tuple[Level, ...]) -> Verdict:
    """The verdict on ``refusal``, against the caller's recorded ``levels``."""
    enforced, budget, named = refusal.enforced, refusal.budget, refusal.level
    if named == UNNAMED:  # LiteLLM <= 1.88: "Current cost: ..." for a key's or a team member's budget
        candidates = [lv for lv in levels if lv.name in _UNNAMED_MEANS]
    elif named == BudgetLevel.KEY_WINDOW:
        window = refusal.window
        candidates = [lv for lv in levels if lv.name == named and (not window or lv.id == window)]
    else:
        candidates = [lv for lv in levels if lv.name == named]
    if not candidates:
        if named == UNNAMED:
            named = BudgetLevel.UNKNOWN
        spent = [lv for lv in levels if lv.spent]
        if named == BudgetLevel.UNKNOWN and spent:  # the message names no level, the records show one spent
            return Verdict(Finding.SPENT, spent[0].name, enforced, spent[0])
        return Verdict(Finding.UNKNOWN, named, enforced, reason="the records show no budget at that level")
    spent = [lv for lv in candidates if lv.spent]
    candidates = [lv for lv in candidates if lv.spent or lv.spend is not None]
    if not candidates:  # key budget windows before 1.106: LiteLLM keeps their spend in counters only
        return Verdict(Finding.UNKNOWN, named, enforced, reason="LiteLLM records no spend for that level")
    if spent:
        return Verdict(Finding.SPENT, spent[0].name, enforced, spent[0])
    # Every level the refusal can mean is within budget as recorded; name the one whose budget it states.
    level = next((lv for lv in candidates if budget is not None and _same(lv.max_budget, budget)), None)
    level = level or candidates[0]
    return Verdict(Finding.PHANTOM, level.name, enforced, level)


def graced(verdict: Verdict, lasted: float, grace: float) -> Verdict:
    """The one rule for a new phantom: ``verdict`` is a phantom only once the disagreement has lasted
    ``grace`` seconds (``lasted``, as whoever asks has watched it); before, it is ``unknown`` - the spend
    may not be written yet."""
    if verdict.verdict != Finding.PHANTOM or lasted >= grace:
        return verdict
    reason = (
        f"recorded spend below max_budget for {lasted:.0f} s so far: LiteLLM writes spend in batches; "
        f"phantom after {grace:g} s"
    )
    return Verdict(Finding.UNKNOWN, verdict.level, verdict.enforced, verdict.recorded, reason)


def _same(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _object(answer: Any, *path: str) -> dict[str, Any]:
    for name in path:
        answer = answer.get(name) if isinstance(answer, dict) else None
    return answer if isinstance(answer, dict) else {}


def _reset(info: Mapping[str, Any]) -> str | None:
    value = info.get("budget_reset_at")
    return value if isinstance(value, str) else None


def _level(name: BudgetLevel, id_: Any, spend: Any, max_budget: Any, resets_at: str | None) -> list[Level]:
    budget = _number(max_budget)
    if budget is None:
        return []
    return [Level(name, id_ if isinstance(id_, str) else "", _number(spend), budget, resets_at)]


def chain(records: Mapping[str, Any]) -> tuple[Level, ...]:
    """Every level with a budget in the admin answers of one caller's chain, the narrowest first.

    ``records`` holds the answers of ``/key/info`` (``key``), ``/team/info`` (``team``), ``/user/info``
    (``user``, personal keys only), ``/customer/info`` (``end_user``), ``/organization/info`` (``org``);
    a level that does not apply, or that LiteLLM would not show, is missing."""
    found: list[Level] = []
    key = _object(records.get("key"), "info")
    found += _level(BudgetLevel.KEY, "", key.get("spend"), key.get("max_budget"), _reset(key))
    found += _windows(key)
    team = _object(records.get("team"), "team_info")
    found += _level(
        BudgetLevel.TEAM, team.get("team_id"), team.get("spend"), team.get("max_budget"), _reset(team)
    )
    member = _membership(records.get("team"), key.get("user_id"))
    budget = _object(member, "litellm_budget_table")
    member_id = f"{member.get('user_id')}:{team.get('team_id')}"
    found += _level(
        BudgetLevel.TEAM_MEMBER, member_id, member.get("spend"), budget.get("max_budget"), _reset(budget)
    )
    user = _object(records.get("user"), "user_info")
    found += _level(
        BudgetLevel.USER, user.get("user_id"), user.get("spend"), user.get("max_budget"), _reset(user)
    )
    end_user = _object(records, "end_user")
    budget = _object(end_user, "litellm_budget_table")
    reset = _reset(budget)
    found += _level(
        BudgetLevel.END_USER, end_user.get("user_id"), end_user.get("spend"), budget.get("max_budget"), reset
    )
    org = _object(records, "org")
    budget = _object(org, "litellm_budget_table")
    reset = _reset(budget) or _reset(org)
    found += _level(
        BudgetLevel.ORG, org.get("organization_id"), org.get("spend"), budget.get("max_budget"), reset
    )
    return tuple(found)


def _membership(team_answer: Any, user_id: Any) -> dict[str, Any]:
    if not isinstance(user_id, str):
        return {}
    members = team_answer.get("team_memberships") if isinstance(team_answer, dict) else None
    for member in members if isinstance(members, list) else ():
        if isinstance(member, dict) and member.get("user_id") == user_id:
            return member
    return {}


def _windows(key: Mapping[str, Any]) -> list[Level]:
    """Key budget windows: ``budget_limits`` (``[{budget_duration, max_budget, reset_at}]``) against
    ``budget_limits_usage`` (``{duration: {current_spend}}``), which ``/key/info`` reports from 1.106 on.
    Before that LiteLLM keeps a window's spend only in its counters (spend ``None`` here): the enforced
    source sees it. No check of ``reset_at``: the usage is the counter LiteLLM enforces, which keeps its
    spend past ``reset_at`` until LiteLLM's reset job runs (1.110.2 refused a 30 s window long after it)."""
    limits = key.get("budget_limits")
    if isinstance(limits, str):
        try:
            limits = json.loads(limits)
        except ValueError:
            return []
    usage = key.get("budget_limits_usage")
    found = []
    for window in limits if isinstance(limits, list) else ():
        if not isinstance(window, dict) or not isinstance(window.get("budget_duration"), str):
            continue
        duration = window["budget_duration"]
        spend = _object(usage, duration).get("current_spend")
        reset = window.get("reset_at")
        reset = reset if isinstance(reset, str) else None
        found += _level(BudgetLevel.KEY_WINDOW, duration, spend, window.get("max_budget"), reset)
    return found


@dataclass(frozen=True, slots=True)
class Spent:
    """One spent budget level, as one source reports it."""

    level: BudgetLevel
    source: Source
    reset_at: str | None = None
    model: str | None = None  # a per-model budget's model: only that model is refused


NOT_ADMITTED = "LiteLLM does not admit the credential"


@dataclass(frozen=True, slots=True)
class BudgetState:
    """What the sidecar knows of one principal's budget."""

    spent: tuple[Spent, ...] = ()
    known: bool = True  # False: no source could answer (``reason`` says why)
    reason: str = ""
    verdict: Verdict | None = None  # LiteLLM's refusal judged against the records, when it refused

    @property
    def phantom(self) -> bool:
        return self.verdict is not None and self.verdict.verdict == Finding.PHANTOM

    @property
    def admitted(self) -> bool:
        """False when LiteLLM refused the credential itself: not a budget question, nothing to warn of."""
        return self.reason != NOT_ADMITTED

    @property
    def over(self) -> bool:
        return bool(self.spent)

    @property
    def recorded(self) -> tuple[Spent, ...]:
        return tuple(s for s in self.spent if s.source == Source.RECORDED)

    @property
    def level(self) -> BudgetLevel:
        """The level to name: the one a refusal named, else the narrowest recorded one."""
        named = [s for s in self.spent if s.source != Source.RECORDED]
        chosen = named or list(self.spent)
        return min(
            (s.level for s in chosen), key=lambda s: _ORDER.get(s, len(_ORDER)), default=BudgetLevel.UNKNOWN
        )

    def named(self, level: BudgetLevel, verdict: Verdict | None = None) -> BudgetLevel:
        """The level a refusal names, as this state names it: the one place a refusal that names no
        level ("Current cost: ...", LiteLLM <= 1.88 for a key's and a team member's budget) is named -
        after the chain where it tells which (its one spent key or team-member level), else after the
        level the verdict found it meant, else ``key``."""
        if level != UNNAMED:
            return level
        return _unnamed_level((s.level for s in self.recorded), verdict)


def _unnamed_level(recorded: Iterable[BudgetLevel], verdict: Verdict | None) -> BudgetLevel:
    levels = [level for level in recorded if level in _UNNAMED_MEANS]
    if len(levels) == 1:
        return levels[0]
    if verdict is not None and verdict.level in _UNNAMED_MEANS:
        return verdict.level
    return BudgetLevel.KEY


def spent(levels: tuple[Level, ...]) -> tuple[Spent, ...]:
    """The spent levels of a chain, as the recorded source reports them."""
    return tuple(Spent(level.name, Source.RECORDED, level.resets_at) for level in levels if level.spent)
