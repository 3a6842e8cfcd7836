"""Opt-in budget fallback: a paid request LiteLLM refuses for a spent budget is sent again with a free model.

Setting ``fallback`` maps a paid model name (or ``*``) to a free one. For a ``POST`` to a chat completion,
completion, Responses API or Anthropic Messages route whose JSON body (at most ``BODY_LIMIT`` bytes) names
a mapped model, the request goes to LiteLLM as usual. If LiteLLM refuses it with a budget error
(``budget_errors.is_budget_error``: not a rate limit, not an access denial) and the target is free in
LiteLLM's catalog and among the models the caller may access, the same request is sent again with only
its ``model`` replaced - with the caller's own headers, credential included: LiteLLM enforces access and
budget on the retry itself, so a fallback can never widen anyone's access. The retry's answer goes back
with ``x-sidecar-fallback-from`` and ``x-sidecar-fallback-model``, streamed if the request streams (the
refusal comes before any chunk); if the retry is refused too, the caller gets the original refusal,
unchanged. Any other answer - and every request that cannot fall back - passes through as it came.

The body is parsed only after a budget refusal. A ``POST`` to one of those routes with a body of at most
``BODY_LIMIT`` bytes is read whole and sent as those bytes, unparsed, whatever model it names (with a
specific mapping, a request for an unmapped model is held like the others: it no longer streams through).
Its answer is held back only if its status is one a budget refusal has, and then only up to
``upstream.SMALL_ANSWER`` bytes (``upstream.Hold``, as every passed-through refusal is: read once, recorded
and judged by ``refusals.py``). Only a budget refusal, for a caller with a virtual key, gets the body
parsed: once, with ``json.loads``, for its ``model``, the mapping and the retry's body. A body LiteLLM
serves thus costs no parse however it is built; a crafted 1 MiB body (many small keys) costs some 20-30 ms
of the event loop's CPU to parse and as much again to write as the retry, paid only by a caller LiteLLM
has just refused for budget. A request whose model is not mapped, or whose body is not a JSON object with
a string ``model``, gets LiteLLM's answer unchanged: no retry, no metric, no log line. A larger body, and
every other request, passes through as a stream, untouched.

A WebSocket handshake (realtime) names its model in the query, ``?model=...``: when LiteLLM refuses it for
budget - its empty ``403`` to a caller whose budget state says spent, marked by ``refusals.py`` - and the
model is mapped to a free one the caller may use, the same handshake is tried again with only that query
parameter replaced (``handshake_detour``); the upgrade LiteLLM grants carries the same two headers, and a
second refusal sends the first one back.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, quote, unquote_plus

from sidecar.litellm.admin import AdminLookups, LookupFailed
from sidecar.litellm.budget import Principal, principal_of
from sidecar.litellm.budget_errors import BUDGET_STATUSES, BudgetLevel, Refusal, error_of
from sidecar.litellm.policy import EXCEEDED, LEVEL, asks_version, spent_models
from sidecar.litellm.policy import usable as now
from sidecar.logs import event
from sidecar.metrics import Metrics
from sidecar.proxy.upstream import SMALL_ANSWER, Answer, Hold, Upstream
from sidecar.proxy.websocket import Detour
from sidecar.refusals import Refusals
from sidecar.types import Message, Receive, Scope, Send

log = logging.getLogger("sidecar.fallback")

ROUTES = frozenset(
    {
        b"/v1/chat/completions",
        b"/chat/completions",
        b"/v1/completions",
        b"/completions",
        b"/v1/responses",
        b"/responses",
        b"/v1/messages",
    }
)
BODY_LIMIT = 1024 * 1024  # bytes: a larger request is passed through without a fallback
_SHOWN_LIMIT = 128  # characters of a caller's model name shown in a header or a log line
FROM_HEADER = b"x-sidecar-fallback-from"
MODEL_HEADER = b"x-sidecar-fallback-model"


class Fallback:
    def __init__(
        self,
        upstream: Upstream,
        admin: AdminLookups | None,
        *,
        refusals: Refusals,
        metrics: Metrics,
        mapping: Mapping[str, str],
    ) -> None:
        self._upstream = upstream
        self._admin = admin
        self._refusals = refusals
        self._metrics = metrics
        self._mapping = dict(mapping)

    async def unusable_targets(self) -> list[str]:
        """The targets LiteLLM's catalog does not call free: no request will fall back to them."""
        if self._admin is None:
            return sorted(set(self._mapping.values()))
        catalog = await self._admin.catalog()
        return sorted({target for target in self._mapping.values() if not catalog.is_free(target)})

    def applies(self, scope: Scope) -> bool:
        """Whether this request may fall back, on its method and path alone (no body read yet)."""
        raw_path = scope["raw_path"] or scope["path"].encode()
        return bool(self._mapping) and scope["method"] == "POST" and raw_path in ROUTES

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the request as the bytes it came in, and look inside them only if LiteLLM refuses it for
        budget: a body LiteLLM serves, however it is built, costs no parse on the event loop."""
        read, body = await _read_up_to(receive, BODY_LIMIT)
        hold = self._refusals.hold
        if body is None:  # larger than BODY_LIMIT, or the caller left while sending it
            await self._upstream.pass_through(scope, _replay(read, receive), send, hold)
            return
        del read  # the body is held once, as one piece, while the first answer lasts
        first = _Held(send, self._refusals)
        await self._upstream.pass_through(scope, _replay_bytes(body, receive), send, first.hold)
        if first.refusal is None:
            return  # LiteLLM answered with no budget refusal: it went to the caller as it came
        plan = await self._plan(scope, body, first.refusal)
        del body
        if plan is None:
            await first.release()
            return
        retry = _Retry(send, self._shown(plan.model), plan.target, self._refusals)
        try:
            await self._upstream.pass_through(
                _with_length(scope, len(plan.body)), _replay_bytes(plan.body, receive), retry.send, retry.hold
            )
        finally:
            self._count(scope, plan.model, plan.target, retry)
        if not retry.passed:
            await first.release()  # the retry was refused too: the caller gets the original refusal

    async def handshake_detour(self, scope: Scope, refused: Answer) -> Detour | None:
        """For a WebSocket handshake LiteLLM refused for budget, the same handshake with the free model
        its ``model`` query parameter maps to, if the caller may use it."""
        admin = self._admin
        refusal = Refusal.read(refused.status, refused.body) or _marked(refused)
        who = principal_of(scope)
        if not self._mapping or admin is None or refusal is None or who is None or not who.virtual_key:
            return None
        query = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        models = [value for name, value in query if name == "model"]
        if len(models) != 1:
            return None
        model = models[0]
        target = await self._target(admin, who, model, refusal)
        if target is None:
            return None
        again = _with_model(scope["query_string"], target)

        def ended(outcome: str) -> None:
            self._ended(model, target, outcome, who.label, route="websocket")

        marks = [(FROM_HEADER, self._shown(model).encode()), (MODEL_HEADER, target.encode())]
        return Detour({**scope, "query_string": again}, marks, ended)

    async def _plan(self, scope: Scope, body: bytes, refusal: Refusal) -> _Plan | None:
        """The retry for a request LiteLLM refused for budget, if it may fall back.

        What needs no parse is checked first; the body is parsed only then, once, for its model and for
        the retry's body."""
        admin = self._admin
        if admin is None:
            return None
        who = principal_of(scope)
        if who is None or not who.virtual_key:
            return None
        request = _request_of(body)
        model = request.get("model") if request is not None else None
        if request is None or not isinstance(model, str):
            return None
        target = await self._target(admin, who, model, refusal)
        if target is None:
            return None
        request["model"] = target
        return _Plan(model, target, json.dumps(request, separators=(",", ":")).encode())

    async def _target(self, admin: AdminLookups, who: Principal, model: str, refusal: Refusal) -> str | None:
        """The free model ``model`` falls back to for this caller, if the mapping names one it may use."""
        target = self._mapping.get(model, self._mapping.get("*"))
        if target is None or target == model or not await self._may_use(admin, who, model, target, refusal):
            return None
        return target

    def _ended(self, model: str, target: str, outcome: str, key: str | None, **fields: Any) -> None:
        """The metric and log line of one fallback, however it ended."""
        self._metrics.fallbacks.labels(self._rule(model), target, outcome).inc()
        event(
            log,
            logging.INFO,
            "fallback",
            outcome=outcome,
            model=model[:_SHOWN_LIMIT],
            target=target,
            key=key,
            **fields,
        )

    def _count(self, scope: Scope, model: str, target: str, retry: _Retry) -> None:
        """The metric and log line of one retry, however it ended."""
        # "abandoned": the caller went away before the retry was answered. LiteLLM unreachable or too slow
        # is "refused": its answer is then the sidecar's own 502 or 504 (retry_error "upstream_error").
        outcome = "abandoned" if retry.status is None else "served" if retry.passed else "refused"
        refused = outcome == "refused"
        self._ended(
            model,
            target,
            outcome,
            _label(scope),
            # Why a refused fallback failed: LiteLLM refused the free model for budget too, or its answer
            # was another error (e.g. the target's provider does not serve this route).
            retry_status=retry.status,
            retry_budget_refusal=retry.refusal is not None if refused else None,
            retry_error=_error_type(retry.json()) if refused else None,
        )

    def _shown(self, model: str) -> str:
        """The model named in ``x-sidecar-fallback-from``: the caller's, when it is a short printable
        ASCII name; otherwise the rule that matched it (``*``), never text a header cannot carry."""
        fits = len(model) <= _SHOWN_LIMIT and model.isascii() and model.isprintable()
        return model if fits else self._rule(model)

    def _rule(self, model: str) -> str:
        """The mapping's key that applies to ``model``: the metric's label (never a caller's free text)."""
        return model if model in self._mapping else "*"

    async def _may_use(
        self, admin: AdminLookups, who: Principal, model: str, target: str, refusal: Refusal
    ) -> bool:
        """Only to a model LiteLLM serves the caller now, as discovery lists it (``policy.usable``): a free
        one it may access - none where the refusing level refuses free models too on this LiteLLM."""
        spent = (refusal.level,)
        release = await admin.release() if asks_version(spent) else None
        try:
            catalog, allowed = await admin.access(who.token)
        except LookupFailed:
            return False
        admits = now(spent, release).admits(catalog.is_free, allowed.allows, spent_models(None, refusal))
        usable = catalog.is_free(target) and admits(target)
        if not usable:
            self._metrics.fallbacks.labels(self._rule(model), target, "not_allowed").inc()
            event(
                log,
                logging.WARNING,
                "fallback_refused",
                target=target,
                key=who.label,
                reason="the target is not among the models LiteLLM serves this caller now: not free, not "
                "among those it may access, or its spent level refuses free models too",
            )
        return usable


