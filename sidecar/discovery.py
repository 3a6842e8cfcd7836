"""Model discovery that means the same on every LiteLLM, whoever's budget is spent.

1. The caller's request goes to LiteLLM with the caller's own headers (never its framing: the request
   the sidecar builds has no body). Unless it is already known, the caller's budget state is established
   (``litellm/budget.py``): alongside the request for a credential LiteLLM admitted lately, after
   LiteLLM's answer for one it has not (so a made-up key costs LiteLLM exactly the one request it would
   cost without the sidecar, and nothing at all when LiteLLM refuses it). A caller within budget gets
   LiteLLM's answer unchanged: status, headers, body.
2. For a caller over budget the policy decides, whether LiteLLM refused the call (up to 1.108 it refuses
   some routes to some levels) or answered it (1.109 and later answer them all):
   - ``blocked``: LiteLLM's answer as it is;
   - ``all``: everything the caller may access - LiteLLM's answer where it gave one, else rescued
     (``access.py``, cut from the admin's view of the same route by ``shapes.py``);
   - ``free_only``: only the models LiteLLM serves the caller now (``policy.usable``): the zero-cost ones
     it may access (``catalog.py``), or none where its spent level refuses free models too on this LiteLLM
     (``rules.py``) - LiteLLM's own answer with the other entries removed, in its exact shape, or rescued
     where it refused (``/v2/model/info``, whose pages and counts LiteLLM computes over every model, is
     always rendered from the admin's view).
   Such answers carry ``x-sidecar-budget-exceeded: true``, ``x-sidecar-policy``,
   ``x-sidecar-budget-scope`` (the spent level, ``rules.BudgetLevel``) and ``x-sidecar-budget-usable``
   (``free``, ``none`` or ``others``). Where LiteLLM's refusal
   is a phantom (its records show that level within budget, ``litellm/levels.py``) the answer follows it
   all the same - paid models fail for that caller right now - and carries ``x-sidecar-budget-phantom:
   true``.
3. If the caller's budget state or model scope cannot be established - no virtual key where one is
   needed (JWT, OAuth), a failed look-up, an unknown special model name - LiteLLM's answer goes back
   unchanged and the reason is logged.

``/v1/models/{id}`` is answered from the caller's own ``/v1/models`` (LiteLLM refuses the route to
ordinary keys): the entry if listed, else an OpenAI-style 404 ``model_not_found``.

What each caller gets is decided in one place, with no I/O: ``litellm/policy.py``. This module gathers
what it decides on, carries its outcome out, and counts and logs each outcome once. Budget refusals on
passed-through calls are judged in ``refusals.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from functools import partial
from typing import Any
from urllib.parse import parse_qsl

from sidecar.cache import SingleFlightCache
from sidecar.litellm import shapes
from sidecar.litellm.access import AccessUnknown
from sidecar.litellm.admin import AdminLookups, LookupFailed, LookupShed, View
from sidecar.litellm.budget import (
    NO_ADMIN,
    NOT_A_VIRTUAL_KEY,
    BudgetBook,
    Principal,
    Probe,
    SourceFailed,
    principal_of,
)
from sidecar.litellm.budget_errors import BudgetLevel, Reading
from sidecar.litellm.credentials import caller_key, key_label
from sidecar.litellm.levels import BudgetState
from sidecar.litellm.policy import Action, Marks, Outcome, Policy, Usable, asks_version, decide, spent_levels
from sidecar.litellm.rules import Release
from sidecar.logs import event
from sidecar.metrics import Metrics
from sidecar.proxy.forwarding import reply_headers
from sidecar.proxy.routes import DiscoveryRoute, RouteKind
from sidecar.proxy.upstream import SMALL_ANSWER, Answer, LeavingCaller, Upstream, UpstreamUnavailable
from sidecar.types import RawHeaders, Receive, Scope, Send

log = logging.getLogger("sidecar.discovery")

_LIST_PATH = b"/v1/models"
_PROBE_PATH = b"/cursor/v1/models"  # budget-checked on every LiteLLM from 1.83 to 1.110, spends nothing


class UnknownShape(Exception):
    """LiteLLM's answer has a shape the sidecar does not know: it cannot be cut."""


_FAIL_REASONS = {
    AccessUnknown: "scope_unknown",
    LookupFailed: "lookup_failed",
    LookupShed: "lookup_shed",
    shapes.BadQuery: "bad_query",
    UnknownShape: "unknown_shape",
}
# The field that names the model in each entry of LiteLLM's own answer, per route it is filtered on.
_NAMED_BY = {RouteKind.MODEL_INFO: "model_name", RouteKind.MODEL_GROUP_INFO: "model_group"}


