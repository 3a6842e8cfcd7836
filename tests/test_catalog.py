"""Free models and what of the admin's view may be shown."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sidecar.litellm.catalog import ModelCatalog, is_secret_param, public_deployment
from tests.fake_litellm import VERSIONS, load_recordings


def dep(name: str, **params: object) -> dict[str, Any]:
    return {"model_name": name, "litellm_params": {"model": "openai/x", **params}, "model_info": {"id": name}}


@pytest.mark.parametrize("version", VERSIONS)
def test_recorded_proxy_free_models(version: str) -> None:
    model_info = next(
        e["body"]
        for e in load_recordings(version)
        if e["principal"] == "MASTER" and e["request"] == "GET /model/info"
    )
    catalog = ModelCatalog.from_model_info(model_info["data"])
    assert sorted(catalog.free) == ["free-embedding", "free-model", "free-model-2"]
    assert catalog.access_groups == {"free-group": frozenset({"free-model-2"})}


def test_a_model_without_a_configured_price_is_not_free() -> None:
    catalog = ModelCatalog.from_model_info([dep("gpt-4o"), dep("half", input_cost_per_token=0)])
    assert catalog.free == frozenset()


def test_every_deployment_of_a_name_must_be_free() -> None:
    free = {"input_cost_per_token": 0, "output_cost_per_token": 0.0}
    catalog = ModelCatalog.from_model_info(
        [
            dep("mixed", **free),
            dep("mixed", input_cost_per_token=0, output_cost_per_token=1e-6),
            dep("ok", **free),
        ]
    )
    assert catalog.free == frozenset({"ok"})


def test_per_second_pricing_is_not_free() -> None:
    catalog = ModelCatalog.from_model_info(
        [dep("whisper", input_cost_per_token=0, output_cost_per_token=0, input_cost_per_second=0.0001)]
    )
    assert not catalog.is_free("whisper")


def test_strings_and_booleans_are_not_prices() -> None:
    catalog = ModelCatalog.from_model_info(
        [
            dep("a", input_cost_per_token="0", output_cost_per_token=0),
            dep("b", input_cost_per_token=False, output_cost_per_token=0),
        ]
    )
    assert catalog.free == frozenset()


def test_operators_can_declare_extra_free_models() -> None:
    catalog = ModelCatalog.from_model_info([dep("local-llama")], extra_free=("local-llama",))
    assert catalog.is_free("local-llama")


SECRET = "SECRET-VALUE-123"


def test_secrets_never_leave_in_a_public_deployment() -> None:
    entry = dep(
        "m",
        api_key=SECRET,
        aws_access_key_id=SECRET,
        aws_secret_access_key=SECRET,
        aws_session_token=SECRET,
        vertex_credentials=SECRET,
        azure_ad_token=SECRET,
        client_secret=SECRET,
        azure_password=SECRET,
        extra_headers={"Authorization": SECRET},
        input_cost_per_token=0.001,
        api_base="http://10.0.0.1:8000/v1",
        nested={"api_key": SECRET, "region": "eu"},
    )
    entry["model_info"].update({"access_via_team_ids": ["team-a"], "direct_access": True})
    shown = public_deployment(entry)
    assert SECRET not in json.dumps(shown)
    assert shown["litellm_params"]["input_cost_per_token"] == 0.001
    assert "nested" not in shown["litellm_params"]  # not on the allowlist, whatever it holds
    assert "access_via_team_ids" not in shown["model_info"]
    assert "direct_access" not in shown["model_info"]
    assert entry["litellm_params"]["api_key"] == SECRET  # the cached original is untouched


@pytest.mark.parametrize(
    "name", ["input_cost_per_token", "output_cost_per_token", "max_tokens", "model", "api_base"]
)
def test_prices_and_plain_settings_are_not_secrets(name: str) -> None:
    assert not is_secret_param(name)


def test_what_a_name_matcher_let_through_is_not_on_the_allowlist() -> None:
    """Issue 25: ``authorization``, ``apikey``, ``watsonx_apikey``, ``passphrase``, ``aws_external_id`` and
    credentials inside ``api_base`` passed the secret-name matcher into rescued /model/info answers."""
    entry = dep(
        "m",
        authorization=SECRET,
        apikey=SECRET,
        watsonx_apikey=SECRET,
        passphrase=SECRET,
        aws_external_id=SECRET,
        litellm_credential_name=SECRET,
        api_base=f"https://user:{SECRET}@llm.example/v1?api-key={SECRET}#{SECRET}",
        api_version="2024-10-21",
        rpm=60,
    )
    entry[SECRET] = SECRET  # an entry field LiteLLM does not have
    entry["model_info"].update(
        {
            "notes": f"sk-{SECRET}",  # a value that is a key, under a harmless name
            "webhook": f"https://hook:{SECRET}@example.test/x",
            "custom": {"passphrase_hint": f"Bearer {SECRET}", "jwt": "eyJhbGciOi.eyJzdWIi.sig"},
            "access_groups": ["free-group"],
            "input_cost_per_token": 0.0,
        }
    )
    shown = public_deployment(entry)
    assert SECRET not in json.dumps(shown) and "eyJ" not in json.dumps(shown)
    assert set(shown) == {"model_name", "litellm_params", "model_info"}
    assert shown["litellm_params"] == {
        "model": "openai/x",
        "api_base": "https://llm.example/v1",
        "api_version": "2024-10-21",
        "rpm": 60,
    }
    assert shown["model_info"]["webhook"] == "https://example.test/x"
    assert shown["model_info"]["access_groups"] == ["free-group"]
    assert shown["model_info"]["custom"] == {}


@pytest.mark.parametrize("version", VERSIONS)
def test_a_rescued_entry_has_the_fields_litellm_shows_an_ordinary_key(version: str) -> None:
    """The admin's /model/info entries, as rescued, against LiteLLM's own answer to an ordinary key with
    the same models (recorded): the same fields per entry, at every level."""
    recorded = load_recordings(version)
    admin = next(
        e["body"] for e in recorded if e["principal"] == "MASTER" and e["request"] == "GET /model/info"
    )
    own = next(
        e["body"] for e in recorded if e["principal"] == "KEY_HEALTHY" and e["request"] == "GET /model/info"
    )
    theirs = {d["model_info"]["id"]: d for d in own["data"]}
    for entry in admin["data"]:
        shown = public_deployment(entry)
        twin = theirs[entry["model_info"]["id"]]
        assert set(shown) == set(twin)
        assert set(shown["litellm_params"]) == set(twin["litellm_params"])
        assert set(shown["model_info"]) <= set(twin["model_info"])
        assert set(twin["model_info"]) - set(shown["model_info"]) <= {"access_via_team_ids", "direct_access"}


PLANTED = {
    "api_key": "sk-planted-api-key-0001",
    "api_base": "http://planted-user:planted-password-0002@127.0.0.1:9/v1?key=planted-query-key-0003",
    "extra_headers": {"Authorization": "Bearer planted-header-0004", "x-api-key": "planted-header-0005"},
    "aws_access_key_id": "AKIAPLANTED00000006",
    "aws_secret_access_key": "planted-aws-secret-0007",
    "aws_session_token": "planted-aws-session-0008",
    "vertex_credentials": '{"private_key": "planted-vertex-0009"}',
    "watsonx_apikey": "planted-watsonx-0010",
    "passphrase": "planted-passphrase-0011",
    "my_custom_field": "sk-planted-custom-0012",
}


def test_no_planted_value_leaves_in_an_entry_built_from_the_admins_view() -> None:
    """The values tests/integration/test_real_twins.py would plant through /model/new, had the harness's
    LiteLLM allowed it: none reaches a rescued entry."""
    shown = json.dumps(public_deployment(dep("planted-model", **PLANTED)))
    assert "planted" not in shown.replace("planted-model", "")  # the model's own name is no secret
    assert "AKIA" not in shown and "sk-" not in shown
    assert '"api_base": "http://127.0.0.1:9/v1"' in shown
