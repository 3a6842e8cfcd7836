"""Which models a key may access, from the admin's answers, by LiteLLM's rules."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.litellm.access import AccessUnknown, ModelScope, model_scope_from_admin_answers
from sidecar.litellm.catalog import ModelCatalog
from tests.fake_litellm import HASH_OWNER, VERSIONS, load_recordings
from tests.seeded import ACCESS, ALL_MODELS


def deployment(name: str, groups: tuple[str, ...] = (), team_id: str | None = None) -> dict[str, Any]:
    info: dict[str, Any] = {"id": f"id-{name}", "access_groups": list(groups)}
    if team_id:
        info["team_id"] = team_id
    return {"model_name": name, "litellm_params": {"model": f"openai/{name}"}, "model_info": info}


CATALOG = ModelCatalog.from_model_info(
    [
        deployment("gpt-4o", groups=("premium",)),
        deployment("gpt-4o-mini"),
        deployment("openai/gpt-4.1"),
        deployment("openai/gpt-4.1-mini"),
        deployment("anthropic/claude"),
        deployment("llama", groups=("free-group", "local")),
        deployment("qwen", groups=("free-group",)),
        deployment("team-a-private", team_id="team-a"),
    ]
)


def visible(scope: ModelScope) -> list[str]:
    access = scope.allowed(CATALOG)
    return [name for name in CATALOG.names if access.allows(name)]


def test_no_restriction_anywhere_sees_every_model_but_other_teams_private_ones() -> None:
    assert visible(ModelScope(key_models=())) == [n for n in CATALOG.names if n != "team-a-private"]


def test_team_only_model_is_visible_to_its_team() -> None:
    assert "team-a-private" in visible(ModelScope(key_models=(), team_id="team-a"))
    assert "team-a-private" not in visible(ModelScope(key_models=(), team_id="team-b"))


def test_key_list_restricts() -> None:
    assert visible(ModelScope(key_models=("gpt-4o-mini", "llama"))) == ["gpt-4o-mini", "llama"]


def test_key_and_team_lists_intersect() -> None:
    scope = ModelScope(
        key_models=("gpt-4o", "llama", "qwen"), team_id="t", team_models=("llama", "qwen", "gpt-4o-mini")
    )
    assert visible(scope) == ["llama", "qwen"]


def test_access_group_stands_for_its_models() -> None:
    assert visible(ModelScope(key_models=("free-group",))) == ["llama", "qwen"]
    assert visible(ModelScope(key_models=("premium", "local"))) == ["gpt-4o", "llama"]


def test_wildcards_match_model_names() -> None:
    assert visible(ModelScope(key_models=("openai/*",))) == ["openai/gpt-4.1", "openai/gpt-4.1-mini"]
    assert visible(ModelScope(key_models=("openai/gpt-4.1*",))) == ["openai/gpt-4.1", "openai/gpt-4.1-mini"]
    assert visible(ModelScope(key_models=("gpt-4o.*",))) == []  # dots are literal, not regex


def test_all_proxy_models_lifts_a_level() -> None:
    scope = ModelScope(key_models=("all-proxy-models",), team_id="t", team_models=("qwen",))
    assert visible(scope) == ["qwen"]
    only_qwen = ModelScope(key_models=("qwen",), team_id="t", team_models=("all-proxy-models",))
    assert visible(only_qwen) == ["qwen"]


def test_all_team_models_means_the_teams_list() -> None:
    scope = ModelScope(key_models=("all-team-models",), team_id="t", team_models=("llama", "gpt-4o"))
    assert visible(scope) == ["gpt-4o", "llama"]


def test_user_list_bounds_personal_keys() -> None:
    assert visible(ModelScope(key_models=(), user_models=("qwen", "llama"))) == ["llama", "qwen"]
    assert visible(ModelScope(key_models=("qwen", "gpt-4o"), user_models=("qwen",))) == ["qwen"]


def test_no_default_models_user_sees_nothing_with_a_personal_key() -> None:
    assert visible(ModelScope(key_models=(), user_models=("no-default-models",))) == []


def test_a_model_the_proxy_does_not_have_is_not_invented() -> None:
    assert visible(ModelScope(key_models=("gpt-5", "qwen"))) == ["qwen"]


@pytest.mark.parametrize("name", ["all-org-models", "no-team-models", "all-models"])
def test_unknown_special_names_make_the_scope_unknown(name: str) -> None:
    with pytest.raises(AccessUnknown):
        ModelScope(key_models=(name,))


def test_all_team_models_on_a_team_is_unknown() -> None:
    with pytest.raises(AccessUnknown):
        ModelScope(key_models=(), team_id="t", team_models=("all-team-models",))


@pytest.mark.parametrize(
    ("key_info", "team_info"),
    [
        ({}, None),
        ({"info": "nope"}, None),
        ({"info": {"models": "gpt-4o"}}, None),
        ({"info": {"models": [1, 2]}}, None),
        ({"info": {"models": [], "team_id": "t"}}, None),
        ({"info": {"models": [], "team_id": 7}}, None),
    ],
)
def test_malformed_admin_answers_make_the_scope_unknown(
    key_info: dict[str, Any], team_info: dict[str, Any] | None
) -> None:
    with pytest.raises(AccessUnknown):
        model_scope_from_admin_answers(key_info, team_info)


def test_team_without_a_models_list_does_not_restrict() -> None:
    scope = model_scope_from_admin_answers(
        {"info": {"models": [], "team_id": "t"}}, {"team_info": {"models": None}}
    )
    assert scope.team_models == ()
    assert visible(scope) == [n for n in CATALOG.names if n != "team-a-private"]


def _admin_answers(version: str) -> dict[str, dict[str, Any]]:
    answers = {}
    for entry in load_recordings(version):
        target = entry["request"].split(" ", 1)[1]
        if entry["principal"].startswith("MASTER"):
            answers[target] = entry["body"]
    return answers


@pytest.mark.parametrize("version", VERSIONS)
def test_recorded_keys_get_the_models_litellm_gives_them(version: str) -> None:
    answers = _admin_answers(version)
    catalog = ModelCatalog.from_model_info(answers["/model/info"]["data"])
    expected = {**ACCESS, "KEY_HEALTHY": ALL_MODELS, "KEY_END_USER_CALLER": ALL_MODELS}
    for target, key_info in answers.items():
        if not target.startswith("/key/info?key="):
            continue
        principal = HASH_OWNER[target.removeprefix("/key/info?key=")]
        info = key_info["info"]
        team = answers.get(f"/team/info?team_id={info['team_id']}") if info.get("team_id") else None
        user = answers.get(f"/user/info?user_id={info['user_id']}") if info.get("user_id") else None
        access = model_scope_from_admin_answers(key_info, team, user).allowed(catalog)
        assert [n for n in catalog.names if access.allows(n)] == expected[principal], principal