class Discovery:
    def __init__(
        self,
        upstream: Upstream,
        admin: AdminLookups | None,
        *,
        budget: BudgetBook,
        policy: Policy,
        retrieve_from_list: bool,
        metrics: Metrics,
        render_ttl: float = 0.0,
    ) -> None:
        self._upstream = upstream
        self._metrics = metrics
        # Rendered answers repeat (clients poll /v1/models): keep the serialized bytes per key and request.
        self.rendered: SingleFlightCache[tuple[object, ...], tuple[int, bytes]] = SingleFlightCache(
            render_ttl
        )
        self._admin = admin
        self._budget = budget
        self._policy = policy
        self._asks_budget = policy.asks_budget
        self._retrieve_from_list = retrieve_from_list

    async def handle(self, route: DiscoveryRoute, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one discovery request. A caller that leaves before its answer is ready stops the work
        done for it (its upstream requests are closed within ``CallerWatch``'s grace), as on the
        pass-through; look-ups shared with other callers go on for them."""
        leaving = LeavingCaller(receive)
        try:
            answer: Answer | None = await self._answer(route, scope)
        except UpstreamUnavailable as exc:
            answer = _json_answer(exc.status, exc.body(), [])
        except asyncio.CancelledError:
            if not leaving.gone():
                raise
            answer = None
        finally:
            leaving.stop()
        if answer is None:
            self._metrics.abandoned.inc()
            return
        self._metrics.request("discovery", answer.status)
        await send({"type": "http.response.start", "status": answer.status, "headers": answer.headers})
        body = b"" if scope["method"] == "HEAD" else answer.body
        await send({"type": "http.response.body", "body": body})

    async def _answer(self, route: DiscoveryRoute, scope: Scope) -> Answer:
        """Gather what the policy decides on, ask it, carry its outcome out."""
        from_list = route.kind is RouteKind.MODEL and self._retrieve_from_list
        path, query = (_LIST_PATH, b"") if from_list else (scope["raw_path"], scope["query_string"])
        who = principal_of(scope)
        # The caller's budget state: never asked under ``blocked``, nor for a request without a credential.
        asking = who if self._asks_budget else None
        state = self._budget.cached(asking) if asking is not None else None
        pending = None
        alongside = route.kind is not RouteKind.CURSOR_MODELS and state is None
        if asking is not None and alongside and self._budget.admitted(asking):
            # A credential LiteLLM admitted lately: its probe goes alongside its request.
            pending = asyncio.ensure_future(self._budget.state(asking, self.probe(scope)))
        try:
            asked = await self._upstream.fetch(scope, path, query)
        except BaseException:  # LiteLLM unreachable, or the caller left
            if pending is not None:
                pending.cancel()
            raise
        reading = _reading(asked)
        verdict = None
        if reading.refusal is not None:
            verdict = await self._budget.refused(who, reading.refusal, route.kind.value)
        if asking is not None and state is None:
            state = await self._state(asking, scope, route, reading, pending)
        outcome = decide(
            self._policy,
            cuttable=route.kind is not RouteKind.MODEL_INFO_V2,
            status=asked.status,
            refusal=reading.refusal,
            verdict=verdict,
            state=state,
            release=await self._release(state, reading) if _spent(state, reading) else None,
        )
        if outcome.action is Action.PASS and not outcome.unknown:  # most answers: nothing to carry out
            return _listed(asked, route, from_list)
        outcome, answer = await self._carried_out(outcome, route, scope, who, asked, from_list)
        self._report(outcome, route, scope, state, answer.status)
        return answer

    async def _state(
        self,
        who: Principal,
        scope: Scope,
        route: DiscoveryRoute,
        reading: Reading,
        pending: asyncio.Future[BudgetState] | None,
    ) -> BudgetState:
        if pending is not None:
            return await pending
        if route.kind is RouteKind.CURSOR_MODELS:  # the caller's own answer is the probe
            return await self._budget.state(who, _as_probe(reading))
        if reading.refuses_credential:  # a credential LiteLLM refuses: nothing to learn
            return self._budget.not_admitted(who)
        # First seen, and admitted: the probe after LiteLLM's answer, never for a stranger.
        return await self._budget.state(who, self.probe(scope))

    async def _release(self, state: BudgetState | None, reading: Reading) -> Release | None:
        """LiteLLM's version, looked up (cached) only where what a spent caller may use depends on it."""
        if self._admin is None or not self._asks_budget:
            return None
        if not asks_version(spent_levels(state, reading.refusal)):
            return None
        return await self._admin.release()

    def probe(self, scope: Scope) -> Probe:
        """LiteLLM's probe route asked with the caller's own headers: its enforced budget state."""

        async def probe() -> Reading:
            try:
                answer = await self._upstream.fetch(scope, _PROBE_PATH, b"")
            except UpstreamUnavailable as exc:
                raise SourceFailed(f"{_PROBE_PATH.decode()}: {exc.kind}") from None
            return _reading(answer)

        return probe

    async def _carried_out(
        self,
        outcome: Outcome,
        route: DiscoveryRoute,
        scope: Scope,
        who: Principal | None,
        asked: Answer,
        from_list: bool,
    ) -> tuple[Outcome, Answer]:
        """The answer for ``outcome``; when it cannot be carried out, LiteLLM's (``Outcome.failed``)."""
        try:
            if outcome.rendered:
                status, payload = await self._rendering(route, scope, who, outcome)
                return outcome, _json_answer(status, payload, reply_headers(asked.headers, outcome.marks))
            if outcome.action is Action.FILTER:
                return outcome, await self._cut(route, asked, from_list, outcome)
        except (AccessUnknown, LookupFailed, shapes.BadQuery, UnknownShape) as exc:
            outcome = outcome.failed(str(exc), _FAIL_REASONS[type(exc)])
        return outcome, _marked(_listed(asked, route, from_list), outcome.marks)

    async def _cut(self, route: DiscoveryRoute, asked: Answer, from_list: bool, outcome: Outcome) -> Answer:
        """LiteLLM's own answer with only the models LiteLLM serves the caller now left (the free ones, or
        none), in its exact shape."""
        catalog = await self._lookups().catalog()
        body = asked.json()
        if not _has_shape(route, body, from_list):
            raise UnknownShape("LiteLLM's answer has an unknown shape")
        now = outcome.usable.admits(catalog.is_free, _any, outcome.without)
        status, payload = _filtered(route, body, lambda name: catalog.is_free(name) and now(name), from_list)
        return _json_answer(status, payload, reply_headers(asked.headers, outcome.marks))

    def _report(
        self, outcome: Outcome, route: DiscoveryRoute, scope: Scope, state: BudgetState | None, status: int
    ) -> None:
        """The one metric and the one log line of an outcome (none for a plain pass)."""
        action, policy, level = outcome.action, outcome.policy, outcome.level or BudgetLevel.UNKNOWN
        if action is Action.PASS:
            if outcome.unknown:
                self._metrics.budget_unknown.inc()
                event(log, logging.WARNING, "budget_unknown", reason=outcome.unknown, **_caller(scope, route))
            return
        fields: dict[str, Any] = {**_caller(scope, route), "policy": policy, "scope": level}
        if state is not None and state.over:
            fields["sources"] = _sources(state)
        if outcome.verdict is not None:
            fields["verdict"] = outcome.verdict.verdict
        if action is Action.FAIL:
            self._metrics.fail_closed.labels(outcome.cause).inc()
            event(log, logging.WARNING, "fail_closed", reason=outcome.reason, **fields)
        elif action is Action.BLOCK:
            self._metrics.blocked.inc()
            event(log, logging.INFO, "rescue_blocked", **fields)
        elif action is Action.RESCUE:
            self._metrics.rescues.labels(policy, level).inc()
            event(log, logging.INFO, "rescue", status=status, **fields)
        else:
            done = "marked" if action is Action.MARK else "filtered"
            self._metrics.budget_marked.labels(policy, level, done).inc()
            if outcome.rendered:
                fields["status"] = status
            event(log, logging.INFO, "over_budget", action=done, **fields)

    def _lookups(self) -> AdminLookups:
        if self._admin is None:
            raise LookupFailed(NO_ADMIN)
        return self._admin

    async def _rendering(
        self, route: DiscoveryRoute, scope: Scope, who: Principal | None, outcome: Outcome
    ) -> tuple[int, bytes]:
        """The answer rendered from the admin's view for this caller (cached per key and request)."""
        self._lookups()
        if who is None:
            raise AccessUnknown("the request carries no credential")
        if not who.virtual_key:
            raise AccessUnknown(NOT_A_VIRTUAL_KEY)
        token = who.token
        anthropic = any(name == b"anthropic-version" for name, _ in scope["headers"])
        usable, without = outcome.usable, outcome.without
        request = (token, route.kind, route.model_id, scope["query_string"], anthropic, usable, without)
        rendering = partial(self._rendered, route, scope, token, anthropic, usable, without)
        return await self.rendered.get(request, rendering)

    async def _rendered(
        self,
        route: DiscoveryRoute,
        scope: Scope,
        token: str,
        anthropic: bool,
        usable: Usable,
        without: frozenset[str],
    ) -> tuple[int, bytes]:
        visible = await self._visible(token, usable, without)
        status, payload = await self._render(route, scope, anthropic, visible)
        return status, json.dumps(payload, separators=(",", ":")).encode()

    async def _visible(self, token: str, usable: Usable, without: frozenset[str]) -> Callable[[str], bool]:
        assert self._admin is not None
        catalog, access = await self._admin.access(token)
        return self._policy.visible(catalog.is_free, access.allows, usable, without)

    async def _render(
        self, route: DiscoveryRoute, scope: Scope, anthropic: bool, visible: Callable[[str], bool]
    ) -> tuple[int, Any]:
        assert self._admin is not None
        query = dict(parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True))
        kind = route.kind
        if kind is RouteKind.MODELS or kind is RouteKind.CURSOR_MODELS:
            wildcards = query.get("return_wildcard_routes", "").lower() == "true"
            return 200, shapes.models_list(await self._admin.view(View.models(anthropic, wildcards)), visible)
        if kind is RouteKind.MODEL:
            listed = shapes.models_list(await self._admin.view(View.models(anthropic, False)), visible)
            entry = shapes.find_model(listed, route.model_id or "")
            return (200, entry) if entry is not None else (404, _not_found(route.model_id or ""))
        if kind is RouteKind.MODEL_INFO:
            return 200, shapes.model_info((await self._admin.catalog()).deployments, visible, query)
        if kind is RouteKind.MODEL_INFO_V2:
            return 200, shapes.model_info_page(await self._admin.view(View.MODEL_INFO_V2), visible, query)
        return 200, shapes.model_group_info(await self._admin.view(View.MODEL_GROUP_INFO), visible, query)


_ANSWERED = Reading.of(200, None)


def _any(name: str) -> bool:
    return True


def _reading(answer: Answer) -> Reading:
    """LiteLLM's answer read once: the body of a (small) 4xx parsed, a refusal told apart."""
    if answer.status == 200:
        return _ANSWERED  # the same for every 200: no refusal, past the budget checks
    body = answer.json(limit=SMALL_ANSWER) if 400 <= answer.status < 500 else None
    return Reading.of(answer.status, body)


def _spent(state: BudgetState | None, reading: Reading) -> bool:
    """Whether the caller is spent at some level, as far as is known (most are not: nothing to look up)."""
    return reading.refusal is not None or (state is not None and bool(state.spent))


def _as_probe(reading: Reading) -> Probe:
    async def probe() -> Reading:
        return reading

    return probe


def _has_shape(route: DiscoveryRoute, body: Any, from_list: bool) -> bool:
    if not isinstance(body, dict):
        return False
    if route.kind is RouteKind.MODEL and not from_list:
        return isinstance(body.get("id"), str)
    return isinstance(body.get("data"), list)


def _filtered(
    route: DiscoveryRoute, body: dict[str, Any], is_free: Callable[[str], bool], from_list: bool
) -> tuple[int, Any]:
    """LiteLLM's own answer with only the free models left, in its exact shape."""
    if route.kind is RouteKind.MODEL:
        model_id = route.model_id or ""
        entry = shapes.find_model(shapes.models_list(body, is_free), model_id) if from_list else body
        if entry is None or not is_free(str(entry.get("id", ""))):
            return 404, _not_found(model_id)
        return 200, entry
    field = _NAMED_BY.get(route.kind)
    return 200, shapes.kept(body, field, is_free) if field else shapes.models_list(body, is_free)


def _listed(asked: Answer, route: DiscoveryRoute, from_list: bool) -> Answer:
    """LiteLLM's answer as the caller gets it: for ``/v1/models/{id}`` from the list, the one entry."""
    if from_list and asked.status == 200:
        listed = asked.json()
        if isinstance(listed, dict) and isinstance(listed.get("data"), list):
            return _single_model(asked, listed, route.model_id or "")
    return asked


def _marked(answer: Answer, marks: Marks) -> Answer:
    return Answer(answer.status, [*answer.headers, *marks], answer.body) if marks else answer


def _sources(state: BudgetState) -> str:
    return ",".join(sorted({s.source for s in state.spent}))


def _caller(scope: Scope, route: DiscoveryRoute) -> dict[str, Any]:
    fields: dict[str, Any] = {"route": route.kind.value}
    key = caller_key(scope)
    if key is not None:
        fields["key"] = key_label(key)
    return fields


def _not_found(model_id: str) -> dict[str, Any]:
    return {
        "error": {
            "message": f"The model '{model_id}' does not exist or you do not have access to it.",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    }


def _json_answer(status: int, payload: Any, headers: RawHeaders) -> Answer:
    body = payload if isinstance(payload, bytes) else json.dumps(payload, separators=(",", ":")).encode()
    return Answer(
        status,
        [*headers, (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        body,
    )


def _single_model(listed_answer: Answer, listed: dict[str, Any], model_id: str) -> Answer:
    """The caller's own list answered: its entry for ``model_id``, or the OpenAI 404."""
    entry = shapes.find_model(listed, model_id)
    headers = reply_headers(listed_answer.headers, [])
    if entry is None:
        return _json_answer(404, _not_found(model_id), headers)
    return _json_answer(200, entry, headers)
