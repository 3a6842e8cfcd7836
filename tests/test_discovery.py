"""Discovery through the real sidecar (uvicorn on 127.0.0.1) in front of recorded real LiteLLM answers."""

from __future__ import annotations

import json
import logging
import threading

import httpx
import pytest

from tests.conftest import SidecarFactory, bearer
from tests.fake_litellm import KEYS, VERSIONS, FakeLiteLLM, Seen
from tests.seeded import ACCESS, ALL_MODELS, BROKE, FREE_MODELS, LIST_ROUTES, SCOPE, expected_models


def names(answer: httpx.Response, path: str) -> list[str]:
    return [entry[LIST_ROUTES[path]] for entry in answer.json()["data"]]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("principal", BROKE)
def test_policy_all_lists_what_the_caller_may_access(
    fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client, version: str, principal: str
) -> None:
    fake.use_version(version)
    url = sidecar(policy="all")
    for path in LIST_ROUTES:
        direct = client.get(fake.url + path, headers=bearer(principal))
        answer = client.get(url + path, headers=bearer(principal))
        assert answer.status_code == 200, path
        if direct.status_code == 200:  # this LiteLLM version lists the models itself: its answer, marked
            assert answer.content == direct.content, path
        else:  # rescued: what the caller may access
            assert names(answer, path) == ACCESS[principal], path
        assert answer.headers["x-sidecar-budget-exceeded"] == "true"
        assert answer.headers["x-sidecar-policy"] == "all"
        assert answer.headers["x-sidecar-budget-scope"] == SCOPE[principal]
        assert KEYS["MASTER"] not in answer.text


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("principal", BROKE)
def test_policy_free_only_keeps_only_zero_cost_models(
    fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client, version: str, principal: str
) -> None:
    fake.use_version(version)
    url = sidecar(policy="free_only")
    # What LiteLLM serves it now: its free models, or none where it refuses free models too (1.88.6's
    # user, the end user up to 1.88.6) - then an empty list in LiteLLM's shape, marked.
    free = expected_models(principal, "free_only", version)
    for path in LIST_ROUTES:  # refused by LiteLLM (rescued) or listed by it (filtered): the same answer
        answer = client.get(url + path, headers=bearer(principal))
        assert answer.status_code == 200
        assert answer.headers["x-sidecar-budget-exceeded"] == "true"
        assert answer.headers["x-sidecar-policy"] == "free_only"
        assert answer.headers["x-sidecar-budget-scope"] == SCOPE[principal]
        assert answer.headers["x-sidecar-budget-usable"] == ("free" if free else "none")
        assert names(answer, path) == free
    info = client.get(url + "/model/info", headers=bearer(principal)).json()
    assert all(d["litellm_params"]["input_cost_per_token"] == 0 for d in info["data"])


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", list(LIST_ROUTES))
def test_policy_blocked_returns_litellms_error_byte_for_byte(
    fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client, version: str, path: str
) -> None:
    fake.use_version(version)
    url = sidecar(policy="blocked", admin_key=None)
    direct = client.get(fake.url + path, headers=bearer("KEY_KEY_BROKE"))
    answer = client.get(url + path, headers=bearer("KEY_KEY_BROKE"))
    assert (answer.status_code, answer.content) == (direct.status_code, direct.content)
    assert answer.headers["content-type"] == direct.headers["content-type"]
    assert fake.admin_requests() == []


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", list(LIST_ROUTES))
def test_healthy_key_answers_are_identical_with_and_without_sidecar(
    fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client, version: str, path: str
) -> None:
    fake.use_version(version)
    url = sidecar()
    direct = client.get(fake.url + path, headers=bearer("KEY_HEALTHY"))
    answer = client.get(url + path, headers=bearer("KEY_HEALTHY"))
    assert (answer.status_code, answer.content) == (direct.status_code, direct.content)
    assert answer.headers.get_list("date") == direct.headers.get_list("date")
    assert answer.headers.get_list("server") == direct.headers.get_list("server")
    assert fake.admin_requests() == []


def test_v2_pages_are_recut_for_the_caller(
    fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client
) -> None:
    url = sidecar(policy="free_only")
    page = client.get(url + "/v2/model/info?page=2&size=2", headers=bearer("KEY_TEAM_BROKE")).json()
    assert [d["model_name"] for d in page["data"]] == ["free-embedding"]
    assert (page["total_count"], page["total_pages"], page["current_page"], page["size"]) == (3, 2, 2, 2)


