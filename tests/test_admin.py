"""Admin look-ups: fixed URLs, the key's hash only, failures reported without secrets (respx edge cases)."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import respx

from sidecar.litellm.access import AccessUnknown, ModelScope
from sidecar.litellm.admin import AdminLookups, LookupFailed, View, admin_http_client
from sidecar.litellm.credentials import key_hash
from sidecar.metrics import Metrics

BASE = "http://litellm.test:4000"
ADMIN = "sk-admin-credential"
KEY = "sk-caller-raw-key-123456"
TOKEN = key_hash(KEY)


def lookups(**kwargs: float) -> tuple[AdminLookups, httpx.AsyncClient]:
    client = admin_http_client(BASE, ADMIN, timeout=kwargs.pop("timeout", 2.0))
    return AdminLookups(client, catalog_ttl=60, scope_ttl=60, metrics=Metrics()), client


run = asyncio.run


@respx.mock(base_url=BASE, assert_all_called=False)
def test_scope_of_a_team_key_reads_key_then_team(respx_mock: respx.MockRouter) -> None:
    key = respx_mock.get("/key/info", params={"key": TOKEN}).respond(
        json={"key": TOKEN, "info": {"models": ["a", "b"], "team_id": "t/1&x=2", "user_id": "u"}}
    )
    team = respx_mock.get("/team/info", params={"team_id": "t/1&x=2"}).respond(
        json={"team_info": {"models": ["b"]}}
    )
    user = respx_mock.get("/user/info")

    async def main() -> ModelScope:
        admin, client = lookups()
        async with client:
            return await admin.model_scope(TOKEN)

    scope = run(main())
    assert scope.key_models == ("a", "b") and scope.team_models == ("b",)
    assert key.called and team.called and not user.called  # user models bound personal keys only
    request = key.calls.last.request
    assert request.headers["authorization"] == f"Bearer {ADMIN}"
    assert KEY not in str(request.url)
    assert team.calls.last.request.url.path == "/team/info"  # the id is query-encoded, never a path


@respx.mock(base_url=BASE, assert_all_called=False)
def test_personal_key_reads_the_user(respx_mock: respx.MockRouter) -> None:
    respx_mock.get("/key/info").respond(json={"info": {"models": [], "team_id": None, "user_id": "u1"}})
    respx_mock.get("/user/info", params={"user_id": "u1"}).respond(json={"user_info": {"models": ["x"]}})

    async def main() -> ModelScope:
        admin, client = lookups()
        async with client:
            return await admin.model_scope(TOKEN)

    assert run(main()).user_models == ("x",)


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (httpx.Response(500, json={}), "/key/info answered 500"),
        (httpx.Response(401, json={"error": ADMIN}), "/key/info answered 401"),
        (httpx.Response(200, text="<html>"), "not JSON"),
        (httpx.ConnectError("refused"), "ConnectError"),
        (httpx.ReadTimeout("slow"), "timed out"),
    ],
)
def test_failures_name_path_and_status_never_the_credential(
    response: httpx.Response | Exception, message: str
) -> None:
    with respx.mock(base_url=BASE) as mock:
        route = mock.get("/key/info")
        if isinstance(response, Exception):
            route.side_effect = response
        else:
            route.return_value = response

        async def main() -> None:
            admin, client = lookups()
            async with client:
                await admin.model_scope(TOKEN)

        with pytest.raises(LookupFailed) as raised:
            run(main())
    assert message in str(raised.value)
    assert ADMIN not in str(raised.value) and TOKEN not in str(raised.value)


@respx.mock(base_url=BASE)
def test_malformed_key_info_is_an_unknown_scope(respx_mock: respx.MockRouter) -> None:
    respx_mock.get("/key/info").respond(json={"detail": "weird"})

    async def main() -> None:
        admin, client = lookups()
        async with client:
            await admin.model_scope(TOKEN)

    with pytest.raises(AccessUnknown):
        run(main())


@respx.mock(base_url=BASE)
def test_views_use_fixed_urls_and_are_cached(respx_mock: respx.MockRouter) -> None:
    models = respx_mock.get("/v1/models").respond(json={"data": [], "object": "list"})
    v2 = respx_mock.get("/v2/model/info", params={"page": "1", "size": "100000"}).respond(json={"data": []})

    async def main() -> None:
        admin, client = lookups()
        async with client:
            for _ in range(3):
                await admin.view(View.MODELS_ANTHROPIC_WILDCARDS)
                await admin.view(View.MODEL_INFO_V2)

    run(main())
    assert models.call_count == 1 and v2.call_count == 1
    sent = models.calls.last.request
    assert sent.url.params["return_wildcard_routes"] == "true"
    assert sent.headers["anthropic-version"] == "2023-06-01"


@respx.mock(base_url=BASE)
def test_admin_client_keeps_no_cookies(respx_mock: respx.MockRouter) -> None:
    respx_mock.get("/model/info").respond(json={"data": []}, headers={"set-cookie": "session=abc; Path=/"})
    groups = respx_mock.get("/model_group/info").respond(json={"data": []})

    async def main() -> None:
        admin, client = lookups()
        async with client:
            await admin.catalog()
            await admin.view(View.MODEL_GROUP_INFO)
            assert len(client.cookies.jar) == 0

    run(main())
    assert "cookie" not in groups.calls.last.request.headers


@respx.mock(base_url=BASE, assert_all_called=False)
def test_a_version_look_up_that_fails_is_not_repeated_by_every_request(respx_mock: respx.MockRouter) -> None:
    """LiteLLM without its OpenAPI document (docs off, an ingress blocking it): asked once per catalog
    lifetime, not by every request of a caller spent at a level whose rule depends on the version."""
    document = respx_mock.get("/openapi.json").respond(404)
    admin, client = lookups()

    async def go() -> list[object]:
        try:
            return [await admin.release() for _ in range(5)]
        finally:
            await client.aclose()

    assert run(go()) == [None] * 5
    assert document.call_count == 1
