"""Model discovery that survives a spent budget.

1. The caller's request goes to LiteLLM with the caller's own headers. Any answer that is not a budget
   error (``budget.is_budget_error``) goes back unchanged: status, headers, body.
2. On a budget error the policy decides: ``blocked`` returns it unchanged; ``all`` answers with the
   models this caller may access (``access.py``); ``free_only`` with the free ones among them
   (``catalog.py``). The answer is cut from the admin's view of the same route (``shapes.py``) and marked
   with ``x-sidecar-budget-exceeded: true`` and ``x-sidecar-policy``.
3. If the caller's scope cannot be established - no virtual key (JWT, OAuth), a failed look-up, an
   unknown special model name - the budget error goes back unchanged and the reason is logged.

``/v1/models/{id}`` is answered from the caller's own ``/v1/models`` (LiteLLM refuses the route to
ordinary keys): the entry if listed, else an OpenAI-style 404 ``model_not_found``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from sidecar.cache import SingleFlightCache
from sidecar.litellm import shapes
from sidecar.litellm.access import ScopeUnknown
from sidecar.litellm.admin import AdminLookups, LookupFailed, View
from sidecar.litellm.budget_errors import BUDGET_STATUSES, budget_scope, is_budget_error
from sidecar.litellm.credentials import caller_key, key_hash, key_label
from sidecar.logs import event
from sidecar.metrics import Metrics
from sidecar.proxy.forwarding import reply_headers
from sidecar.proxy.routes import DiscoveryRoute, RouteKind
from sidecar.proxy.upstream import Answer, Upstream, UpstreamUnavailable
from sidecar.settings import Policy
from sidecar.types import RawHeaders, Scope, Send

log = logging.getLogger("sidecar.discovery")

_LIST_PATH = b"/v1/models"
_FAIL_REASONS = {ScopeUnknown: "scope_unknown", LookupFailed: "lookup_failed", shapes.BadQuery: "bad_query"}


class Discovery:
    def __init__(
        self,
        upstream: Upstream,
        admin: AdminLookups | None,
        policy: Policy,
        retrieve_from_list: bool,
        metrics: Metrics,
        render_ttl: float = 0.0,
    ) -> None:
        self._upstream = upstream
        self._metrics = metrics
        # Rescued answers repeat (clients poll /v1/models): keep the serialized bytes per key and request.
        self.rendered: SingleFlightCache[tuple[object, ...], tuple[int, bytes]] = SingleFlightCache(
            render_ttl
        )
        self._admin = admin
        self._policy = policy
        self._retrieve_from_list = retrieve_from_list

    async def handle(self, route: DiscoveryRoute, scope: Scope, send: Send) -> None:
        try:
            answer = await self._answer(route, scope)
        except UpstreamUnavailable as exc:
            answer = _json_answer(exc.status, exc.body(), [])
        self._metrics.request("discovery", answer.status)
        await send({"type": "http.response.start", "status": answer.status, "headers": answer.headers})
        body = b"" if scope["method"] == "HEAD" else answer.body
        await send({"type": "http.response.body", "body": body})

    async def _answer(self, route: DiscoveryRoute, scope: Scope) -> Answer:
        from_list = route.kind is RouteKind.MODEL and self._retrieve_from_list
        if from_list:
            asked = await self._upstream.fetch(scope, _LIST_PATH, b"")
        else:
            asked = await self._upstream.fetch(scope, scope["raw_path"], scope["query_string"])
        if asked.status in BUDGET_STATUSES:
            body = asked.json(limit=64 * 1024)
            if is_budget_error(asked.status, body):
                return await self._rescue(route, scope, asked, body)
        if from_list and asked.status == 200:
            listed = asked.json()
            if isinstance(listed, dict) and isinstance(listed.get("data"), list):
                return _single_model(asked, listed, route.model_id or "")
        return asked

    async def _rescue(self, route: DiscoveryRoute, scope: Scope, refused: Answer, error: Any) -> Answer:
        spent = budget_scope(error)
        fields: dict[str, Any] = {"route": route.kind.value, "policy": self._policy, "scope": spent}
        key = caller_key(scope)
        if key is not None:
            fields["key"] = key_label(key)
        if self._policy == "blocked":
            self._metrics.blocked.inc()
            event(log, logging.INFO, "rescue_blocked", **fields)
            return refused
        try:
            if self._admin is None:
                raise LookupFailed("no admin credential configured")
            if key is None:
                raise ScopeUnknown("the request carries no credential")
            if not key.startswith("sk-"):
                raise ScopeUnknown("the credential is not a LiteLLM virtual key (JWT or other auth)")
            token = key_hash(key)
            anthropic = any(name == b"anthropic-version" for name, _ in scope["headers"])
            request = (token, route.kind, route.model_id, scope["query_string"], anthropic)
            status, payload = await self.rendered.get(
                request, lambda: self._rendered(route, scope, token, anthropic)
            )
        except (ScopeUnknown, LookupFailed, shapes.BadQuery) as exc:
            self._metrics.fail_closed.labels(_FAIL_REASONS[type(exc)]).inc()
            event(log, logging.WARNING, "fail_closed", reason=str(exc), **fields)
            return refused
        marks = [
            (b"x-sidecar-budget-exceeded", b"true"),
            (b"x-sidecar-policy", self._policy.encode()),
            (b"x-sidecar-budget-scope", spent.encode()),
        ]
        self._metrics.rescues.labels(self._policy, spent).inc()
        event(log, logging.INFO, "rescue", status=status, **fields)
        return _json_answer(status, payload, reply_headers(refused.headers, marks))

    async def _rendered(
        self, route: DiscoveryRoute, scope: Scope, token: str, anthropic: bool
    ) -> tuple[int, bytes]:
        status, payload = await self._render(route, scope, anthropic, await self._visible(token))
        return status, json.dumps(payload, separators=(",", ":")).encode()

    async def _visible(self, token: str) -> Callable[[str], bool]:
        assert self._admin is not None
        scope = await self._admin.scope(token)
        catalog = await self._admin.catalog()
        access = scope.allowed(catalog)
        if self._policy == "free_only":
            return lambda name: catalog.is_free(name) and access.allows(name)
        return access.allows

    async def _render(
        self, route: DiscoveryRoute, scope: Scope, anthropic: bool, visible: Callable[[str], bool]
    ) -> tuple[int, Any]:
        assert self._admin is not None
        query = dict(parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True))
        kind = route.kind
        if kind is RouteKind.MODELS:
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