def test_rescued_answers_are_cut_per_request_not_shared_between_them(
    fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client
) -> None:
    url = sidecar(policy="free_only")
    headers = bearer("KEY_TEAM_BROKE")
    for _ in range(2):  # the second round comes from the rendered cache
        targets = ("/v2/model/info?page=2&size=2", "/v2/model/info")  # as recorded from LiteLLM
        pages = [client.get(url + target, headers=headers).json() for target in targets]
        assert [[d["model_name"] for d in page["data"]] for page in pages] == [FREE_MODELS[2:], FREE_MODELS]
        free_only = client.get(url + "/v1/models", headers=bearer("KEY_FREE_ONLY")).json()
        assert [m["id"] for m in free_only["data"]] == ["free-model"]


def test_bad_v2_page_fails_closed_with_the_budget_error(
    fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client
) -> None:
    fake.answer(
        "GET",
        "/v2/model/info?page=0",
        429,
        {"error": {"message": "Max budget limit reached.", "type": "None"}},
    )
    url = sidecar()
    answer = client.get(url + "/v2/model/info?page=0", headers=bearer("KEY_TEAM_BROKE"))
    assert answer.status_code == 429


def test_anthropic_list_shape_is_kept(
    fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client
) -> None:
    fake.use_version("1.106.2")  # the version that answers in Anthropic's shape
    url = sidecar(policy="free_only")
    headers = {**bearer("KEY_KEY_BROKE"), "anthropic-version": "2023-06-01"}
    answer = client.get(url + "/v1/models", headers=headers).json()
    assert [m["id"] for m in answer["data"]] == FREE_MODELS
    assert answer["data"][0]["type"] == "model" and "display_name" in answer["data"][0]
    assert (answer["has_more"], answer["first_id"], answer["last_id"]) == (
        False,
        "free-model",
        "free-embedding",
    )


BUDGET_429 = {
    "error": {"message": "Budget has been exceeded! Team=t", "type": "budget_exceeded", "code": "429"}
}


@pytest.mark.parametrize("version", VERSIONS)
def test_model_info_from_admin_view_carries_no_secrets_or_admin_fields(
    fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client, version: str
) -> None:
    fake.use_version(version)
    model_info = fake.recorded_body("MASTER", "GET /model/info")
    model_info["data"][0]["litellm_params"]["api_key"] = "sk-provider-secret"
    model_info["data"][0]["litellm_params"]["aws_secret_access_key"] = "aws-secret"
    model_info["data"][0]["model_info"]["access_via_team_ids"] = ["team-secret-id"]

    def by_caller(seen: Seen) -> tuple[int, list[tuple[str, str]], bytes]:
        if seen.header("authorization") == f"Bearer {KEYS['MASTER']}":
            return 200, [("content-type", "application/json")], json.dumps(model_info).encode()
        return 429, [("content-type", "application/json")], json.dumps(BUDGET_429).encode()

    fake.overrides[("GET", "/model/info")] = by_caller
    answer = client.get(sidecar() + "/model/info", headers=bearer("KEY_KEY_BROKE"))
    assert answer.headers["x-sidecar-budget-exceeded"] == "true"
    assert [d["model_name"] for d in answer.json()["data"]] == ALL_MODELS
    assert "sk-provider-secret" not in answer.text and "aws-secret" not in answer.text
    assert "team-secret-id" not in answer.text and "access_via_team_ids" not in answer.text


