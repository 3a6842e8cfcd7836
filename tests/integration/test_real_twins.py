"""Each spent principal against a twin within budget, on real LiteLLM 1.83.3 to 1.110.2 (issue 25, item 5).

For every seeded spent principal a **twin** is made through LiteLLM's admin API: the same kind of caller
(team key, personal key of a user, key of a team member, key of a team in an organisation, key naming an
end user) with the same model lists on key, team and user (and the same access groups), but whose own
budgets are not spent. LiteLLM's direct answer to the twin is what the spent principal may see: under
``all`` the sidecar must answer the spent principal with the same models (in LiteLLM's order) and, per
entry, the same fields (``model_info`` may lack only the admin-only ``direct_access`` and
``access_via_team_ids``); under ``free_only`` with exactly the twin's free models. That holds whether
LiteLLM refused the spent principal (the sidecar rescues) or served it (1.109 and later, some routes and
levels before: the sidecar marks or filters LiteLLM's own answer).

A model the sidecar shows but the twin does not get is a leak and fails the test. A model the twin gets but
the sidecar leaves out is allowed (narrower) and reported in the summary, as is every route LiteLLM does
not answer the twin. ``/v1/models/{id}``, which LiteLLM refuses to most keys (401), is compared with the
twin's own ``/v1/models`` entry there, as the sidecar answers it from the list.

Planted secrets are proven against the allowlist in ``tests/test_catalog.py`` only: the harness's LiteLLM
refuses ``/model/new`` (its config has no ``store_model_in_db``: 500 "Set `'STORE_MODEL_IN_DB='True'` in
your env to enable this feature." on every version), so no model with planted values can be added here.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.conftest import REPORT, LiteLLM
from tests.seeded import BEYOND_CHAT as MODELS
from tests.seeded import BROKE, END_USER_HEADER, credentials, seeded

pytestmark = pytest.mark.integration

FREE_MODEL, PAID_MODEL = "free-model", "paid-model"
RETRIEVE = {f"/v1/models/{FREE_MODEL}": FREE_MODEL, f"/v1/models/{PAID_MODEL}": PAID_MODEL}
# Each list route, and the field that names the model in its entries.
LISTS = {
    "/v1/models": "id",
    "/models": "id",
    "/model/info": "model_name",
    "/v1/model/info": "model_name",
    "/v2/model/info": "model_name",
    "/model_group/info": "model_group",
    "/cursor/v1/models": "id",
}
ROUTES = [*LISTS, *RETRIEVE]
DEPLOYMENT_ROUTES = ("/model/info", "/v1/model/info", "/v2/model/info")
# model_info fields LiteLLM shows only the admin (research-25 §4.2); an answer built from the admin's view
# may leave them out.
ADMIN_ONLY_INFO = {"direct_access", "access_via_team_ids"}
# LiteLLM pages /v2/model/info over every deployment whatever the key may access, on every version
# (``model_info_v2``: ``all_models = copy.deepcopy(llm_router.model_list)``, proxy_server.py:10185 on
# 1.83.3, :11818 on 1.88.6, :16128 on 1.106.2; key access only with ``user_models_only`` or
# ``include_team_models``): under ``free_only`` the twin's answer is cut to the twin's /v1/models first.


class TwinMaker:
    """Makes, through the admin API, within-budget twins of the seeded principals; deletes them at the end.
    Names carry a per-session id, so a second session on the same database makes its own."""

    def __init__(self, litellm: LiteLLM) -> None:
        self.litellm = litellm
        self.admin = httpx.Client(
            base_url=litellm.url, headers={"Authorization": f"Bearer {litellm.master_key}"}, timeout=60
        )
        self.tag = f"twin-{uuid.uuid4().hex[:8]}"
        self.made: dict[str, list[str]] = {"keys": [], "users": [], "teams": [], "orgs": [], "customers": []}
        self._teams: dict[str, str] = {}
        self._orgs: dict[str, str] = {}

    def _get(self, path: str, **params: str) -> Any:
        answer = self.admin.get(path, params=params)
        assert answer.status_code == 200, (path, params, answer.text)
        return answer.json()

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        answer = self.admin.post(path, json=body)
        assert answer.status_code == 200, (path, body, answer.text)
        return answer.json()

    def twin(self, principal: str) -> dict[str, str]:
        """The headers the twin of ``principal`` calls with."""
        spent = credentials(principal, self.litellm.keys)
        key = spent["Authorization"].removeprefix("Bearer ")
        info = self._get("/key/info", key=key)["info"]
        name = f"{self.tag}-{principal.lower().replace('_', '-')}"
        body: dict[str, Any] = {"key": f"sk-{name}", "key_alias": name, "models": info.get("models") or []}
        if info.get("access_group_ids"):
            body["access_group_ids"] = info["access_group_ids"]
        team_id = info.get("team_id")
        if team_id is not None:
            body["team_id"] = self._team(team_id)
        if info.get("user_id") is not None:
            body["user_id"] = self._user(info["user_id"], name, team_id, body.get("team_id"))
        assert not info.get("project_id"), "a key in a project: its twin would need one"
        self._post("/key/generate", body)
        self.made["keys"].append(body["key"])
        headers = {"Authorization": f"Bearer {body['key']}"}
        if END_USER_HEADER in spent:
            headers[END_USER_HEADER] = self._customer(spent[END_USER_HEADER], name)
        return headers

    def _team(self, team_id: str) -> str:
        """A team with ``team_id``'s models and access groups, in a twin of its organisation, no budget."""
        if team_id in self._teams:
            return self._teams[team_id]
        info = self._get("/team/info", team_id=team_id)["team_info"]
        twin = f"{self.tag}-{team_id}"
        body: dict[str, Any] = {"team_id": twin, "team_alias": twin, "models": info.get("models") or []}
        if info.get("access_group_ids"):
            body["access_group_ids"] = info["access_group_ids"]
        if info.get("organization_id"):
            body["organization_id"] = self._org(info["organization_id"])
        self._post("/team/new", body)
        self.made["teams"].append(twin)
        self._teams[team_id] = twin
        return twin

    def _org(self, org_id: str) -> str:
        if org_id in self._orgs:
            return self._orgs[org_id]
        info = self._get("/organization/info", organization_id=org_id)
        twin = f"{self.tag}-{org_id}"
        body = {"organization_id": twin, "organization_alias": twin, "models": info.get("models") or []}
        self._post("/organization/new", body)
        self.made["orgs"].append(twin)
        self._orgs[org_id] = twin
        return twin

    def _user(self, user_id: str, name: str, team_id: str | None, twin_team: str | None) -> str:
        """A user with ``user_id``'s models and role, no budget; a member of ``twin_team`` (no member budget)
        where ``user_id`` is one of ``team_id``."""
        answer = self._get("/user/info", user_id=user_id)
        info = answer.get("user_info") or {}
        twin = f"{name}-user"
        body: dict[str, Any] = {"user_id": twin, "models": info.get("models") or [], "auto_create_key": False}
        if info.get("user_role"):
            body["user_role"] = info["user_role"]
        self._post("/user/new", body)
        self.made["users"].append(twin)
        if twin_team is not None:
            memberships = self._get("/team/info", team_id=str(team_id)).get("team_memberships") or []
            for membership in memberships:
                budget = (membership or {}).get("litellm_budget_table") or {}
                assert not budget.get("allowed_models"), "a member's allowed_models: its twin would need them"
            member = {"role": "user", "user_id": twin}
            self._post("/team/member_add", {"team_id": twin_team, "member": member})
        return twin

    def _customer(self, end_user: str, name: str) -> str:
        info = self._get("/customer/info", end_user_id=end_user)
        twin = f"{name}-end-user"
        body: dict[str, Any] = {"user_id": twin}
        if info.get("models"):
            body["models"] = info["models"]
        self._post("/customer/new", body)
        self.made["customers"].append(twin)
        return twin

    def delete(self) -> None:
        """Best effort: the instance is dropped at the end of the session anyway."""
        for path, field, kind in (
            ("/key/delete", "keys", "keys"),
            ("/user/delete", "user_ids", "users"),
            ("/team/delete", "team_ids", "teams"),
            ("/organization/delete", "organization_ids", "orgs"),
            ("/customer/delete", "user_ids", "customers"),
        ):
            if self.made[kind]:
                self.admin.post(path, json={field: self.made[kind]})
        self.admin.close()


