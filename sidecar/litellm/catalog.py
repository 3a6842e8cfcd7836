"""The proxy's models as the admin sees them (``GET /model/info``), and what may be shown of them.

One entry per deployment: ``model_name`` (the public name callers use), ``litellm_params`` (provider
settings, prices configured by the operator, and secrets) and ``model_info`` (id, access groups, prices
from LiteLLM's cost map). From it the sidecar learns the model names, the access groups
(``model_info.access_groups``), team-only models (``model_info.team_id``) and which names are free.

Free means free for sure: every deployment of the name has ``input_cost_per_token`` and
``output_cost_per_token`` explicitly configured as 0 in ``litellm_params`` and no per-second price. A price
LiteLLM does not know is reported as 0.0 by ``/model_group/info``, so that route is never trusted for it.

Answers built from the admin's view keep only what LiteLLM shows an ordinary key, minus anything that can
hold a credential even where LiteLLM's own redaction would show it (``public_deployment``): an allowlist of
``litellm_params``, no admin-only ``model_info`` fields, no value that looks like a key, no userinfo or
query in a URL.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

_SECRET_PARAM = re.compile(
    r"(^|_)(api_key|key|key_id|secret|secret_key|access_key|password|token|credentials?|headers?|"
    r"private_key|client_secret|service_account_json|json)$",
    re.IGNORECASE,
)
_ADMIN_ONLY_INFO = frozenset({"access_via_team_ids", "direct_access"})
_PER_TOKEN = ("input_cost_per_token", "output_cost_per_token")
_PER_SECOND = ("input_cost_per_second", "output_cost_per_second", "cost_per_second")
_ENTRY_FIELDS = ("model_name", "litellm_params", "model_info")
# model_info fields that name the deployment (its id, LiteLLM's cost-map key), not a credential.
_INFO_IDENTITY = ("id", "key", "db_model")
# The ``litellm_params`` an answer built from the admin's view may carry: what LiteLLM shows an ordinary key
# on /model/info and /v2/model/info on 1.83.3 to 1.110.2 (recorded in tests/fixtures; LiteLLM shows every
# caller the same params, its redaction being role-independent: ``remove_sensitive_info_from_deployment``)
# that are settings, not credentials; and prices (``*cost_per*``). Anything else - header maps, credential
# names, provider options an operator added - is left out, whatever its name: an allowlist, not a guess at
# what a secret is called.
_SHOWN_PARAMS = frozenset(
    {
        "model",
        "custom_llm_provider",
        "api_base",
        "api_version",
        "base_model",
        "region_name",
        "rpm",
        "tpm",
        "max_tokens",
        "timeout",
        "stream_timeout",
        "max_retries",
        "merge_reasoning_content_in_choices",
        "use_in_pass_through",
        "use_litellm_proxy",
        "allow_client_keepalive_override",
        "use_xai_oauth",
    }
)
# Values that are credentials whatever field holds them: provider key prefixes, bearer/basic schemes,
# JWTs, PEM blocks.
_CREDENTIAL_VALUE = re.compile(
    r"^\s*(?:sk-|sk_|pk-|rk-|AKIA|ASIA|AIza|ghp_|gho_|github_pat_|xox[abprs]-|glpat-|hf_|"
    r"Bearer\s|Basic\s|eyJ[\w-]+\.[\w-]+\.)|-----BEGIN ",
)
_USERINFO = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/?#@]*@")


def is_secret_param(name: str) -> bool:
    """True for field names that can hold a credential (prices are never secret)."""
    return "cost" not in name and _SECRET_PARAM.search(name) is not None


def looks_like_a_credential(value: str) -> bool:
    return _CREDENTIAL_VALUE.search(value) is not None


def _shown_value(value: Any) -> Any:
    """``value`` as it may be shown, or ``_HIDDEN``: credentials out, URLs without userinfo or query."""
    if isinstance(value, str):
        if looks_like_a_credential(value):
            return _HIDDEN
        if "://" in value:
            return _USERINFO.sub(r"\1", value).split("?", 1)[0].split("#", 1)[0]
        return value
    if isinstance(value, dict):
        return {
            k: v
            for k, raw in value.items()
            if not is_secret_param(str(k)) and (v := _shown_value(raw)) is not _HIDDEN
        }
    if isinstance(value, list):
        return [v for raw in value if (v := _shown_value(raw)) is not _HIDDEN]
    return value


_HIDDEN = object()


def _shown_params(params: Mapping[str, Any]) -> dict[str, Any]:
    shown = {}
    for name, raw in params.items():
        if name in _SHOWN_PARAMS or "cost_per" in name:
            value = _shown_value(raw) if isinstance(raw, str | int | float | bool) or raw is None else _HIDDEN
            if value is not _HIDDEN:
                shown[name] = value
    return shown


def public_deployment(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A ``/model/info`` entry as an ordinary key may see it: its three fields only; in ``litellm_params``
    only the allowlisted settings, as scalars; in ``model_info`` (LiteLLM's cost map and the operator's
    additions, shown to every caller) no admin-only field and nothing that holds or looks like a credential;
    URLs without userinfo or query."""
    shown: dict[str, Any] = {name: entry[name] for name in _ENTRY_FIELDS if name in entry}
    params = entry.get("litellm_params")
    if isinstance(params, dict):
        shown["litellm_params"] = _shown_params(params)
    info = entry.get("model_info")
    if isinstance(info, dict):
        shown["model_info"] = _shown_info(info)
    return shown


