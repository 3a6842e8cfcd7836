"""The sidecar's look-ups with the admin credential, and their caches.

The admin credential goes only to the fixed URLs listed here, built by the sidecar itself; no part of a
caller's path, query or headers reaches them except a key's SHA-256 (``/key/info?key=<hash>``, never the
raw key), team, user and organisation ids from LiteLLM's own answers, the end-user id a request names
(``/customer/info?end_user_id=``: what LiteLLM itself budgets that request by; all query-encoded by
httpx), and whether the caller asked for Anthropic's list shape (mapped to one fixed header value). It
is never logged: failures are reported by path and status only.

The ``httpx.AsyncClient`` used here is the app's, created in its lifespan, with a cookie policy that
refuses every cookie, no redirects and no environment proxies.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import httpx

from sidecar.cache import SingleFlightCache
from sidecar.litellm.access import Access, ModelScope, model_scope_from_admin_answers
from sidecar.litellm.catalog import ModelCatalog
from sidecar.litellm.rules import Release, release_of
from sidecar.logs import Sparse
from sidecar.metrics import Metrics

log = logging.getLogger("sidecar.litellm.admin")

ANTHROPIC_VERSION = "2023-06-01"
_SHED_LOG_EVERY = 10.0  # seconds between two admin_lookups_shed log lines
V2_PAGE_SIZE = "100000"  # one page holding every deployment; LiteLLM sets no upper bound


class LookupFailed(Exception):
    """An admin look-up failed; the message names the path and status, never a credential."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


SHED = "admin look-ups are at their bound (admin_lookup_rate, admin_lookup_concurrency): not asked"


class LookupShed(LookupFailed):
    """A per-caller look-up not made: the global bound on admin look-ups was reached."""