class _Plan(NamedTuple):
    """A retry: the caller's model, the free model that replaces it, and the request's new body."""

    model: str
    target: str
    body: bytes


class _Held:
    """The first answer: passed on as it comes, unless it is a budget refusal (``refusals.py`` judged and
    marked it), which is kept back until it is known whether a fallback replaces it."""

    def __init__(self, send: Send, refusals: Refusals) -> None:
        self._send = send
        self._refusals = refusals
        self.refusal: Refusal | None = None
        self._answer: Answer | None = None
        self.hold = Hold(BUDGET_STATUSES, self._keep)

    async def _keep(self, scope: Scope, answer: Answer) -> Answer | None:
        self.refusal, marked = await self._refusals.judged(scope, answer)
        if self.refusal is None:
            return marked
        self._answer = marked
        return None

    async def release(self) -> None:
        answer, self._answer = self._answer, None
        if answer is None:
            return
        await self._send({"type": "http.response.start", "status": answer.status, "headers": answer.headers})
        await self._send({"type": "http.response.body", "body": answer.body})


class _Retry:
    """The retry's answer: to the caller, marked, if LiteLLM served it; swallowed (its start kept, to be
    judged) if it refused it."""

    def __init__(self, send: Send, model: str, target: str, refusals: Refusals) -> None:
        self._send = send
        self._marks = [(FROM_HEADER, model.encode()), (MODEL_HEADER, target.encode())]
        self._refusals = refusals
        self.status: int | None = None
        self.refusal: Refusal | None = None
        self._refused = bytearray()
        self.hold = Hold(BUDGET_STATUSES, self._judged)

    @property
    def passed(self) -> bool:
        """LiteLLM served the retry (no answer yet, or an error answer: it did not)."""
        return self.status is not None and self.status < 400

    async def _judged(self, scope: Scope, answer: Answer) -> Answer:
        self.refusal, marked = await self._refusals.judged(scope, answer)
        return marked

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            if self.passed:
                message = {**message, "headers": [*message["headers"], *self._marks]}
        if self.passed:
            await self._send(message)
        elif message["type"] == "http.response.body" and len(self._refused) <= SMALL_ANSWER:
            self._refused += message.get("body", b"")

    def json(self) -> Any:
        return _parsed(self._refused)


