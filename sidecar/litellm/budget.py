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

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from sidecar.cache import Recent, SingleFlightCache
from sidecar.litellm.admin import SHED, AdminLookups, LookupFailed
from sidecar.litellm.budget_errors import UNNAMED, BudgetLevel, Reading, Refusal
from sidecar.litellm.credentials import caller, key_hash, token_label
from sidecar.litellm.levels import (
    NOT_ADMITTED,
    PHANTOM_AFTER,
    BudgetState,
    Finding,
    Level,
    Source,
    Spent,
    Verdict,
    chain,
    graced,
    judge,
    spent,
)
from sidecar.logs import event
from sidecar.metrics import Metrics
from sidecar.types import Scope

log = logging.getLogger("sidecar.litellm.budget")


class SourceFailed(Exception):
    """A source could not answer; the message says why (path and status, never a credential)."""


class Principal(NamedTuple):
    """One caller as LiteLLM budgets it: its credential's hash and the end user it names.

    A tuple, not a dataclass: it is made for every discovery request and keys the budget caches, and a
    tuple's hash and equality run in C (a dataclass's are Python functions, a few per request)."""

    token: str  # SHA-256 of the credential; LiteLLM's token when ``virtual_key``
    virtual_key: bool  # an ``sk-`` key LiteLLM's admin API can be asked about
    end_user: str | None = None

    @property
    def label(self) -> str:
        """``key_label`` of the credential, for logs: made when a line is written, not per request."""
        return token_label(self.token)


def principal_of(scope: Scope) -> Principal | None:
    """The principal a request is made for, or ``None`` when it carries no credential."""
    key, end_user = caller(scope)
    if key is None:
        return None
    return Principal(key_hash(key), key.startswith("sk-"), end_user)


WITHIN = BudgetState()


@dataclass(frozen=True, slots=True)
class Seen:
    """The last budget refusal LiteLLM sent one principal (within ``ttl``), with its verdict."""

    level: BudgetLevel  # as the refusal names it: UNNAMED when it names none
    verdict: Verdict | None = None
    model: str | None = None  # a per-model budget's model, as the refusal names it

    @property
    def named(self) -> bool:
        return self.level != UNNAMED

    def over(self, state: BudgetState = WITHIN) -> BudgetState:
        """``state`` with this refusal, seen since it was established (its verdict the newer one)."""
        verdict = self.verdict or state.verdict
        seen = Spent(state.named(self.level, verdict), Source.SEEN, model=self.model)
        return BudgetState((seen, *state.spent), verdict=verdict)


PROBE_ROUTE = "/cursor/v1/models"
NO_ADMIN = "no admin credential configured"
NOT_A_VIRTUAL_KEY = "the credential is not a LiteLLM virtual key (JWT or other auth)"
_NOT_ADMITTED = BudgetState(known=False, reason=NOT_ADMITTED)
_ADMITTED_FOR = 3600.0  # seconds a credential LiteLLM admitted is probed alongside, not after, its request
# How the sidecar is set up, or a bound it keeps (counted on its own): not a failure of the source.
_EXPECTED = frozenset({NO_ADMIN, NOT_A_VIRTUAL_KEY, SHED})
_LOG_EVERY = 60.0
_SHOWN_LIMIT = 128  # characters of a model name a refusal names, in a log line
_FORGET = 300.0  # a disagreement not seen again for this long starts over
Probe = Callable[[], Awaitable[Reading]]
T = TypeVar("T")