class LookupBound:
    """The global bound on per-caller admin look-ups: a token bucket of ``rate`` a second (holding at most
    ``rate``) and at most ``concurrency`` in flight. ``take`` never waits: a look-up over the bound is
    not queued but shed, so a flood of callers turns into LiteLLM's own answers, not a backlog."""

    __slots__ = ("_last", "_tokens", "concurrency", "in_flight", "rate")

    def __init__(self, rate: float, concurrency: int) -> None:
        self.rate = rate
        self.concurrency = concurrency
        self.in_flight = 0
        self._tokens = max(rate, 1.0)
        self._last = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self._tokens = min(max(self.rate, 1.0), self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self.in_flight >= self.concurrency or self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        self.in_flight += 1
        return True

    def give_back(self) -> None:
        self.in_flight -= 1


class View(enum.Enum):
    """The admin's renditions of discovery routes that rescued answers are cut from."""

    MODELS = ("/v1/models", (), False)
    MODELS_WILDCARDS = ("/v1/models", (("return_wildcard_routes", "true"),), False)
    MODELS_ANTHROPIC = ("/v1/models", (), True)
    MODELS_ANTHROPIC_WILDCARDS = ("/v1/models", (("return_wildcard_routes", "true"),), True)
    MODEL_INFO_V2 = ("/v2/model/info", (("page", "1"), ("size", V2_PAGE_SIZE)), False)
    MODEL_GROUP_INFO = ("/model_group/info", (), False)

    @classmethod
    def models(cls, anthropic: bool, wildcards: bool) -> View:
        if anthropic:
            return cls.MODELS_ANTHROPIC_WILDCARDS if wildcards else cls.MODELS_ANTHROPIC
        return cls.MODELS_WILDCARDS if wildcards else cls.MODELS


def admin_http_client(base_url: str, admin_key: str, timeout: float) -> httpx.AsyncClient:
    """The client for admin look-ups: keeps no cookies, follows no redirects, ignores proxy env vars."""
    jar = CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
    return httpx.AsyncClient(
        base_url=base_url,
        headers={"Authorization": f"Bearer {admin_key}"},
        cookies=jar,
        timeout=timeout,
        follow_redirects=False,
        trust_env=False,
    )


class AdminLookups:
    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        catalog_ttl: float,
        scope_ttl: float,
        metrics: Metrics,
        extra_free: tuple[str, ...] = (),
        budget_ttl: float = 10.0,
        bound: LookupBound | None = None,
    ) -> None:
        self._client = client
        self._metrics = metrics
        self._extra_free = extra_free
        self._bound = bound if bound is not None else LookupBound(50.0, 10)
        self._shed_log = Sparse(log, "admin_lookups_shed", "shed", _SHED_LOG_EVERY)
        self.views: SingleFlightCache[View | str, Any] = SingleFlightCache(catalog_ttl)
        self._catalog_ttl = catalog_ttl
        self._release_failed_until = 0.0  # a failed version look-up is not tried again before this
        self.model_scopes: SingleFlightCache[str, ModelScope] = SingleFlightCache(scope_ttl)
        # Budget records change with every paid call: kept only as long as budget states are.
        self.records: SingleFlightCache[tuple[str, str], Any] = SingleFlightCache(budget_ttl)

    async def _get(self, path: str, params: tuple[tuple[str, str], ...] = (), anthropic: bool = False) -> Any:
        headers = {"anthropic-version": ANTHROPIC_VERSION} if anthropic else None
        started = time.perf_counter()
        try:
            response = await self._client.get(path, params=params, headers=headers)
        except httpx.TimeoutException:
            raise self._failed(path, "timeout", f"{path}: timed out") from None
        except httpx.HTTPError as exc:
            raise self._failed(path, "unreachable", f"{path}: {type(exc).__name__}") from None
        finally:
            self._metrics.admin_lookup_seconds.labels(path).observe(time.perf_counter() - started)
        if response.status_code != 200:
            status = response.status_code
            raise self._failed(path, str(status), f"{path} answered {status}", status)
        try:
            return response.json()
        except ValueError:
            raise self._failed(path, "invalid", f"{path} answered with a body that is not JSON") from None

    def _failed(self, path: str, reason: str, message: str, status: int | None = None) -> LookupFailed:
        self._metrics.admin_lookup_failures.labels(path, reason).inc()
        return LookupFailed(message, status)

    async def catalog(self) -> ModelCatalog:
        """The proxy's deployments as the admin sees them (cached)."""

        async def load() -> ModelCatalog:
            answer = await self._get("/model/info")
            data = answer.get("data") if isinstance(answer, dict) else None
            if not isinstance(data, list):
                raise LookupFailed("/model/info answered without a data list")
            return ModelCatalog.from_model_info(data, self._extra_free)

        catalog: ModelCatalog = await self.views.get("catalog", load)
        return catalog

    async def release(self) -> Release | None:
        """LiteLLM's version (cached as the catalog is), from its OpenAPI document - every version has it,
        unauthenticated; ``None`` when it cannot be read (``rules.refuses_free`` then answers for any)."""

        async def load() -> Release | None:
            answer = await self._get("/openapi.json")
            info = answer.get("info") if isinstance(answer, dict) else None
            version = info.get("version") if isinstance(info, dict) else None
            return release_of(version if isinstance(version, str) else None)

        if time.monotonic() < self._release_failed_until:
            return None
        try:
            found: Release | None = await self.views.get("version", load)
        except LookupFailed:
            # Remembered as the catalog would be: a LiteLLM without the document (docs off, an ingress
            # blocking it) is not asked again by every spent caller's request.
            self._release_failed_until = time.monotonic() + self._catalog_ttl
            return None
        return found

    async def view(self, view: View) -> dict[str, Any]:
        """The admin's answer to one fixed discovery route (cached)."""

        async def load() -> dict[str, Any]:
            path, params, anthropic = view.value
            answer = await self._get(path, params, anthropic)
            if not isinstance(answer, dict) or not isinstance(answer.get("data"), list):
                raise LookupFailed(f"{path} answered without a data list")
            return answer

        answer: dict[str, Any] = await self.views.get(view, load)
        return answer

    async def model_scope(self, token_hash: str) -> ModelScope:
        """The model lists that bound the key whose SHA-256 is ``token_hash`` (cached)."""

        async def load() -> ModelScope:
            # Through the budget records' cache: a caller's first look-ups serve both.
            key_info = await self._record("/key/info", "key", token_hash)
            info = key_info.get("info") if isinstance(key_info, dict) else None
            team_info = user_info = None
            if isinstance(info, dict):
                if isinstance(info.get("team_id"), str):
                    team_info = await self._record("/team/info", "team_id", info["team_id"])
                elif isinstance(info.get("user_id"), str):
                    user_info = await self._record("/user/info", "user_id", info["user_id"])
            return model_scope_from_admin_answers(key_info, team_info, user_info)

        return await self.model_scopes.get(token_hash, load)

    async def access(self, token_hash: str) -> tuple[ModelCatalog, Access]:
        """The catalog and which of its models the key may access: what discovery, the budget view, the
        doctor and the fallback all ask (cached, as ``model_scope`` and ``catalog`` are)."""
        model_scope = await self.model_scope(token_hash)
        catalog = await self.catalog()
        return catalog, model_scope.allowed(catalog)

    async def _record(self, path: str, param: str, value: str) -> Any:
        return await self.records.get((path, value), lambda: self._bounded(path, ((param, value),)))

    async def _bounded(self, path: str, params: tuple[tuple[str, str], ...]) -> Any:
        """A per-caller look-up, within the global bound (``LookupBound``) or shed."""
        if not self._bound.take():
            raise self._shed(path)
        try:
            return await self._get(path, params)
        finally:
            self._bound.give_back()

    def _shed(self, path: str) -> LookupShed:
        """Counted; logged at most once every ``_SHED_LOG_EVERY`` seconds, with how many since."""
        self._metrics.admin_lookups_shed.inc()
        self._shed_log.happened(path=path, rate=self._bound.rate, concurrency=self._bound.concurrency)
        return LookupShed(SHED)

    async def budget_records(self, token: str | None, end_user: str | None) -> dict[str, Any]:
        """The admin answers that hold one principal's budget chain (cached for ``budget_ttl``).

        ``token`` is the SHA-256 of a virtual key, ``end_user`` the id a request names. Keys are
        ``key``, ``team``, ``user``, ``org`` and ``end_user``. A level that does not apply is left out
        (a user's budget binds only its personal keys, unless LiteLLM's ``apply_user_budget_to_team_keys``
        is set, which only the enforced source sees), and so is one LiteLLM will not show (an unknown end
        user, organisations without an enterprise licence). Raises :class:`LookupFailed` when the key
        itself cannot be looked up."""
        records: dict[str, Any] = {}
        info: dict[str, Any] = {}
        if token is not None:
            records["key"] = await self._record("/key/info", "key", token)
            found = records["key"].get("info") if isinstance(records["key"], dict) else None
            info = found if isinstance(found, dict) else {}
        levels = []
        if isinstance(info.get("team_id"), str):
            levels.append(("team", "/team/info", "team_id", info["team_id"]))
        elif isinstance(info.get("user_id"), str):
            levels.append(("user", "/user/info", "user_id", info["user_id"]))
        if end_user is not None:
            levels.append(("end_user", "/customer/info", "end_user_id", end_user))
        answers = await asyncio.gather(*(self._optional(path, p, v) for _, path, p, v in levels))
        records.update((level[0], a) for level, a in zip(levels, answers, strict=True) if a is not None)
        org = info.get("organization_id")
        team = records.get("team")
        if not isinstance(org, str) and isinstance(team, dict):
            org = (team.get("team_info") or {}).get("organization_id")
        if isinstance(org, str):
            answer = await self._optional("/organization/info", "organization_id", org)
            if answer is not None:
                records["org"] = answer
        return records

    async def _optional(self, path: str, param: str, value: str) -> Any:
        """A level's record, or ``None`` where LiteLLM has none or will not show it (4xx)."""
        try:
            return await self._record(path, param, value)
        except LookupFailed as exc:
            if exc.status is not None and 400 <= exc.status < 500:
                return None
            raise
