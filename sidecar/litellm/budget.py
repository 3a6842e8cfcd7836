"""Whether a caller is over budget, and at which level: the one place the sidecar decides it.

A caller (``Principal``) is its credential - for a LiteLLM virtual key, LiteLLM's token, the key's
SHA-256 - and the end user its request names (``x-litellm-end-user-id`` or ``x-litellm-customer-id``).
Three sources say whether it is over budget:

- **enforced**: LiteLLM's own answer to ``GET /cursor/v1/models`` asked with the caller's own headers. Every
  LiteLLM from 1.83 to 1.110 runs its budget checks on that route (key, key windows, team, team member,
  user, end user, organisation, from its spend counters) and spends nothing; a budget error there is what
  LiteLLM enforces on a paid call now, phantom budgets included (LiteLLM #27639, #27735).
- **recorded**: the budget chain in LiteLLM's database, read with the admin credential (``admin.py``):
  the key's ``max_budget`` and budget windows, its team's, its team membership's, its user's, the end
  user's and the organisation's ``spend`` against ``max_budget``, with their reset times.
- **seen**: a budget refusal LiteLLM sent this caller on any route, discovery or a passed-through
  inference call, within the last ``ttl`` seconds: over budget now, before the database shows it.

How they are weighed: LiteLLM's refusal says *whether* - what it enforces is what the caller meets on a
paid call - and the chain says *which level* and *when it resets*.

1. A refusal seen within ``ttl`` decides at once (over budget, at the level it names).
2. Else the probe: within budget there is within budget, with no admin look-up (the cheap, common case).
3. Over budget there: the chain is read too, to name the level where the message names none (a key's or a
   team member's budget up to 1.88: "Current cost: ...") and for reset times. A chain that shows no spent
   level is logged as ``budget_sources_disagree`` and counted: LiteLLM writes spend to its database in
   batches, so briefly after a caller crosses its budget that is normal; lasting, it is a phantom budget.
4. The probe fails (a LiteLLM without the route, a 5xx): the chain decides, and the failure is logged
   (``budget_source_failed``, at most once a minute per reason) and counted - a LiteLLM that moved the
   route shows there instead of silently turning the policies off. The integration suite asserts each
   source alone on every version.
5. Neither answers: the state is unknown and discovery falls back to LiteLLM's own answer.

States are cached per principal for ``ttl`` seconds (single flight), so a warm caller costs no upstream
round trip; a reset in LiteLLM shows here at most ``ttl`` seconds later.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sidecar.cache import SingleFlightCache
from sidecar.litellm.admin import AdminLookups, LookupFailed
from sidecar.litellm.budget_errors import UNNAMED, budget_scope, is_budget_error, spent_end_user
from sidecar.litellm.credentials import caller_key, end_user_of, key_hash
from sidecar.logs import event
from sidecar.metrics import Metrics
from sidecar.types import Scope

log = logging.getLogger("sidecar.litellm.budget")

SCOPES = ("key", "key_window", "team", "team_member", "user", "end_user", "org", "unknown")
# The order levels are named in when several are spent: the narrowest first.
_ORDER = {scope: rank for rank, scope in enumerate(SCOPES)}


class SourceFailed(Exception):
    """A source could not answer; the message says why (path and status, never a credential)."""


@dataclass(frozen=True, slots=True)
class Principal:
    """One caller as LiteLLM budgets it: its credential's hash and the end user it names."""

    token: str  # SHA-256 of the credential; LiteLLM's token when ``virtual_key``
    virtual_key: bool  # an ``sk-`` key LiteLLM's admin API can be asked about
    end_user: str | None = None


def principal_of(scope: Scope) -> Principal | None:
    """The principal a request is made for, or ``None`` when it carries no credential."""
    key = caller_key(scope)
    if key is None:
        return None
    return Principal(key_hash(key), key.startswith("sk-"), end_user_of(scope))


@dataclass(frozen=True, slots=True)
class Spent:
    """One spent budget level, as one source reports it."""

    scope: str
    source: str  # "enforced", "recorded" or "seen"
    reset_at: str | None = None


