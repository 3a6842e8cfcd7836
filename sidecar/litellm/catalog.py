"""The proxy's models as the admin sees them (``GET /model/info``), and what may be shown of them.

One entry per deployment: ``model_name`` (the public name callers use), ``litellm_params`` (provider
settings, prices configured by the operator, and secrets) and ``model_info`` (id, access groups, prices
from LiteLLM's cost map). From it the sidecar learns the model names, the access groups
(``model_info.access_groups``), team-only models (``model_info.team_id``) and which names are free.

Free means free for sure: every deployment of the name has ``input_cost_per_token`` and
``output_cost_per_token`` explicitly configured as 0 in ``litellm_params`` and no per-second price. A price
LiteLLM does not know is reported as 0.0 by ``/model_group/info``, so that route is never trusted for it.

Answers built from the admin's view are stripped of secrets (API keys, cloud credentials, tokens, extra
headers) and of the admin-only fields LiteLLM hides from ordinary keys, before they reach a caller.
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


def is_secret_param(name: str) -> bool:
    """True for ``litellm_params`` fields that can hold a credential (prices are never secret)."""
    return "cost" not in name and _SECRET_PARAM.search(name) is not None


def _redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _redact(v) for k, v in value.items() if not is_secret_param(str(k))}
    if isinstance(value, list):
        return [_redact(v) for v in value]
    return value


def public_deployment(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A ``/model/info`` entry as an ordinary key may see it: no secrets, no admin-only fields."""
    shown = dict(entry)
    params = entry.get("litellm_params")
    if isinstance(params, dict):
        shown["litellm_params"] = _redact(params)
    info = entry.get("model_info")
    if isinstance(info, dict):
        shown["model_info"] = {k: v for k, v in info.items() if k not in _ADMIN_ONLY_INFO}
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