class TestRetrieve:
    def test_listed_model_is_returned(self, sidecar: SidecarFactory, client: httpx.Client) -> None:
        url = sidecar()
        answer = client.get(url + "/v1/models/free-model", headers=bearer("KEY_FREE_ONLY"))
        assert answer.status_code == 200
        assert answer.json() == {
            "id": "free-model",
            "object": "model",
            "created": 1677610602,
            "owned_by": "openai",
        }

    def test_unlisted_model_is_an_openai_404(self, sidecar: SidecarFactory, client: httpx.Client) -> None:
        url = sidecar()
        answer = client.get(url + "/models/paid-model", headers=bearer("KEY_FREE_ONLY"))
        assert answer.status_code == 404
        assert answer.json()["error"]["code"] == "model_not_found"
        assert answer.json()["error"]["type"] == "invalid_request_error"

    def test_healthy_key_retrieves_what_litellm_refuses_it(
        self, fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client
    ) -> None:
        direct = client.get(fake.url + "/v1/models/paid-model", headers=bearer("KEY_HEALTHY"))
        assert direct.status_code == 401  # "Only proxy admin can be used ..."
        answer = client.get(sidecar() + "/v1/models/paid-model", headers=bearer("KEY_HEALTHY"))
        assert answer.status_code == 200 and answer.json()["id"] == "paid-model"
        assert fake.admin_requests() == []

    def test_ids_with_slashes(self, fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client) -> None:
        listed = {
            "data": [{"id": "openai/gpt-4o", "object": "model", "created": 1, "owned_by": "openai"}],
            "object": "list",
        }
        fake.answer("GET", "/v1/models", 200, listed)
        answer = client.get(sidecar() + "/v1/models/openai/gpt-4o", headers=bearer("KEY_HEALTHY"))
        assert answer.json()["id"] == "openai/gpt-4o"

    def test_can_be_turned_off(
        self, fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client
    ) -> None:
        url = sidecar(retrieve_from_list=False)
        answer = client.get(url + "/v1/models/paid-model", headers=bearer("KEY_HEALTHY"))
        assert answer.status_code == 401  # LiteLLM's own answer, passed through
        rescued = client.get(url + "/models/free-model", headers=bearer("KEY_TEAM_BROKE"))
        assert rescued.status_code == 200 and rescued.json()["id"] == "free-model"

    def test_other_errors_of_the_list_pass_through(
        self, fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client
    ) -> None:
        fake.answer("GET", "/v1/models", 401, {"error": {"message": "Invalid key", "type": "auth_error"}})
        answer = client.get(sidecar() + "/v1/models/free-model", headers=bearer("KEY_HEALTHY"))
        assert answer.status_code == 401 and answer.json()["error"]["message"] == "Invalid key"


def test_head_answers_like_get_without_a_body(sidecar: SidecarFactory, client: httpx.Client) -> None:
    url = sidecar()
    get = client.get(url + "/v1/models", headers=bearer("KEY_TEAM_BROKE"))
    head = client.head(url + "/v1/models", headers=bearer("KEY_TEAM_BROKE"))
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(get.content))
    assert head.headers["x-sidecar-budget-exceeded"] == "true"


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (
            401,
            {
                "error": {
                    "message": "Authentication Error, Invalid proxy server token passed.",
                    "type": "auth_error",
                }
            },
        ),
        (403, {"error": {"message": "key not allowed to access model", "type": "key_model_access_denied"}}),
        (500, {"error": {"message": "Budget has been exceeded!", "type": "budget_exceeded"}}),
        (429, b"Budget has been exceeded! (but not JSON)"),
        (503, b"<html>upstream down</html>"),
    ],
)
def test_other_errors_pass_through_unchanged(
    fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client, status: int, body: object
) -> None:
    fake.answer("GET", "/v1/models", status, body, [("content-type", "text/plain"), ("x-upstream", "1")])
    answer = client.get(sidecar() + "/v1/models", headers=bearer("KEY_TEAM_BROKE"))
    direct = client.get(fake.url + "/v1/models", headers=bearer("KEY_TEAM_BROKE"))
    assert (answer.status_code, answer.content, answer.headers["x-upstream"]) == (status, direct.content, "1")
    assert not any(name.startswith("x-sidecar") for name in answer.headers)


class TestFailClosed:
    """When the caller's scope cannot be established, the budget error goes back and the reason is logged."""

    def _refused(self, client: httpx.Client, url: str, headers: dict[str, str]) -> httpx.Response:
        answer = client.get(url + "/v1/models", headers=headers)
        assert answer.status_code == 429
        assert answer.json()["error"]["type"] == "budget_exceeded"
        assert "x-sidecar-budget-exceeded" not in answer.headers
        return answer

    @pytest.mark.parametrize(
        ("target", "status", "body", "reason"),
        [
            ("/key/info?key=*", 500, {"error": "db down"}, "/key/info answered 500"),
            (
                "/key/info?key=*",
                200,
                {"info": {"models": ["all-org-models"]}},
                "unsupported special model name",
            ),
            ("/team/info?team_id=team-broke", 403, {"error": "forbidden"}, "/team/info answered 403"),
            ("/model/info", 401, {"error": "bad admin key"}, "/model/info answered 401"),
            ("/model/info", 200, b"not json", "not JSON"),
        ],
    )
    def test_failed_lookups(
        self,
        fake: FakeLiteLLM,
        sidecar: SidecarFactory,
        client: httpx.Client,
        caplog: pytest.LogCaptureFixture,
        target: str,
        status: int,
        body: object,
        reason: str,
    ) -> None:
        if target == "/key/info?key=*":
            from sidecar.litellm.credentials import key_hash

            target = f"/key/info?key={key_hash(KEYS['KEY_TEAM_BROKE'])}"
        fake.answer("GET", target, status, body)
        with caplog.at_level(logging.INFO):
            self._refused(client, sidecar(), bearer("KEY_TEAM_BROKE"))
        assert any(
            reason in r.getMessage() or reason in str(getattr(r, "fields", "")) for r in caplog.records
        )

    def test_jwt_callers(self, fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client) -> None:
        jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1In0.c2ln"
        fake.answer("GET", "/v1/models", 429, BUDGET_429)
        self._refused(client, sidecar(), {"Authorization": f"Bearer {jwt}"})
        assert fake.admin_requests() == []

    def test_no_credential(self, fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client) -> None:
        fake.answer("GET", "/v1/models", 429, BUDGET_429)
        self._refused(client, sidecar(), {})

    def test_admin_timeout(self, fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client) -> None:
        import time

        def slow(_seen: object) -> tuple[int, list[tuple[str, str]], bytes]:
            time.sleep(1.0)  # blocks the fake's event loop: the admin look-up times out
            return 200, [], b"{}"

        from sidecar.litellm.credentials import key_hash

        fake.overrides[("GET", f"/key/info?key={key_hash(KEYS['KEY_TEAM_BROKE'])}")] = slow
        self._refused(client, sidecar(admin_timeout=0.3), bearer("KEY_TEAM_BROKE"))


