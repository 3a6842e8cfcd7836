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
   - ``free_only``: only the zero-cost models the caller may access (``catalog.py``) - LiteLLM's own answer
     with the paid entries removed, in its exact shape, or rescued where it refused (``/v2/model/info``,
     whose pages and counts LiteLLM computes over every model, is always rendered from the admin's view).
   Such answers carry ``x-sidecar-budget-exceeded: true``, ``x-sidecar-policy`` and
   ``x-sidecar-budget-scope`` (``key``, ``key_window``, ``team``, ``team_member``, ``user``, ``end_user``,
   ``org`` or ``unknown``). Where LiteLLM's refusal is a phantom (its records show that level within
   budget, ``litellm/levels.py``) the answer follows it all the same - paid models fail for that caller
   right now - and carries ``x-sidecar-budget-phantom: true``.
3. If the caller's budget state or scope cannot be established - no virtual key where one is needed (JWT,
   OAuth), a failed look-up, an unknown special model name - LiteLLM's answer goes back unchanged and the
   reason is logged.

``/v1/models/{id}`` is answered from the caller's own ``/v1/models`` (LiteLLM refuses the route to
ordinary keys): the entry if listed, else an OpenAI-style 404 ``model_not_found``.

A budget refusal on a passed-through call (``notice``) is recorded as the caller's budget state at once,
and judged: a phantom one goes back with ``x-sidecar-budget-phantom: true``, its status and body unchanged.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from sidecar.cache import SingleFlightCache
from sidecar.litellm import shapes
from sidecar.litellm.access import ScopeUnknown
from sidecar.litellm.admin import AdminLookups, LookupFailed, LookupShed, View
from sidecar.litellm.budget import (
    NO_ADMIN,
    NOT_A_VIRTUAL_KEY,
    BudgetBook,
    BudgetState,
    Principal,
    Probe,
    SourceFailed,
    principal_of,
    refuses_credential,
)
from sidecar.litellm.budget_errors import BUDGET_STATUSES, UNNAMED, budget_scope, is_budget_error
from sidecar.litellm.credentials import caller_key, key_label
from sidecar.litellm.levels import Verdict
from sidecar.logs import event
from sidecar.metrics import Metrics
from sidecar.proxy.forwarding import reply_headers
from sidecar.proxy.routes import DiscoveryRoute, RouteKind
from sidecar.proxy.upstream import Answer, Upstream, UpstreamUnavailable, unless_caller_leaves
from sidecar.settings import Policy
from sidecar.types import RawHeaders, Receive, Scope, Send

log = logging.getLogger("sidecar.discovery")

_LIST_PATH = b"/v1/models"
_PROBE_PATH = b"/cursor/v1/models"  # budget-checked on every LiteLLM from 1.83 to 1.110, spends nothing
_ERROR_LIMIT = 64 * 1024
# How long a passed-through refusal waits for its verdict (admin look-ups, cached); a slower verdict is
# still counted and logged, the refusal goes on without the phantom mark.
_VERDICT_WAIT = 2.0
PHANTOM = (b"x-sidecar-budget-phantom", b"true")
_FAIL_REASONS = {
    ScopeUnknown: "scope_unknown",
    LookupFailed: "lookup_failed",
    LookupShed: "lookup_shed",
    shapes.BadQuery: "bad_query",
}
# The field that names the model in each entry of LiteLLM's own answer, per route it is filtered on.
_NAMED_BY = {RouteKind.MODEL_INFO: "model_name", RouteKind.MODEL_GROUP_INFO: "model_group"}