class Twin:
    """A twin's headers, and LiteLLM's direct answers to it (asked once, for both policies)."""

    def __init__(self, litellm: LiteLLM, headers: dict[str, str]) -> None:
        self.litellm = litellm
        self.headers = headers
        self._answers: dict[str, httpx.Response] = {}

    def direct(self, route: str) -> httpx.Response:
        if route not in self._answers:
            self._answers[route] = _get(self.litellm.url + route, self.headers)
        return self._answers[route]


@pytest.fixture(scope="session")
def twins(litellm: LiteLLM) -> Iterator[dict[str, Twin]]:
    """The twin per seeded spent principal of this LiteLLM, made once per session."""
    maker = TwinMaker(litellm)
    try:
        yield {p: Twin(litellm, maker.twin(p)) for p in BROKE if seeded(p, litellm.version)}
    finally:
        maker.delete()


def _get(url: str, headers: dict[str, str]) -> httpx.Response:
    return httpx.get(url, headers=headers, timeout=30)


def _params_shape(value: Any) -> Any:
    """The field names of ``value``, recursively (a dict's values reduced the same way)."""
    if isinstance(value, dict):
        return {k: _params_shape(v) for k, v in value.items()}
    return None


def _field_differences(route: str, ours: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
    """How the sidecar's entry differs in its fields from LiteLLM's entry for the twin."""
    differences = []
    if set(ours) != set(theirs):
        differences.append(f"fields {sorted(set(ours) ^ set(theirs))}")
    if route in DEPLOYMENT_ROUTES:
        if _params_shape(ours.get("litellm_params")) != _params_shape(theirs.get("litellm_params")):
            differences.append(
                f"litellm_params {_params_shape(ours.get('litellm_params'))} != "
                f"{_params_shape(theirs.get('litellm_params'))}"
            )
        mine, twin = set(ours.get("model_info") or {}), set(theirs.get("model_info") or {})
        if mine - twin or (twin - mine) - ADMIN_ONLY_INFO:
            differences.append(f"model_info extra {sorted(mine - twin)} missing {sorted(twin - mine)}")
    return differences


def _compare_list(
    route: str, answer: httpx.Response, direct: httpx.Response, keep: set[str] | None
) -> tuple[str, list[str]]:
    """(outcome, failures) of the sidecar's list answer against the twin's, the twin's cut to ``keep``."""
    field = LISTS[route]
    ours = {e[field]: e for e in answer.json()["data"]}
    mine = [e[field] for e in answer.json()["data"]]
    theirs_by_name = {e[field]: e for e in direct.json()["data"]}
    expected = [e[field] for e in direct.json()["data"] if keep is None or e[field] in keep]
    wider = [m for m in mine if m not in expected]
    narrower = [m for m in expected if m not in mine]
    failures = []
    if answer.status_code != 200:
        failures.append(f"{route}: sidecar answered {answer.status_code}")
    if wider:
        failures.append(f"{route}: models the twin does not get: {wider}")
    both = [m for m in mine if m in expected]
    if both != [m for m in expected if m in mine]:
        failures.append(f"{route}: order {mine} != twin's {expected}")
    if set(answer.json()) != set(direct.json()):
        failures.append(f"{route}: body fields {sorted(set(answer.json()) ^ set(direct.json()))}")
    for name in both:
        for difference in _field_differences(route, ours[name], theirs_by_name[name]):
            failures.append(f"{route} {name}: {difference}")
    outcome = "wider" if wider else "narrower" if narrower else "equal"
    detail = f" +{wider}" if wider else f" -{narrower}" if narrower else ""
    return outcome + detail, failures


def _compare_retrieve(
    route: str, answer: httpx.Response, direct: httpx.Response, listed: list[dict[str, Any]], free: bool
) -> tuple[str, list[str]]:
    """The sidecar's ``/v1/models/{id}`` against LiteLLM's answer to the twin, or where LiteLLM refuses the
    twin that route (401 to keys without a user), against the twin's own list."""
    model = RETRIEVE[route]
    if direct.status_code == 200:
        baseline, expected = "", direct.json()
    else:
        entries = [e for e in listed if e["id"] == model]
        baseline, expected = f" (twin {direct.status_code}: its list)", entries[0] if entries else None
    if expected is not None and free and model not in MODELS.free:
        expected = None
    failures = []
    if expected is None:
        if answer.status_code == 200:
            failures.append(f"{route}: the sidecar shows {model}, the twin does not get it")
            return "wider" + baseline, failures
        if answer.status_code != 404:
            failures.append(f"{route}: sidecar answered {answer.status_code}, not 404")
        return "equal" + baseline, failures
    if answer.status_code != 200:
        return "narrower" + baseline, failures
    if answer.json().get("id") != model or set(answer.json()) != set(expected):
        failures.append(f"{route}: {answer.json()} != twin's {expected}")
    return "equal" + baseline, failures


@pytest.mark.parametrize("policy", ["all", "free_only"])
@pytest.mark.parametrize("principal", BROKE)
def test_a_spent_principal_sees_what_its_twin_within_budget_sees(
    litellm: LiteLLM, twins: dict[str, Twin], principal: str, policy: str
) -> None:
    spent, twin = credentials(principal, litellm.keys), twins[principal]
    url = litellm.sidecar(policy)
    free = policy == "free_only"
    listed = twin.direct("/v1/models")
    assert listed.status_code == 200, listed.text
    twin_ids = {e["id"] for e in listed.json()["data"]}
    outcomes: dict[str, str] = {}
    failures: list[str] = []
    for route in ROUTES:
        direct = twin.direct(route)
        answer = _get(url + route, spent)
        if answer.headers.get("x-sidecar-budget-exceeded") != "true":
            failures.append(f"{route}: not marked as over budget ({answer.status_code})")
        if route in RETRIEVE:
            outcome, found = _compare_retrieve(route, answer, direct, listed.json()["data"], free)
        elif direct.status_code != 200:
            outcome, found = f"n/a (twin {direct.status_code})", []
        else:
            keep = None
            if free:
                keep = set(MODELS.free)
                if route == "/v2/model/info":
                    keep &= twin_ids
            outcome, found = _compare_list(route, answer, direct, keep)
        outcomes[route] = outcome
        failures += found
    unequal = {route: o for route, o in outcomes.items() if not o.startswith("equal")}
    REPORT[f"{litellm.version} twin {principal} {policy}"] = (
        ", ".join(f"{route} {o}" for route, o in unequal.items()) or f"equal on all {len(outcomes)} routes"
    )
    assert not failures, "\n".join(failures)