@dataclass(frozen=True, slots=True)
class BudgetState:
    """What the sidecar knows of one principal's budget."""

    spent: tuple[Spent, ...] = ()
    known: bool = True  # False: no source could answer (``reason`` says why)
    reason: str = ""

    @property
    def over(self) -> bool:
        return bool(self.spent)

    @property
    def scope(self) -> str:
        """The level to name: the one a refusal named, else the narrowest recorded one."""
        named = [s for s in self.spent if s.source != "recorded"]
        chosen = named or list(self.spent)
        return min((s.scope for s in chosen), key=lambda s: _ORDER.get(s, len(SCOPES)), default="unknown")


PROBE_ROUTE = "/cursor/v1/models"
NO_ADMIN = "no admin credential configured"
NOT_A_VIRTUAL_KEY = "the credential is not a LiteLLM virtual key (JWT or other auth)"
_EXPECTED = frozenset({NO_ADMIN, NOT_A_VIRTUAL_KEY})  # how the sidecar is set up, not a failure
_LOG_EVERY = 60.0
Probe = Callable[[], Awaitable[tuple[int, Any]]]


class BudgetBook:
    """Budget states per principal: cached, single flight, refusals seen on the way recorded at once."""

    def __init__(self, admin: AdminLookups | None, ttl: float, metrics: Metrics) -> None:
        self._admin = admin
        self._metrics = metrics
        self.ttl = ttl
        self.states: SingleFlightCache[Principal, BudgetState] = SingleFlightCache(ttl)
        # Refusals seen: per credential (its own levels), per end user (theirs, whatever key names them).
        self._seen_keys: dict[str, tuple[float, Spent]] = {}
        self._seen_end_users: dict[str, tuple[float, Spent]] = {}
        self._logged: dict[tuple[str, str], float] = {}

    def cached(self, who: Principal) -> BudgetState | None:
        """The state if it is known without a round trip (a refusal seen, or a fresh cache entry)."""
        seen = self._seen(who)
        if seen and not _unnamed(seen):
            return BudgetState(seen)
        known = self.states.peek(who)
        return None if known is None else _with_seen(known, seen)

    async def state(self, who: Principal, probe: Probe) -> BudgetState:
        """The principal's state; ``probe`` asks LiteLLM's enforced state with the caller's headers.

        A refusal seen within ``ttl`` answers at once, unless it names no level: then the chain does."""
        seen = self._seen(who)
        if seen and not _unnamed(seen):
            return BudgetState(seen)
        known = await self.states.get(who, lambda: self._establish(who, probe))
        return _with_seen(known, seen)

    def saw(self, who: Principal | None, status: int, body: Any) -> Spent | None:
        """Record a budget refusal LiteLLM sent ``who``; returns the level it names, if it was one."""
        if not is_budget_error(status, body):
            return None
        spent = Spent(budget_scope(body, unnamed=UNNAMED), "seen")
        until = time.monotonic() + self.ttl
        end_user = spent_end_user(body)
        if spent.scope == "end_user" and end_user is not None:
            self._remember(self._seen_end_users, end_user, until, spent)
        elif who is not None:
            self._remember(self._seen_keys, who.token, until, spent)
        if who is not None:
            self.states.forget(who)
        return spent

    def _remember(self, seen: dict[str, tuple[float, Spent]], key: str, until: float, spent: Spent) -> None:
        if self.ttl <= 0:
            return
        if len(seen) >= self.states.max_entries:
            now = time.monotonic()
            for stale in [k for k, (t, _) in seen.items() if t <= now] or [next(iter(seen))]:
                del seen[stale]
        seen[key] = (until, spent)

    def _seen(self, who: Principal) -> tuple[Spent, ...]:
        now = time.monotonic()
        found = []
        for seen, key in ((self._seen_keys, who.token), (self._seen_end_users, who.end_user)):
            entry = seen.get(key) if key is not None else None
            if entry is not None:
                if entry[0] > now:
                    found.append(entry[1])
                else:
                    del seen[key]  # type: ignore[arg-type]
        return tuple(found)

    async def enforced(self, probe: Probe) -> tuple[Spent, ...]:
        """LiteLLM's enforced state: the level its budget error on the probe route names, if any."""
        status, body = await probe()
        if is_budget_error(status, body):
            return (Spent(budget_scope(body, unnamed=UNNAMED), "enforced"),)
        if status == 200 or _no_cursor_credentials(status, body):
            return ()  # past LiteLLM's budget checks
        raise SourceFailed(f"{PROBE_ROUTE} answered {status}")

    async def recorded(self, who: Principal) -> tuple[Spent, ...]:
        """The spent levels of the principal's budget chain in LiteLLM's database."""
        if self._admin is None:
            raise SourceFailed(NO_ADMIN)
        if not who.virtual_key and who.end_user is None:
            raise SourceFailed(NOT_A_VIRTUAL_KEY)
        token = who.token if who.virtual_key else None
        try:
            records = await self._admin.budget_records(token, who.end_user)
        except LookupFailed as exc:
            raise SourceFailed(str(exc)) from None
        return spent_levels(records)

    async def _establish(self, who: Principal, probe: Probe) -> BudgetState:
        enforced = await self._source("enforced", self.enforced(probe))
        if enforced == ():
            return BudgetState()  # within budget as LiteLLM enforces it: no admin look-up
        recorded = await self._source("recorded", self.recorded(who))
        if isinstance(enforced, str):
            if isinstance(recorded, str):
                return BudgetState(known=False, reason=f"enforced: {enforced}; recorded: {recorded}")
            return BudgetState(recorded)
        if not isinstance(recorded, str):
            self._compare(who, enforced, recorded)
        return BudgetState(_resolve(enforced, _levels(recorded)))

    async def _source(self, name: str, answer: Awaitable[tuple[Spent, ...]]) -> tuple[Spent, ...] | str:
        """A source's spent levels, or why it could not answer (counted, logged at most once a minute)."""
        try:
            return await answer
        except SourceFailed as exc:
            reason = str(exc)
        if reason not in _EXPECTED:
            self._metrics.budget_source_failures.labels(name).inc()
            now = time.monotonic()
            if self._logged.get((name, reason), -_LOG_EVERY) + _LOG_EVERY <= now:
                self._logged[(name, reason)] = now
                event(log, logging.WARNING, "budget_source_failed", source=name, reason=reason)
        return reason

    def _compare(self, who: Principal, enforced: tuple[Spent, ...], recorded: tuple[Spent, ...]) -> None:
        """LiteLLM refuses; does its database agree? If not: batch-write lag, or a phantom budget."""
        if recorded:
            return
        said = _resolve(enforced, ())[0].scope
        self._metrics.budget_disagreements.labels(said).inc()
        event(  # INFO: LiteLLM writes spend to its database in batches, so a fresh refusal leads it
            log,
            logging.INFO,
            "budget_sources_disagree",
            enforced=said,
            recorded="within",
            end_user=who.end_user is not None,
        )