class Discovery:
    def __init__(
        self,
        upstream: Upstream,
        admin: AdminLookups | None,
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
        self._retrieve_from_list = retrieve_from_list
        self._judging: set[asyncio.Future[Verdict | None]] = set()  # verdicts outliving their refusal

    async def handle(self, route: DiscoveryRoute, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one discovery request. A caller that leaves before its answer is ready stops the work
        done for it (its upstream requests are closed within ``CallerWatch``'s grace), as on the
        pass-through; look-ups shared with other callers go on for them."""
        try:
            answer = await unless_caller_leaves(receive, self._answer(route, scope))
        except UpstreamUnavailable as exc:
            answer = _json_answer(exc.status, exc.body(), [])
        if answer is None:
            self._metrics.abandoned.inc()
            return
        self._metrics.request("discovery", answer.status)
        await send({"type": "http.response.start", "status": answer.status, "headers": answer.headers})
        body = b"" if scope["method"] == "HEAD" else answer.body
        await send({"type": "http.response.body", "body": body})

    async def notice(self, scope: Scope, status: int, body: bytes) -> RawHeaders:
        """A small error answer LiteLLM sent on a passed-through call: a budget refusal is evidence, and
        judged; returns the phantom mark for a phantom one."""
        try:
            parsed = json.loads(body)
        except ValueError:
            return []
        if not is_budget_error(status, parsed):
            return []
        route = scope["raw_path"].decode("latin-1")
        judging = asyncio.ensure_future(self._budget.refused(principal_of(scope), status, parsed, route))
        self._judging.add(judging)
        judging.add_done_callback(self._judging.discard)
        try:
            verdict = await asyncio.wait_for(asyncio.shield(judging), _VERDICT_WAIT)
        except TimeoutError:
            return []
        return [PHANTOM] if _phantom(verdict) else []

    async def _answer(self, route: DiscoveryRoute, scope: Scope) -> Answer:
        from_list = route.kind is RouteKind.MODEL and self._retrieve_from_list
        path, query = (_LIST_PATH, b"") if from_list else (scope["raw_path"], scope["query_string"])
        who = principal_of(scope)
        if self._policy == "blocked" or who is None:
            asked = await self._upstream.fetch(scope, path, query)
            refusal = _refusal(asked)
            if refusal is not None:
                verdict = await self._budget.refused(who, asked.status, refusal, route.kind.value)
                spent = budget_scope(refusal)
                return await self._rescue(route, scope, who, asked, spent, phantom=_phantom(verdict))
            return _listed(asked, route, from_list)
        state = self._budget.cached(who)
        pending = None
        if state is None and route.kind is not RouteKind.CURSOR_MODELS and self._budget.admitted(who):
            # A credential LiteLLM admitted lately: its probe goes alongside its request.
            pending = asyncio.ensure_future(self._budget.state(who, self._probe(scope)))
        try:
            asked = await self._upstream.fetch(scope, path, query)
        except BaseException:  # LiteLLM unreachable, or the caller left
            if pending is not None:
                pending.cancel()
            raise
        refusal = _refusal(asked)
        verdict = None
        if refusal is not None:
            verdict = await self._budget.refused(who, asked.status, refusal, route.kind.value)
        if state is None:
            if pending is not None:
                state = await pending
            elif route.kind is RouteKind.CURSOR_MODELS:  # the caller's own answer is the probe
                state = await self._budget.state(who, _as_probe(asked))
            elif refuses_credential(*_probe_reading(asked)):
                state = self._budget.not_admitted(who)  # a credential LiteLLM refuses: nothing to learn
            else:  # first seen, and admitted: the probe after LiteLLM's answer, never for a stranger
                state = await self._budget.state(who, self._probe(scope))
        if refusal is not None:
            spent = budget_scope(refusal, unnamed=UNNAMED)
            if spent == UNNAMED:  # LiteLLM <= 1.88 for a key's and a team member's budget
                named = verdict.scope if verdict is not None else "unknown"
                spent = named if named != "unknown" else state.scope if state.over else "key"
            return await self._rescue(route, scope, who, asked, spent, phantom=_phantom(verdict))
        if not state.known and state.admitted:
            self._metrics.budget_unknown.inc()
            event(log, logging.WARNING, "budget_unknown", reason=state.reason, **_caller(scope, route))
        if not state.over or asked.status != 200:
            return _listed(asked, route, from_list)
        return await self._over_budget(route, scope, who, asked, state, from_list)

    def _probe(self, scope: Scope) -> Probe:
        async def probe() -> tuple[int, Any]:
            try:
                answer = await self._upstream.fetch(scope, _PROBE_PATH, b"")
            except UpstreamUnavailable as exc:
                raise SourceFailed(f"{_PROBE_PATH.decode()}: {exc.kind}") from None
            return _probe_reading(answer)

        return probe

    async def _over_budget(
        self,
        route: DiscoveryRoute,
        scope: Scope,
        who: Principal,
        asked: Answer,
        state: BudgetState,
        from_list: bool,
    ) -> Answer:
        """LiteLLM answered a caller over budget: marked (``all``) or cut to the free models."""
        spent = state.scope
        marks = _marks(self._policy, spent, state.phantom)
        fields = {**_caller(scope, route), "policy": self._policy, "scope": spent, "sources": _sources(state)}
        if state.verdict is not None:
            fields["verdict"] = state.verdict.verdict
        if self._policy == "all":
            self._metrics.budget_marked.labels(self._policy, spent, "marked").inc()
            event(log, logging.INFO, "over_budget", action="marked", **fields)
            listed = _listed(asked, route, from_list)
            return Answer(listed.status, [*listed.headers, *marks], listed.body)
        if route.kind is RouteKind.MODEL_INFO_V2:
            return await self._rescue(route, scope, who, asked, spent, "filtered", state.phantom)
        try:
            catalog = await self._lookups().catalog()
        except LookupFailed as exc:
            self._metrics.fail_closed.labels("lookup_failed").inc()
            event(log, logging.WARNING, "fail_closed", reason=str(exc), **fields)
            return _listed(asked, route, from_list)
        body = asked.json()
        if not _has_shape(route, body, from_list):
            event(
                log, logging.WARNING, "fail_closed", reason="LiteLLM's answer has an unknown shape", **fields
            )
            return _listed(asked, route, from_list)
        status, payload = _filtered(route, body, catalog.is_free, from_list)
        self._metrics.budget_marked.labels(self._policy, spent, "filtered").inc()
        event(log, logging.INFO, "over_budget", action="filtered", **fields)
        return _json_answer(status, payload, reply_headers(asked.headers, marks))

    def _lookups(self) -> AdminLookups:
        if self._admin is None:
            raise LookupFailed(NO_ADMIN)
        return self._admin

    async def _rescue(
        self,
        route: DiscoveryRoute,
        scope: Scope,
        who: Principal | None,
        refused: Answer,
        spent: str,
        action: str = "rescue",
        phantom: bool = False,
    ) -> Answer:
        """An answer rendered from the admin's view, or ``refused`` as it is when that cannot be done
        (with the phantom mark, if it is one)."""
        fields: dict[str, Any] = {**_caller(scope, route), "policy": self._policy, "scope": spent}
        unchanged = refused
        if phantom:
            fields["verdict"] = "phantom"
            unchanged = Answer(refused.status, [*refused.headers, PHANTOM], refused.body)
        if self._policy == "blocked":
            self._metrics.blocked.inc()
            event(log, logging.INFO, "rescue_blocked", **fields)
            return unchanged
        try:
            self._lookups()
            if who is None:
                raise ScopeUnknown("the request carries no credential")
            if not who.virtual_key:
                raise ScopeUnknown(NOT_A_VIRTUAL_KEY)
            token = who.token
            anthropic = any(name == b"anthropic-version" for name, _ in scope["headers"])
            request = (token, route.kind, route.model_id, scope["query_string"], anthropic)
            status, payload = await self.rendered.get(
                request, lambda: self._rendered(route, scope, token, anthropic)
            )
        except (ScopeUnknown, LookupFailed, shapes.BadQuery) as exc:
            self._metrics.fail_closed.labels(_FAIL_REASONS[type(exc)]).inc()
            event(log, logging.WARNING, "fail_closed", reason=str(exc), **fields)
            return unchanged
        if action == "rescue":
            self._metrics.rescues.labels(self._policy, spent).inc()
        else:
            self._metrics.budget_marked.labels(self._policy, spent, action).inc()
        event(log, logging.INFO, action if action == "rescue" else "over_budget", status=status, **fields)
        marks = _marks(self._policy, spent, phantom)
        return _json_answer(status, payload, reply_headers(refused.headers, marks))

    async def _rendered(
        self, route: DiscoveryRoute, scope: Scope, token: str, anthropic: bool
    ) -> tuple[int, bytes]:
        status, payload = await self._render(route, scope, anthropic, await self._visible(token))
        return status, json.dumps(payload, separators=(",", ":")).encode()

    async def _visible(self, token: str) -> Callable[[str], bool]:
        assert self._admin is not None
        catalog, access = await self._admin.access(token)
        if self._policy == "free_only":
            return lambda name: catalog.is_free(name) and access.allows(name)
        return access.allows

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


def _refusal(answer: Answer) -> Any:
    """The parsed body of ``answer`` when it is LiteLLM's budget error, else ``None``."""
    if answer.status not in BUDGET_STATUSES:
        return None
    body = answer.json(limit=_ERROR_LIMIT)
    return body if is_budget_error(answer.status, body) else None


def _probe_reading(answer: Answer) -> tuple[int, Any]:
    """What the budget probe reads of an answer: its status, and the body of a (small) 4xx."""
    return answer.status, answer.json(limit=_ERROR_LIMIT) if 400 <= answer.status < 500 else None


def _as_probe(answer: Answer) -> Probe:
    async def probe() -> tuple[int, Any]:
        return _probe_reading(answer)

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


def _marks(policy: str, spent: str, phantom: bool = False) -> RawHeaders:
    marks = [
        (b"x-sidecar-budget-exceeded", b"true"),
        (b"x-sidecar-policy", policy.encode()),
        (b"x-sidecar-budget-scope", spent.encode()),
    ]
    return [*marks, PHANTOM] if phantom else marks


def _phantom(verdict: Verdict | None) -> bool:
    return verdict is not None and verdict.verdict == "phantom"


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