def _error_type(body: Any) -> str | None:
    """The ``type`` LiteLLM gave an error answer (its own ``litellm_error_type`` in Anthropic's shape)."""
    error = error_of(body) or {}
    kind = error.get("litellm_error_type") or error.get("type")
    return kind[:64] if isinstance(kind, str) else None


def _request_of(body: bytes) -> dict[str, Any] | None:
    """The request's JSON object, or None if the body is not one."""
    request = _parsed(body)
    return request if isinstance(request, dict) else None


def _parsed(body: bytes | bytearray) -> Any:
    """``body`` as JSON, or None: a caller's or LiteLLM's bytes may be anything."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than Python parses
        return None


async def _read_up_to(receive: Receive, limit: int) -> tuple[list[Message], bytes | None]:
    """The request's messages read so far and, if the whole body came within ``limit``, the body."""
    read: list[Message] = []
    size = 0
    while True:
        message = await receive()
        read.append(message)
        if message["type"] != "http.request":
            return read, None
        size += len(message.get("body", b""))
        if size > limit:
            return read, None
        if not message.get("more_body", False):
            return read, b"".join(m.get("body", b"") for m in read)


def _replay(read: list[Message], receive: Receive) -> Receive:
    """``receive`` with the messages already read given again first."""
    pending = list(read)

    async def replay() -> Message:
        return pending.pop(0) if pending else await receive()

    return replay


