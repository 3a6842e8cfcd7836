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
  inference call, within the last ``ttl`` seconds: over budget now, before the database shows it. It is
  evidence about this principal only (its credential and the end user it named): nothing parsed out of a
  message's text (an end-user id, a team name) ever becomes the key of another caller's state, so no caller
  can word its own refusal to mark someone else as spent.

How they are weighed: LiteLLM's refusal says *whether* - what it enforces is what the caller meets on a
paid call - and the chain says *which level* and *when it resets*.

1. A refusal seen within ``ttl`` decides at once (over budget, at the level it names).
2. Else the probe: within budget there is within budget, with no admin look-up (the cheap, common case).
   A probe LiteLLM refuses as unauthenticated (401/403 that is not a budget error: a wrong or revoked key)
   ends the work for that caller: no admin look-up, no warning, no source failure, cached for ``ttl``
   (``NOT_ADMITTED``) - a flood of made-up keys costs LiteLLM's admin API nothing. Discovery sends the
   probe only for a credential LiteLLM has admitted before (``admitted``); a caller it has never admitted
   gets LiteLLM's answer first, and the probe only if that answer admits it.
3. Over budget there: the chain is read too, to name the level where the message names none (a key's or a
   team member's budget up to 1.88: "Current cost: ...") and for reset times, and the refusal is judged
   against it (``levels.judge``: ``spent``, ``phantom``, ``unknown``). The caller stays over budget either
   way - a phantom refusal is still what it meets on a paid call - but discovery marks it.
4. The probe fails (a LiteLLM without the route, a 5xx): the chain decides, and the failure is logged
   (``budget_source_failed``, at most once a minute per reason) and counted - a LiteLLM that moved the
   route shows there instead of silently turning the policies off. The integration suite asserts each
   source alone on every version.
5. Neither answers: the state is unknown and discovery falls back to LiteLLM's own answer.

States are cached per principal for ``ttl`` seconds (single flight), so a warm caller costs no upstream
round trip; a reset in LiteLLM shows here at most ``ttl`` seconds later.

Every budget refusal LiteLLM sends a caller (``refused``: discovery and passed-through calls) gets a
verdict, counted in ``sidecar_budget_refusals_total{scope,verdict}`` and logged as one ``budget_refusal``
line. Right after a caller crosses its budget LiteLLM's database lags its counters by its batch-write
interval, so a refusal the records do not bear out is ``unknown`` ("not written yet?") until the
disagreement has lasted ``phantom_after`` seconds; then it is ``phantom``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sidecar.cache import Recent, SingleFlightCache
from sidecar.litellm.admin import SHED, AdminLookups, LookupFailed
from sidecar.litellm.budget_errors import UNNAMED, budget_scope, is_budget_error
from sidecar.litellm.credentials import caller_key, end_user_of, key_hash, key_label
from sidecar.litellm.levels import Level, Verdict, chain, judge, stated
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
    label: str = field(default="", compare=False)  # ``key_label`` of the credential, for logs


def principal_of(scope: Scope) -> Principal | None:
    """The principal a request is made for, or ``None`` when it carries no credential."""
    key = caller_key(scope)
    if key is None:
        return None
    return Principal(key_hash(key), key.startswith("sk-"), end_user_of(scope), key_label(key))


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
    verdict: Verdict | None = None  # LiteLLM's refusal judged against the records, when it refused

    @property
    def phantom(self) -> bool:
        return self.verdict is not None and self.verdict.verdict == "phantom"

    @property
    def admitted(self) -> bool:
        """False when LiteLLM refused the credential itself: not a budget question, nothing to warn of."""
        return self.reason != NOT_ADMITTED

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
NOT_ADMITTED = "LiteLLM does not admit the credential"
_NOT_ADMITTED = BudgetState(known=False, reason=NOT_ADMITTED)
_ADMITTED_FOR = 3600.0  # seconds a credential LiteLLM admitted is probed alongside, not after, its request
# How the sidecar is set up, or a bound it keeps (counted on its own): not a failure of the source.
_EXPECTED = frozenset({NO_ADMIN, NOT_A_VIRTUAL_KEY, SHED})
_LOG_EVERY = 60.0
_FORGET = 300.0  # a disagreement not seen again for this long starts over
Probe = Callable[[], Awaitable[tuple[int, Any]]]
T = TypeVar("T")
Seen = tuple[tuple[Spent, Verdict | None], ...]  # refusals seen within ``ttl``, with their verdicts


class BudgetBook:
    """Budget states per principal: cached, single flight, refusals seen on the way recorded at once."""

    def __init__(
        self,
        admin: AdminLookups | None,
        ttl: float,
        metrics: Metrics,
        phantom_after: float = 30.0,
        max_entries: int = 10_000,
    ) -> None:
        self._admin = admin
        self._metrics = metrics
        self.ttl = ttl
        self.phantom_after = phantom_after
        self.states: SingleFlightCache[Principal, BudgetState] = SingleFlightCache(ttl, max_entries)
        # Refusals seen, per principal: evidence about that caller alone.
        self._seen: Recent[Principal, tuple[Spent, Verdict | None]] = Recent(max_entries)
        # Credentials LiteLLM admitted lately (their tokens): probed alongside their requests.
        self._admitted: Recent[str, bool] = Recent(max_entries * 10)
        # Since when a principal's refusal at a level is not borne out by the records: (first, last seen).
        self._disagreeing: Recent[tuple[str, str | None, str], tuple[float, float]] = Recent(max_entries)
        self._logged: dict[tuple[str, str], float] = {}  # (source, reason): bounded by the reasons

    def cached(self, who: Principal) -> BudgetState | None:
        """The state if it is known without a round trip (a refusal seen, or a fresh cache entry)."""
        seen = self._seen_by(who)
        if seen and not _unnamed(seen):
            return _seen_state(seen)
        known = self.states.peek(who)
        return None if known is None else _with_seen(known, seen)

    async def state(self, who: Principal, probe: Probe) -> BudgetState:
        """The principal's state; ``probe`` asks LiteLLM's enforced state with the caller's headers.

        A refusal seen within ``ttl`` answers at once, unless it names no level: then the chain does."""
        seen = self._seen_by(who)
        if seen and not _unnamed(seen):
            return _seen_state(seen)
        known = await self.states.get(who, lambda: self._establish(who, probe))
        return _with_seen(known, seen)

    def admitted(self, who: Principal) -> bool:
        """Whether LiteLLM admitted this credential lately (a probe or a request of its answered past
        authentication): its probe may then go alongside its request instead of after LiteLLM's answer."""
        return self._admitted.get(who.token) is not None

    def admit(self, who: Principal) -> None:
        """LiteLLM answered this credential past its authentication."""
        self._admitted.put(who.token, True, time.monotonic() + _ADMITTED_FOR)

    def not_admitted(self, who: Principal) -> BudgetState:
        """LiteLLM refused the credential itself: nothing more to learn, and nothing to look up."""
        self._admitted.pop(who.token)
        return _NOT_ADMITTED

    def saw(
        self, who: Principal | None, status: int, body: Any, verdict: Verdict | None = None
    ) -> Spent | None:
        """Record a budget refusal LiteLLM sent ``who``; returns the level it names, if it was one."""
        if not is_budget_error(status, body):
            return None
        spent = Spent(budget_scope(body, unnamed=UNNAMED), "seen")
        if who is not None:
            if self.ttl > 0:
                self._seen.put(who, (spent, verdict), time.monotonic() + self.ttl)
            self.admit(who)
            self.states.forget(who)
        return spent

    async def refused(self, who: Principal | None, status: int, body: Any, route: str) -> Verdict | None:
        """A budget refusal LiteLLM sent a caller on ``route``: recorded, judged, counted and logged.

        Returns the verdict, or ``None`` when the answer is not a budget refusal."""
        if not is_budget_error(status, body):
            return None
        verdict = await self.verdict(who, body)
        self.saw(who, status, body, verdict)
        self._metrics.budget_refusals.labels(verdict.scope, verdict.verdict).inc()
        fields: dict[str, Any] = {"route": route, **verdict.fields()}
        if who is not None and who.label:
            fields["key"] = who.label
        if who is not None and who.end_user is not None:
            fields["end_user"] = who.end_user
        level = logging.WARNING if verdict.verdict == "phantom" else logging.INFO
        event(log, level, "budget_refusal", **fields)
        return verdict

    async def verdict(self, who: Principal | None, body: Any) -> Verdict:
        """The budget refusal ``body`` judged against ``who``'s recorded chain (``levels.judge``)."""
        if who is None:
            return _unjudged(body, "the request carries no credential")
        return self.judge_refusal(who, body, await self._source("recorded", self.levels(who)))

    def judge_refusal(self, who: Principal, body: Any, levels: tuple[Level, ...] | str) -> Verdict:
        """``levels.judge``; a phantom only once it has lasted ``phantom_after``. ``levels`` may be the
        reason they could not be read: then the verdict is unknown."""
        if isinstance(levels, str):
            return _unjudged(body, levels)
        verdict = judge(body, levels)
        key = (who.token, who.end_user, verdict.scope)
        now = time.monotonic()
        if verdict.verdict != "phantom":
            self._disagreeing.pop(key)
            return verdict
        first, last = self._disagreeing.get(key) or (now, now)
        if now - last > _FORGET:
            first = now
        self._disagreeing.put(key, (first, now), now + _FORGET)
        if now - first < self.phantom_after:
            return Verdict(
                "unknown",
                verdict.scope,
                verdict.enforced,
                verdict.level,
                f"recorded spend below max_budget for {now - first:.0f} s so far: LiteLLM writes spend "
                f"in batches; phantom after {self.phantom_after:g} s",
            )
        return verdict

    def _seen_by(self, who: Principal) -> Seen:
        entry = self._seen.get(who)
        return () if entry is None else (entry,)

    async def enforced(self, probe: Probe) -> tuple[Spent, ...]:
        """LiteLLM's enforced state: the level its budget error on the probe route names, if any."""
        return (await self._enforced(probe))[0]

    async def _enforced(self, probe: Probe) -> tuple[tuple[Spent, ...], Any]:
        status, body = await probe()
        if is_budget_error(status, body):
            return (Spent(budget_scope(body, unnamed=UNNAMED), "enforced"),), body
        if status == 200 or past_budget_checks(status, body):
            return (), None  # past LiteLLM's budget checks
        if refuses_credential(status, body):
            raise _NotAdmitted
        raise SourceFailed(f"{PROBE_ROUTE} answered {status}")

    async def recorded(self, who: Principal) -> tuple[Spent, ...]:
        """The spent levels of the principal's budget chain in LiteLLM's database."""
        return _spent(await self.levels(who))

    async def levels(self, who: Principal) -> tuple[Level, ...]:
        """Every level with a budget in the principal's chain, as LiteLLM's database records it."""
        if self._admin is None:
            raise SourceFailed(NO_ADMIN)
        if not who.virtual_key and who.end_user is None:
            raise SourceFailed(NOT_A_VIRTUAL_KEY)
        token = who.token if who.virtual_key else None
        try:
            records = await self._admin.budget_records(token, who.end_user)
        except LookupFailed as exc:
            raise SourceFailed(str(exc)) from None
        return chain(records)

    async def _establish(self, who: Principal, probe: Probe) -> BudgetState:
        try:
            reading = await self._source("enforced", self._enforced(probe))
        except _NotAdmitted:
            return self.not_admitted(who)  # cached for ``ttl`` like any state: the negative cache
        if not isinstance(reading, str):
            self.admit(who)
        if not isinstance(reading, str) and reading[0] == ():
            return BudgetState()  # within budget as LiteLLM enforces it: no admin look-up
        levels = await self._source("recorded", self.levels(who))
        recorded = () if isinstance(levels, str) else _spent(levels)
        if isinstance(reading, str):
            if isinstance(levels, str):
                return BudgetState(known=False, reason=f"enforced: {reading}; recorded: {levels}")
            return BudgetState(recorded)
        enforced, refusal = reading
        verdict = self.judge_refusal(who, refusal, levels)
        return BudgetState(_resolve(enforced, recorded, verdict), verdict=verdict)

    async def _source(self, name: str, answer: Awaitable[T]) -> T | str:
        """A source's answer, or why it could not answer (counted, logged at most once a minute)."""
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


class _NotAdmitted(Exception):
    """The probe's answer refuses the credential itself."""


# What LiteLLM answers a credential it does not admit (a wrong, expired or blocked key), when the body is not
# a budget error.
NOT_ADMITTED_STATUSES = frozenset({401, 403})


def _unjudged(body: Any, reason: str) -> Verdict:
    scope = budget_scope(body, unnamed=UNNAMED)
    return Verdict("unknown", "unknown" if scope == UNNAMED else scope, stated(body)[0], reason=reason)


def _seen_state(seen: Seen) -> BudgetState:
    verdicts = [v for _, v in seen if v is not None]
    return BudgetState(tuple(s for s, _ in seen), verdict=verdicts[0] if verdicts else None)


def refuses_credential(status: int, body: Any) -> bool:
    """LiteLLM's answer refuses the credential itself (a wrong, expired or blocked key): 401/403 that is
    neither a budget error nor past the budget checks."""
    return (
        status in NOT_ADMITTED_STATUSES
        and not is_budget_error(status, body)
        and not past_budget_checks(status, body)
    )


def past_budget_checks(status: int, body: Any) -> bool:
    """LiteLLM up to 1.88 answers a caller past its budget checks 401 "Cursor API key not found" on the
    probe route when no Cursor credentials are configured: past the budget checks, so within budget."""
    detail = body.get("detail") if isinstance(body, dict) else None
    return status == 401 and isinstance(detail, str) and detail.startswith("Cursor API key not found")


def _resolve(
    refused: tuple[Spent, ...], recorded: tuple[Spent, ...], verdict: Verdict | None = None
) -> tuple[Spent, ...]:
    """The union, with a refusal that names no level ("Current cost: ...", LiteLLM <= 1.88 for a key's
    and a team member's budget) named after the chain where it tells which - a spent level, else the one
    the verdict found it meant - else ``key``."""
    levels = [r.scope for r in recorded if r.scope in ("key", "team_member")]
    if len(levels) == 1:
        named = levels[0]
    elif verdict is not None and verdict.scope in ("key", "team_member"):
        named = verdict.scope
    else:
        named = "key"
    return (*(Spent(named, s.source) if s.scope == UNNAMED else s for s in refused), *recorded)


def _unnamed(seen: Seen) -> bool:
    return any(spent.scope == UNNAMED for spent, _ in seen)


def _with_seen(state: BudgetState, seen: Seen) -> BudgetState:
    """``state`` with the refusals seen since it was established (their verdicts the newer ones)."""
    if not seen:
        return state
    recorded = tuple(s for s in state.spent if s.source == "recorded")
    verdict = next((v for _, v in seen if v is not None), state.verdict)
    refused = _resolve(tuple(spent for spent, _ in seen), recorded, verdict)
    return BudgetState((*refused, *state.spent), verdict=verdict)


def spent_levels(records: Mapping[str, Any]) -> tuple[Spent, ...]:
    """The spent levels in the admin answers of one principal's chain (``levels.chain``)."""
    return _spent(chain(records))


def _spent(levels: tuple[Level, ...]) -> tuple[Spent, ...]:
    return tuple(Spent(level.scope, "recorded", level.resets_at) for level in levels if level.spent)