def test_concurrent_rescues_share_one_upstream_lookup(
    fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client
) -> None:
    url = sidecar()
    fake.delay = 0.3  # every answer of the fake takes 0.3 s: the 20 requests overlap
    results: list[int] = []

    def ask() -> None:
        with httpx.Client(timeout=10) as own:
            results.append(own.get(url + "/v1/models", headers=bearer("KEY_FREE_ONLY")).status_code)

    threads = [threading.Thread(target=ask) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [200] * 20
    from sidecar.litellm.credentials import key_hash

    token = key_hash(KEYS["KEY_FREE_ONLY"])  # a late look-up of an earlier test's sidecar is not ours
    ours = [s for s in fake.admin_requests() if "?key=" not in s.target or s.target.endswith(token)]
    admin_paths = [s.target.split("?")[0] for s in ours]
    assert sorted(admin_paths) == ["/key/info", "/model/info", "/team/info", "/v1/models"]


def test_warm_caches_cost_no_extra_round_trip(
    fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client
) -> None:
    url = sidecar()
    client.get(url + "/v1/models", headers=bearer("KEY_TEAM_BROKE"))
    before = len(fake.seen)
    answer = client.get(url + "/v1/models", headers=bearer("KEY_TEAM_BROKE"))
    assert answer.headers["x-sidecar-budget-exceeded"] == "true"
    assert len(fake.seen) - before == 1  # only the caller's own request


def test_admin_credential_only_goes_to_fixed_lookups_and_raw_keys_never_in_urls(
    fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    url = sidecar(log_level="debug")
    with caplog.at_level(logging.DEBUG):
        for principal in [*BROKE, "KEY_HEALTHY"]:
            for path in [*LIST_ROUTES, "/v1/models/free-model", "/v2/model/info?page=2&size=1"]:
                answer = client.get(url + path, headers=bearer(principal))
                assert KEYS["MASTER"] not in answer.text
                assert KEYS["MASTER"] not in json.dumps(dict(answer.headers))
            client.post(url + "/v1/chat/completions", headers=bearer(principal), json={"model": "free-model"})
    allowed = {
        "/key/info",
        "/team/info",
        "/user/info",
        "/customer/info",
        "/organization/info",
        "/model/info",
        "/v1/models",
        "/v2/model/info",
        "/model_group/info",
        "/openapi.json",  # LiteLLM's version, where what a spent caller may use depends on it
    }
    admin = fake.admin_requests()
    assert admin and {s.target.split("?")[0] for s in admin} <= allowed
    assert all(s.method == "GET" for s in admin)
    for seen in fake.seen:
        assert not any(key in seen.target for key in KEYS.values())
        if seen.target.startswith("/v1/chat"):
            assert seen.header("authorization") != f"Bearer {KEYS['MASTER']}"
    logged = caplog.text + json.dumps([getattr(r, "fields", None) for r in caplog.records], default=str)
    assert not any(key in logged for key in KEYS.values())


def test_proxy_environment_variables_are_ignored(
    fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # nothing listens there
    url = sidecar()
    assert (
        client.get(url + "/v1/models", headers=bearer("KEY_TEAM_BROKE")).headers["x-sidecar-budget-exceeded"]
        == "true"
    )
    assert client.post(url + "/echo", content=b"x").status_code == 200
