"""The sidecar's look-ups with the admin credential, and their caches.

The admin credential goes only to the fixed URLs listed here, built by the sidecar itself; no part of a
caller's path, query or headers reaches them except a key's SHA-256 (``/key/info?key=<hash>``, never the
raw key), team and user ids from LiteLLM's own answers (query-encoded by httpx), and whether the caller
asked for Anthropic's list shape (mapped to one fixed header value). It is never logged: failures are
reported by path and status only.

The ``httpx.AsyncClient`` used here is the app's, created in its lifespan, with a cookie policy that
refuses every cookie, no redirects and no environment proxies.
"""

from __future__ import annotations

import enum
import logging
import time
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import httpx

from sidecar.cache import SingleFlightCache
from sidecar.litellm.access import Scope, scope_from_admin_answers
from sidecar.litellm.catalog import ModelCatalog
from sidecar.metrics import Metrics

log = logging.getLogger("sidecar.litellm.admin")

ANTHROPIC_VERSION = "2023-06-01"
V2_PAGE_SIZE = "100000"  # one page holding every deployment; LiteLLM sets no upper bound


class LookupFailed(Exception):
    """An admin look-up failed; the message names the path and status, never a credential."""


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
        catalog_ttl: float,
        scope_ttl: float,
        metrics: Metrics,
        extra_free: tuple[str, ...] = (),
    ) -> None:
        self._client = client
        self._metrics = metrics
        self._extra_free = extra_free
        self.views: SingleFlightCache[View | str, Any] = SingleFlightCache(catalog_ttl)
        self.scopes: SingleFlightCache[str, Scope] = SingleFlightCache(scope_ttl)

    async def _get(self, path: str, params: tuple[tuple[str, str], ...] = (), anthropic: bool = False) -> Any:
        headers = {"anthropic-version": ANTHROPIC_VERSION} if anthropic else None
        started = time.perf_counter()
        try:
            response = await self._client.get(path, params=params, headers=headers)
        except httpx.TimeoutException:
            raise LookupFailed(f"{path}: timed out") from None
        except httpx.HTTPError as exc:
            raise LookupFailed(f"{path}: {type(exc).__name__}") from None
        finally:
            self._metrics.admin_lookup_seconds.labels(path).observe(time.perf_counter() - started)
        if response.status_code != 200:
            raise LookupFailed(f"{path} answered {response.status_code}")
        try:
            return response.json()
        except ValueError:
            raise LookupFailed(f"{path} answered with a body that is not JSON") from None

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

    async def scope(self, token_hash: str) -> Scope:
        """The model lists that bound the key whose SHA-256 is ``token_hash`` (cached)."""

        async def load() -> Scope:
            key_info = await self._get("/key/info", (("key", token_hash),))
            info = key_info.get("info") if isinstance(key_info, dict) else None
            team_info = user_info = None
            if isinstance(info, dict):
                if isinstance(info.get("team_id"), str):
                    team_info = await self._get("/team/info", (("team_id", info["team_id"]),))
                elif isinstance(info.get("user_id"), str):
                    user_info = await self._get("/user/info", (("user_id", info["user_id"]),))
            return scope_from_admin_answers(key_info, team_info, user_info)

        return await self.scopes.get(token_hash, load)