class BudgetBook:
    """Budget states per principal: cached, single flight, refusals seen on the way recorded at once."""

    def __init__(
        self,
        admin: AdminLookups | None,
        *,
        ttl: float,
        metrics: Metrics,
        phantom_after: float = PHANTOM_AFTER,
        max_entries: int = 10_000,
    ) -> None:
        self._admin = admin
        self._metrics = metrics
        self.ttl = ttl
        self.phantom_after = phantom_after
        self.states: SingleFlightCache[Principal, BudgetState] = SingleFlightCache(ttl, max_entries)
        # The last refusal seen, per principal: evidence about that caller alone.
        self._seen: Recent[Principal, Seen] = Recent(max_entries)
        # Credentials LiteLLM admitted lately (their tokens): probed alongside their requests.
        self._admitted: Recent[str, bool] = Recent(max_entries * 10)
        # Since when a principal's refusal at a level is not borne out by the records: (first, last seen).
        self._disagreeing: Recent[tuple[str, str | None, BudgetLevel], tuple[float, float]] = Recent(
            max_entries
        )
        self._logged: dict[tuple[Source, str], float] = {}  # (source, reason): bounded by the reasons
        self._judging: set[asyncio.Future[Verdict]] = set()  # verdicts outliving their refusal

    def cached(self, who: Principal) -> BudgetState | None:
        """The state if it is known without a round trip (a refusal seen, or a fresh cache entry)."""
        seen = self._seen.get(who)
        if seen is not None and seen.named:
            return seen.over()
        known = self.states.peek(who)
        if known is None or seen is None:
            return known
        return seen.over(known)

    async def state(self, who: Principal, probe: Probe) -> BudgetState:
        """The principal's state; ``probe`` asks LiteLLM's enforced state with the caller's headers.

        A refusal seen within ``ttl`` answers at once, unless it names no level: then the chain does."""
        seen = self._seen.get(who)
        if seen is not None and seen.named:
            return seen.over()
        known = await self.states.get(who, lambda: self._establish(who, probe))
        return known if seen is None else seen.over(known)

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

    def saw(self, who: Principal | None, refusal: Refusal, verdict: Verdict | None = None) -> Spent:
        """Record a budget refusal LiteLLM sent ``who``; returns the level it names."""
        if who is not None:
            if self.ttl > 0:
                self._seen.put(who, Seen(refusal.level, verdict, refusal.model), time.monotonic() + self.ttl)
            self.admit(who)
            self.states.forget(who)
        return Spent(refusal.level, Source.SEEN)

    async def refused(self, who: Principal | None, refusal: Refusal, route: str) -> Verdict:
        """A budget refusal LiteLLM sent a caller on ``route``: recorded, judged, counted and logged."""
        verdict = await self.verdict(who, refusal)
        self.saw(who, refusal, verdict)
        self._metrics.budget_refusals.labels(verdict.level, verdict.verdict).inc()
        fields: dict[str, Any] = {"route": route, **verdict.fields()}
        if refusal.model is not None:
            fields["model"] = refusal.model[:_SHOWN_LIMIT]
        if who is not None and who.label:
            fields["key"] = who.label
        if who is not None and who.end_user is not None:
            fields["end_user"] = who.end_user
        level = logging.WARNING if verdict.verdict == Finding.PHANTOM else logging.INFO
        event(log, level, "budget_refusal", **fields)
        return verdict

    async def refused_within(
        self, who: Principal | None, refusal: Refusal, route: str, wait: float
    ) -> Verdict | None:
        """``refused``, waited for at most ``wait`` seconds: a slower verdict is still recorded, counted
        and logged when it comes, and ``None`` is returned meanwhile."""
        judging = asyncio.ensure_future(self.refused(who, refusal, route))
        self._judging.add(judging)
        judging.add_done_callback(self._judging.discard)
        try:
            return await asyncio.wait_for(asyncio.shield(judging), wait)
        except TimeoutError:
            return None

    async def verdict(self, who: Principal | None, refusal: Refusal) -> Verdict:
        """``refusal`` judged against ``who``'s recorded chain (``levels.judge``)."""
        if who is None:
            return _unjudged(refusal, "the request carries no credential")
        return self.judge_refusal(who, refusal, await self._source(Source.RECORDED, self.levels(who)))

    def judge_refusal(self, who: Principal, refusal: Refusal, levels: tuple[Level, ...] | str) -> Verdict:
        """``levels.judge``; a phantom only once this principal's disagreement at that level has lasted
        ``phantom_after`` (``levels.graced``). ``levels`` may be the reason they could not be read: then
        the verdict is unknown."""
        if isinstance(levels, str):
            return _unjudged(refusal, levels)
        verdict = judge(refusal, levels)
        key = (who.token, who.end_user, verdict.level)
        now = time.monotonic()
        if verdict.verdict != Finding.PHANTOM:
            self._disagreeing.pop(key)
            return verdict
        first, last = self._disagreeing.get(key) or (now, now)
        if now - last > _FORGET:
            first = now
        self._disagreeing.put(key, (first, now), now + _FORGET)
        return graced(verdict, now - first, self.phantom_after)

    async def _enforced(self, probe: Probe) -> Reading:
        """LiteLLM's enforced state: the probe's answer, a refusal or past the budget checks."""
        reading = await probe()
        if reading.refusal is not None or reading.passed:
            return reading
        if reading.refuses_credential:
            raise _NotAdmitted
        raise SourceFailed(f"{PROBE_ROUTE} answered {reading.status}")

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
            reading = await self._source(Source.ENFORCED, self._enforced(probe))
        except _NotAdmitted:
            return self.not_admitted(who)  # cached for ``ttl`` like any state: the negative cache
        if not isinstance(reading, str):
            self.admit(who)
            if reading.refusal is None:
                return BudgetState()  # within budget as LiteLLM enforces it: no admin look-up
        levels = await self._source(Source.RECORDED, self.levels(who))
        recorded = BudgetState(() if isinstance(levels, str) else spent(levels))
        if isinstance(reading, str):
            if isinstance(levels, str):
                return BudgetState(known=False, reason=f"enforced: {reading}; recorded: {levels}")
            return recorded
        refusal = reading.refusal
        assert refusal is not None
        verdict = self.judge_refusal(who, refusal, levels)
        enforced = Spent(recorded.named(refusal.level, verdict), Source.ENFORCED)
        return BudgetState((enforced, *recorded.spent), verdict=verdict)

    async def _source(self, name: Source, answer: Awaitable[T]) -> T | str:
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


def _unjudged(refusal: Refusal, reason: str) -> Verdict:
    level = BudgetLevel.UNKNOWN if refusal.level == UNNAMED else refusal.level
    return Verdict(Finding.UNKNOWN, level, refusal.enforced, reason=reason)