def _shown_info(info: Mapping[str, Any]) -> dict[str, Any]:
    """``model_info`` without admin-only fields, secret-named ones (but the deployment's own names: its
    id, LiteLLM's cost-map ``key``, as plain strings) and values that look like credentials."""
    shown = {}
    for name, raw in info.items():
        if name in _ADMIN_ONLY_INFO:
            continue
        value = _shown_value(raw)
        if value is _HIDDEN:
            continue
        if is_secret_param(name) and not (name in _INFO_IDENTITY and isinstance(raw, str) and value == raw):
            continue
        shown[name] = value
    return shown


def _explicit_zero(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == 0


def _deployment_is_free(entry: Mapping[str, Any]) -> bool:
    params = entry.get("litellm_params")
    if not isinstance(params, dict):
        return False
    if not all(_explicit_zero(params.get(name)) for name in _PER_TOKEN):
        return False
    return all(params.get(name) in (None, 0, 0.0) for name in _PER_SECOND)


@dataclass(frozen=True)
class ModelCatalog:
    """Model names, access groups, team-only models and free names, from the admin's ``/model/info``."""

    names: tuple[str, ...]
    access_groups: Mapping[str, frozenset[str]]
    team_only: Mapping[str, str]  # model name -> the one team it belongs to
    free: frozenset[str]
    deployments: tuple[Mapping[str, Any], ...] = field(repr=False)

    @classmethod
    def from_model_info(cls, data: Iterable[Any], extra_free: Iterable[str] = ()) -> ModelCatalog:
        names: dict[str, None] = {}
        groups: dict[str, set[str]] = {}
        team_only: dict[str, str] = {}
        free_votes: dict[str, bool] = {}
        deployments = []
        for entry in data:
            if not isinstance(entry, dict) or not isinstance(entry.get("model_name"), str):
                continue
            name = entry["model_name"]
            deployments.append(entry)
            names[name] = None
            raw_info = entry.get("model_info")
            info: dict[str, Any] = raw_info if isinstance(raw_info, dict) else {}
            for group in info.get("access_groups") or ():
                if isinstance(group, str):
                    groups.setdefault(group, set()).add(name)
            if isinstance(info.get("team_id"), str):
                team_only[name] = info["team_id"]
            free_votes[name] = free_votes.get(name, True) and _deployment_is_free(entry)
        free = {name for name, vote in free_votes.items() if vote} | set(extra_free)
        return cls(
            names=tuple(names),
            access_groups={group: frozenset(members) for group, members in groups.items()},
            team_only=team_only,
            free=frozenset(free),
            deployments=tuple(deployments),
        )

    def is_free(self, name: str) -> bool:
        return name in self.free