def _replay_bytes(body: bytes, receive: Receive) -> Receive:
    """The retry's request: its new body, then the caller's own ``receive`` (which tells a disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _with_length(scope: Scope, length: int) -> Scope:
    """``scope`` for the retry: its body is new, so its length is stated anew (chunked framing dropped)."""
    headers = [(k, v) for k, v in scope["headers"] if k not in (b"content-length", b"transfer-encoding")]
    return {**scope, "headers": [*headers, (b"content-length", str(length).encode())]}


def _label(scope: Scope) -> str | None:
    who = principal_of(scope)
    return who.label if who is not None else None


def _marked(answer: Answer) -> Refusal | None:
    """The refusal an answer the sidecar marked stands for (LiteLLM refuses a spent caller's WebSocket
    handshake with an empty 403, which names nothing): the level its marks name."""
    headers = dict(answer.headers)
    if headers.get(EXCEEDED) != b"true":
        return None
    try:
        level = BudgetLevel(headers.get(LEVEL, b"").decode("latin-1"))
    except ValueError:
        level = BudgetLevel.UNKNOWN
    return Refusal(answer.status, level, None)


def _with_model(query: bytes, target: str) -> bytes:
    """``query`` with its ``model`` parameter's value replaced by ``target``: every other byte as the caller
    sent it (decoding and encoding the whole query again would change escapes LiteLLM may read)."""
    parts = query.split(b"&")
    for at, part in enumerate(parts):
        if unquote_plus(part.split(b"=", 1)[0].decode("latin-1")) == "model":
            parts[at] = b"model=" + quote(target, safe="").encode("ascii")
    return b"&".join(parts)
