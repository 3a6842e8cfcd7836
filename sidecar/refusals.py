"""Budget refusals on passed-through calls: read once, recorded as the caller's budget state, judged, marked.

The pass-through holds back every small answer with a budget refusal's status (``upstream.Hold``) and
shows it here. A budget refusal (``budget_errors.Refusal``) is recorded at once as evidence about the
caller who got it (``BudgetBook.refused``: its next discovery answer follows it, before LiteLLM's records
show it) and judged against the caller's recorded chain; a phantom one goes back with
``x-sidecar-budget-phantom: true``, its status and body unchanged. The verdict is waited for at most
``VERDICT_WAIT`` seconds (admin look-ups, cached); a slower one is still counted and logged, and the
refusal goes on without the mark. Any other answer goes on as it came.

A WebSocket handshake is held the same way (``handshake_hold``), and one more case is looked into: LiteLLM's
WebSocket auth refuses a spent key on a paid realtime model with ``403`` and an empty body, the very answer
it gives an unknown key. When the caller's budget state says spent - the state known already, or, for a
credential LiteLLM admitted lately (``BudgetBook.admitted``: its discovery, a handshake LiteLLM upgraded, or
a budget refusal of its), one
established as for discovery: LiteLLM's probe route with the caller's own headers, then its records; never
for a stranger, whose 403 may be a wrong key - that refusal counts as a
budget refusal at the spent level - recorded, judged, counted and logged as one - and goes back with
``x-sidecar-budget-exceeded: true`` and ``x-sidecar-budget-scope`` (and the phantom mark), its status and
body unchanged. A caller within budget, or one whose state is not known within ``VERDICT_WAIT``, gets it as
it came.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from sidecar.litellm.budget import BudgetBook, Probe, principal_of
from sidecar.litellm.budget_errors import BUDGET_STATUSES, Refusal
from sidecar.litellm.policy import EXCEEDED, LEVEL, phantom_marks
from sidecar.proxy.upstream import Answer, Hold
from sidecar.types import Scope

VERDICT_WAIT = 2.0  # seconds a passed-through refusal waits for its verdict
HANDSHAKE_REFUSED = 403  # LiteLLM's WebSocket auth's refusal, budget or credential alike (empty body)


class Refusals:
    """What the pass-through shows its small error answers to (``hold``)."""

    def __init__(self, budget: BudgetBook, probe: Callable[[Scope], Probe] | None = None) -> None:
        self._budget = budget
        self._probe = probe  # LiteLLM's probe route with a caller's headers (``Discovery.probe``)
        self.hold = Hold(BUDGET_STATUSES, self._marked)
        self.handshake_hold = Hold(BUDGET_STATUSES, self._handshake_marked)

    async def judged(self, scope: Scope, answer: Answer) -> tuple[Refusal | None, Answer]:
        """The budget refusal ``answer`` is, if it is one, and the answer to send for it."""
        refusal = Refusal.read(answer.status, answer.body)
        if refusal is None:
            return None, answer
        route = scope["raw_path"].decode("latin-1")
        verdict = await self._budget.refused_within(principal_of(scope), refusal, route, VERDICT_WAIT)
        return refusal, Answer(answer.status, [*answer.headers, *phantom_marks(verdict)], answer.body)

    async def _marked(self, scope: Scope, answer: Answer) -> Answer:
        return (await self.judged(scope, answer))[1]

    def handshake_accepted(self, scope: Scope) -> None:
        """LiteLLM upgraded this handshake: it authenticated the caller's credential, which is then known
        (``BudgetBook.admit``): a realtime-only client's later refused handshake is judged too."""
        who = principal_of(scope)
        if who is not None:
            self._budget.admit(who)

    async def _handshake_marked(self, scope: Scope, answer: Answer) -> Answer:
        refusal, shown = await self.judged(scope, answer)
        who = principal_of(scope)
        if refusal is not None or answer.status != HANDSHAKE_REFUSED or answer.body.strip():
            return shown
        if who is None or self._probe is None:
            return answer
        state = self._budget.cached(who)
        if state is None:
            if not self._budget.admitted(who):
                # A stranger: its empty 403 is as likely a wrong key as a spent one, and asking LiteLLM
                # would cost it a second authentication per refused handshake (a key lookup per random
                # key): never for a credential LiteLLM has not admitted lately, as in discovery.
                return answer
            try:
                state = await asyncio.wait_for(
                    asyncio.shield(self._budget.state(who, self._probe(scope))), VERDICT_WAIT
                )
            except TimeoutError:
                return answer
        if not state.over:
            return answer
        level = state.level
        route = scope["raw_path"].decode("latin-1")
        verdict = await self._budget.refused_within(
            who, Refusal(answer.status, level, None), route, VERDICT_WAIT
        )
        marks = [(EXCEEDED, b"true"), (LEVEL, level.encode()), *phantom_marks(verdict)]
        return Answer(answer.status, [*answer.headers, *marks], answer.body)
