"""Which models a caller may access: LiteLLM's own rules, applied to what its admin API reports.

A virtual key is looked up by its SHA-256 (``/key/info?key=<hash>``), then its team (``/team/info``) and,
for a personal key (no team), its user (``/user/info``). Each level lists model names, and:

- an empty list means no restriction at that level;
- ``all-proxy-models`` means every model on the proxy; a key's ``all-team-models`` means its team's list;
- a name that is a model access group (``model_info.access_groups``) stands for the group's models;
- a name with ``*`` is a wildcard (``openai/*``) matching model names;
- a user's ``no-default-models`` means personal keys of that user may use no model;
- a model that belongs to one team (``model_info.team_id``) is visible only to keys of that team.

The caller may access a model only if every level allows it (key ∩ team ∩ user), as LiteLLM checks them
on each request. Any name that looks special (``all-…-models``, ``no-…-models``) but is not one of the
above makes the key's model scope unknown, and an unknown one fails closed: the caller gets the budget
error back.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sidecar.litellm.catalog import ModelCatalog

ALL_PROXY_MODELS = "all-proxy-models"
ALL_TEAM_MODELS = "all-team-models"
NO_DEFAULT_MODELS = "no-default-models"
_SPECIAL_LOOKING = re.compile(r"^(all|no)-[a-z0-9_-]*models$")


class AccessUnknown(Exception):
    """The caller's access cannot be established; the reason is logged, never shown to the caller."""


@dataclass(frozen=True, slots=True)
class ModelScope:
    """A key's model scope: the model lists that bound it, as LiteLLM stores them."""

    key_models: tuple[str, ...]
    team_id: str | None = None
    team_models: tuple[str, ...] = ()
    user_models: tuple[str, ...] | None = None  # only for personal keys (no team)

    def __post_init__(self) -> None:
        for level, names in (("key", self.key_models), ("team", self.team_models)):
            for name in names:
                allowed = (ALL_PROXY_MODELS, ALL_TEAM_MODELS) if level == "key" else (ALL_PROXY_MODELS,)
                if _SPECIAL_LOOKING.match(name) and name not in allowed:
                    raise AccessUnknown(f"unsupported special model name {name!r} on the {level}")
        for name in self.user_models or ():
            if _SPECIAL_LOOKING.match(name) and name not in (ALL_PROXY_MODELS, NO_DEFAULT_MODELS):
                raise AccessUnknown(f"unsupported special model name {name!r} on the user")

    def allowed(self, catalog: ModelCatalog) -> Access:
        """The rule that says, for any model name, whether this caller may access it."""
        key_models: Sequence[str] = self.key_models
        if ALL_TEAM_MODELS in key_models:
            key_models = self.team_models
        levels = [_Level.of(key_models, catalog), _Level.of(self.team_models, catalog)]
        if self.user_models is not None:
            if NO_DEFAULT_MODELS in self.user_models:
                levels.append(_Level(frozenset(), ()))
            else:
                levels.append(_Level.of(self.user_models, catalog))
        return Access(tuple(level for level in levels if level is not None), self.team_id, catalog)


@dataclass(frozen=True, slots=True)
class _Level:
    names: frozenset[str]
    patterns: tuple[re.Pattern[str], ...]

    @classmethod
    def of(cls, models: Iterable[str], catalog: ModelCatalog) -> _Level | None:
        """One level's allow-list, or ``None`` when the level does not restrict."""
        models = list(models)
        if not models or ALL_PROXY_MODELS in models or "*" in models:
            return None
        names: set[str] = set()
        patterns = []
        for name in models:
            if name in catalog.access_groups:
                names |= catalog.access_groups[name]
            elif "*" in name:
                patterns.append(re.compile(re.escape(name).replace(r"\*", ".*")))
            else:
                names.add(name)
        return cls(frozenset(names), tuple(patterns))

    def allows(self, model: str) -> bool:
        return model in self.names or any(p.fullmatch(model) for p in self.patterns)


@dataclass(frozen=True, slots=True)
class Access:
    levels: tuple[_Level, ...]
    team_id: str | None
    catalog: ModelCatalog

    def allows(self, model: str) -> bool:
        owner = self.catalog.team_only.get(model)
        if owner is not None and owner != self.team_id:
            return False
        return all(level.allows(model) for level in self.levels)


def model_scope_from_admin_answers(
    key_info: object, team_info: object | None = None, user_info: object | None = None
) -> ModelScope:
    """Build a :class:`ModelScope` from the JSON of ``/key/info``, ``/team/info`` and ``/user/info``."""
    info = _field(key_info, "info")
    team_id = info.get("team_id")
    team_models: tuple[str, ...] = ()
    if team_id is not None:
        if not isinstance(team_id, str):
            raise AccessUnknown("key info has a malformed team_id")
        team_models = _models(_field(team_info, "team_info"), "team")
    user_models = None
    if team_id is None and info.get("user_id") is not None:
        user_models = _models(_field(user_info, "user_info"), "user")
    return ModelScope(_models(info, "key"), team_id, team_models, user_models)


def _field(answer: object, name: str) -> dict[str, object]:
    value = answer.get(name) if isinstance(answer, dict) else None
    if not isinstance(value, dict):
        raise AccessUnknown(f"admin answer has no {name!r} object")
    return value


def _models(info: dict[str, object], level: str) -> tuple[str, ...]:
    models = info.get("models")
    if models is None:
        return ()
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        raise AccessUnknown(f"{level} models are not a list of names")
    return tuple(models)