def _levels(answer: tuple[Spent, ...] | str) -> tuple[Spent, ...]:
    return () if isinstance(answer, str) else answer


def _no_cursor_credentials(status: int, body: Any) -> bool:
    """LiteLLM up to 1.88 answers a caller past its budget checks 401 "Cursor API key not found" on the
    probe route when no Cursor credentials are configured: past the budget checks, so within budget."""
    detail = body.get("detail") if isinstance(body, dict) else None
    return status == 401 and isinstance(detail, str) and detail.startswith("Cursor API key not found")


def _resolve(refused: tuple[Spent, ...], recorded: tuple[Spent, ...]) -> tuple[Spent, ...]:
    """The union, with a refusal that names no level ("Current cost: ...", LiteLLM <= 1.88 for a key's
    and a team member's budget) named after the chain where it tells which, else ``key``."""
    levels = [r.scope for r in recorded if r.scope in ("key", "team_member")]
    named = levels[0] if len(levels) == 1 else "key"
    return (*(Spent(named, s.source) if s.scope == UNNAMED else s for s in refused), *recorded)


def _unnamed(spent: tuple[Spent, ...]) -> bool:
    return any(s.scope == UNNAMED for s in spent)


def _with_seen(state: BudgetState, seen: tuple[Spent, ...]) -> BudgetState:
    """``state`` with the refusals seen since it was established."""
    if not seen:
        return state
    recorded = tuple(s for s in state.spent if s.source == "recorded")
    return BudgetState((*_resolve(seen, recorded), *state.spent))


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _over(spend: Any, max_budget: Any, at_limit: bool = True) -> bool:
    """Whether ``spend`` is past ``max_budget``: at it already where LiteLLM refuses at ``>=``."""
    budget, used = _number(max_budget), _number(spend)
    if budget is None or used is None:
        return False
    return used >= budget if at_limit else used > budget


