"""Budget refusals on passed-through calls: read once, recorded as the caller's budget state, judged, marked.

The pass-through holds back every small answer with a budget refusal's status (``upstream.Hold``) and
shows it here. A budget refusal (``budget_errors.Refusal``) is recorded at once as evidence about the
caller who got it (``BudgetBook.refused``: its next discovery answer follows it, before LiteLLM's records
show it) and judged against the caller's recorded chain; a phantom one goes back with
``x-sidecar-budget-phantom: true``, its status and body unchanged. The verdict is waited for at most
``VERDICT_WAIT`` seconds (admin look-ups, cached); a slower one is still counted and logged, and the
refusal goes on without the mark. Any other answer goes on as it came.
"""

from __future__ import annotations

from sidecar.litellm.budget import BudgetBook, principal_of
from sidecar.litellm.budget_errors import BUDGET_STATUSES, Refusal
from sidecar.litellm.policy import phantom_marks
from sidecar.proxy.upstream import Answer, Hold
from sidecar.types import Scope

VERDICT_WAIT = 2.0  # seconds a passed-through refusal waits for its verdict


class Refusals:
    """What the pass-through shows its small error answers to (``hold``)."""

    def __init__(self, budget: BudgetBook) -> None:
        self._budget = budget
        self.hold = Hold(BUDGET_STATUSES, self._marked)

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
