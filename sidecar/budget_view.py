"""``GET /sidecar/v1/budget``: a caller's own budget, asked with its own key (LiteLLM #31824).

The answer, JSON::

    {"verdict": "within" | "spent" | "phantom" | "unknown",
     "refused": null | {"scope", "enforced", "message"},
     "levels": [{"scope", "id", "spend", "max_budget", "remaining", "resets_at", "spent",
                 "blocking"}],
     "usable_models": ["free-model", ...] | null}

- Who the caller is, and whether LiteLLM refuses it now, come from LiteLLM itself: the probe route
  (``/cursor/v1/models``, budget-checked on every version, spends nothing) asked with the caller's own
  headers. A bad or missing key gets LiteLLM's own 401 (or whatever LiteLLM answered that is neither a
  budget error nor a pass), unchanged.
- ``levels`` are read from the sidecar's admin look-ups (cached, ``levels.chain``) and cut to what
  LiteLLM shows that same caller with its own key on ``/key/info``, ``/team/info`` and ``/user/info``: its
  key and the key's budget windows, its team and its own team membership, its own user for a personal key.
  Never another key, user or team; never an end user's or an organisation's record (``/customer/info`` is
  admin-only on every LiteLLM, ``/organization/info`` needs an organisation admin) - for those the caller
  learns only what LiteLLM's refusal already told it (``refused``). LiteLLM up to 1.88 budget-checks its own
  info routes, so a spent caller cannot read them there; the sidecar shows the same levels on every version.
- ``blocking`` marks the level LiteLLM refuses the caller at now; ``verdict`` judges that refusal as every
  other refusal of this caller is judged (``BudgetBook.judge_refusal``, on its whole chain: the phantom
  grace is shared), but a verdict on a level the caller may not see is reported as ``unknown``.
- ``usable_models``: what LiteLLM serves the caller now, exactly as discovery lists it under ``free_only``
  (``policy.usable``) - every model it may access, or only the free ones while LiteLLM refuses it, or none
  where its spent level refuses free models too on this LiteLLM (``rules.RULES``; ``null`` without an
  admin credential).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from sidecar.litellm.admin import AdminLookups, LookupFailed
from sidecar.litellm.budget import PROBE_ROUTE, BudgetBook, Principal, principal_of
from sidecar.litellm.budget_errors import Reading, Refusal
from sidecar.litellm.levels import Finding, Level, chain
from sidecar.litellm.policy import asks_version, spent_models, usable
from sidecar.litellm.rules import RULES
from sidecar.logs import event
from sidecar.proxy.upstream import (
    SMALL_ANSWER,
    Answer,
    LeavingCaller,
    Upstream,
    UpstreamUnavailable,
    send_json,
)
from sidecar.types import Receive, Scope, Send

log = logging.getLogger("sidecar.budget_view")

ROUTE = b"/sidecar/v1/budget"
# Levels LiteLLM shows a caller with its own key (its /key/info, /team/info and /user/info).
_OWN_LEVELS = frozenset(rule.level for rule in RULES if rule.own)


class BudgetView:
    def __init__(self, upstream: Upstream, admin: AdminLookups | None, budget: BudgetBook) -> None:
        self._upstream = upstream
        self._admin = admin
        self._budget = budget

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            body = json.dumps({"error": {"message": "use GET", "type": "invalid_request_error"}})
            await send_json(send, 405, body.encode())
            return
        leaving = LeavingCaller(receive)
        unavailable = None
        try:
            answered = await self._answer(scope)
        except UpstreamUnavailable as exc:
            unavailable = (exc.status, exc.body())
        except asyncio.CancelledError:
            if not leaving.gone():
                raise
            return  # the caller left: its probe and look-ups were stopped
        finally:
            leaving.stop()  # before anything is sent: a server may say "disconnect" once it is
        if unavailable is not None:
            await send_json(send, *unavailable)
        else:
            await _send_answer(send, answered)

    async def _answer(self, scope: Scope) -> Answer:
        asked = await self._upstream.fetch(scope, PROBE_ROUTE.encode(), b"")
        reading = Reading.of(
            asked.status, asked.json(limit=SMALL_ANSWER) if 400 <= asked.status < 500 else None
        )
        who = principal_of(scope)
        if who is None or not (reading.refusal is not None or reading.passed):
            return asked  # LiteLLM's own answer: 401 for a bad or missing key
        report = json.dumps(await self._report(who, reading.refusal), separators=(",", ":"))
        body = report.encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        return Answer(200, headers, body)

    async def _report(self, who: Principal, refusal: Refusal | None) -> dict[str, Any]:
        everything: tuple[Level, ...] = ()
        usable: list[str] | None = None
        if self._admin is not None and who.virtual_key:
            try:
                everything = chain(await self._admin.budget_records(who.token, who.end_user))
                usable = await self._usable(who, everything, refusal)
            except LookupFailed as exc:
                event(log, logging.WARNING, "budget_view_incomplete", reason=str(exc), key=who.label)
        levels = tuple(level for level in everything if level.name in _OWN_LEVELS)
        refused = None
        verdict = Finding.WITHIN
        blocking = None
        if refusal is not None:
            # Judged on the whole chain, as every other refusal of this caller is (the phantom grace is
            # shared); what the caller may not see is then withheld: its verdict stays unknown.
            judged = self._budget.judge_refusal(who, refusal, everything)
            verdict, blocking = judged.verdict, judged.recorded
            if blocking is not None and blocking.name not in _OWN_LEVELS:
                verdict, blocking = Finding.UNKNOWN, None
            refused = refusal.shown()
        return {
            "verdict": verdict,
            "refused": refused,
            "levels": [level.shown(level == blocking) for level in levels],
            "usable_models": usable,
        }

    async def _usable(self, who: Principal, levels: tuple[Level, ...], refusal: Refusal | None) -> list[str]:
        """What LiteLLM serves the caller now, as discovery decides it (``policy.usable``): every model it
        may access, else the free ones, or none where its spent level refuses free models too - without
        the models whose own budget a refusal of this caller said is spent (its budget state's)."""
        assert self._admin is not None
        spent = (refusal.level, *(level.name for level in levels if level.spent)) if refusal else ()
        release = await self._admin.release() if asks_version(spent) else None
        catalog, access = await self._admin.access(who.token)
        without = spent_models(self._budget.cached(who), refusal)
        admits = usable(spent, release).admits(catalog.is_free, access.allows, without)
        return [name for name in catalog.names if admits(name)]


async def _send_answer(send: Send, answer: Answer) -> None:
    await send({"type": "http.response.start", "status": answer.status, "headers": answer.headers})
    await send({"type": "http.response.body", "body": answer.body})