def _object(answer: Any, *path: str) -> dict[str, Any]:
    for name in path:
        answer = answer.get(name) if isinstance(answer, dict) else None
    return answer if isinstance(answer, dict) else {}


def _reset(info: Mapping[str, Any]) -> str | None:
    value = info.get("budget_reset_at")
    return value if isinstance(value, str) else None


def spent_levels(records: Mapping[str, Any]) -> tuple[Spent, ...]:
    """The spent levels in the admin answers of one principal's chain.

    ``records`` holds what ``AdminLookups.budget_records`` fetched: ``key`` (``/key/info``), ``team``
    (``/team/info``), ``user`` (``/user/info``, personal keys only), ``end_user`` (``/customer/info``),
    ``org`` (``/organization/info``); a level that does not apply is missing. Each level compares as
    LiteLLM's own check does (1.110's ``auth_checks.py``): spend at ``max_budget`` is already spent for a
    key, a key window, a team member, a user and an organisation; a team and an end user must go past it.
    The database lags LiteLLM's counters by its batch-write interval; the enforced source does not."""
    found: list[Spent] = []
    key = _object(records.get("key"), "info")
    if _over(key.get("spend"), key.get("max_budget")):
        found.append(Spent("key", "recorded", _reset(key)))
    found.extend(_windows(key))
    team = _object(records.get("team"), "team_info")
    if _over(team.get("spend"), team.get("max_budget"), at_limit=False):
        found.append(Spent("team", "recorded", _reset(team)))
    member = _membership(records.get("team"), key.get("user_id"))
    budget = _object(member, "litellm_budget_table")
    if _over(member.get("spend"), budget.get("max_budget")):
        found.append(Spent("team_member", "recorded", _reset(budget)))
    user = _object(records.get("user"), "user_info")
    if _over(user.get("spend"), user.get("max_budget")):
        found.append(Spent("user", "recorded", _reset(user)))
    end_user = _object(records, "end_user")
    budget = _object(end_user, "litellm_budget_table")
    if _over(end_user.get("spend"), budget.get("max_budget"), at_limit=False):
        found.append(Spent("end_user", "recorded", _reset(budget)))
    org = _object(records, "org")
    budget = _object(org, "litellm_budget_table")
    if _over(org.get("spend"), budget.get("max_budget")):
        found.append(Spent("org", "recorded", _reset(budget) or _reset(org)))
    return tuple(found)


def _membership(team_answer: Any, user_id: Any) -> dict[str, Any]:
    if not isinstance(user_id, str):
        return {}
    members = team_answer.get("team_memberships") if isinstance(team_answer, dict) else None
    for member in members if isinstance(members, list) else ():
        if isinstance(member, dict) and member.get("user_id") == user_id:
            return member
    return {}


def _windows(key: Mapping[str, Any]) -> list[Spent]:
    """Spent key budget windows: ``budget_limits`` (``[{budget_duration, max_budget, reset_at}]``) against
    ``budget_limits_usage`` (``{duration: {current_spend}}``), which ``/key/info`` reports from 1.106 on.
    Before that LiteLLM keeps a window's spend only in its counters: the enforced source sees it."""
    limits = key.get("budget_limits")
    if isinstance(limits, str):
        try:
            limits = json.loads(limits)
        except ValueError:
            return []
    usage = key.get("budget_limits_usage")
    found = []
    for window in limits if isinstance(limits, list) else ():
        if not isinstance(window, dict):
            continue
        duration = window.get("budget_duration")
        spend = _object(usage, duration).get("current_spend") if isinstance(duration, str) else None
        if not _over(spend, window.get("max_budget")):
            continue
        # No check of ``reset_at`` here: the usage is the counter LiteLLM enforces, which keeps its spend
        # past ``reset_at`` until LiteLLM's reset job runs (1.110.2 refused a 30 s window long after it).
        reset = window.get("reset_at")
        reset = reset if isinstance(reset, str) else None
        found.append(Spent("key_window", "recorded", reset))
    return found
