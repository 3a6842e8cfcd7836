"""Record what a real LiteLLM answers, in the format of ``../shared/litellm-recordings``.

The unit tests replay these answers (``tests/fake_litellm.py``), so they keep matching real bodies and
headers. Refresh them from running proxies with the integration suite::

    SIDECAR_RECORD_FIXTURES=1 .venv/bin/python -m pytest tests/integration

which writes ``tests/fixtures/litellm-<version>.json``.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import httpx

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"

PRINCIPALS = (
    "KEY_TEAM_BROKE",
    "KEY_KEY_BROKE",
    "KEY_USER_BROKE",
    "KEY_FREE_ONLY",
    "KEY_GROUP_ONLY",
    "KEY_HEALTHY",
    # Seeded where the version can express them (the harness's README): recorded where exported.
    "KEY_MEMBER_BROKE",
    "KEY_WINDOW_BROKE",
    "KEY_ORG_BROKE",
    "KEY_END_USER_CALLER",
    "END_USER_BROKE",  # KEY_END_USER_CALLER naming the spent end user in its header
)
END_USER_HEADER = "x-litellm-end-user-id"
DISCOVERY = (
    "/cursor/v1/models",
    "/v1/models",
    "/models",
    "/v1/models/paid-model",
    "/models/free-model",
    "/model/info",
    "/v1/model/info",
    "/v2/model/info",
    "/v2/model/info?page=2&size=2",
    "/model_group/info",
    "/v1/models?return_wildcard_routes=true",
)
ANTHROPIC = {"anthropic-version": "2023-06-01"}
CHATS = (("paid-model", False), ("paid-model", True), ("free-model", False), ("free-model", True))
# The other routes a fallback covers, asked for the paid model by the spent principals only: LiteLLM
# refuses those before it calls its provider, which in the harness serves chat completions alone (a call
# it cannot serve would put the model's deployment in LiteLLM's cooldown for the tests that follow).
REFUSED_ONLY = frozenset({"KEY_HEALTHY", "KEY_END_USER_CALLER", "MASTER"})
OTHER_ROUTES = (
    ("/v1/responses", {"input": "hi"}),
    ("/v1/completions", {"prompt": "hi"}),
    ("/v1/messages", {"max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}),
)
KEY_HEADERS = ("Authorization", "x-api-key")


def as_client_sends(path: str, key: str, headers: dict[str, str]) -> dict[str, str]:
    """``headers`` with ``key`` where the route's official client puts it: the anthropic client's
    ``x-api-key`` and ``anthropic-version`` on ``/v1/messages``, a bearer token elsewhere."""
    if path == "/v1/messages":
        return {**headers, "x-api-key": key, **ANTHROPIC}
    return {**headers, "Authorization": f"Bearer {key}"}


def _entry(
    version: str, principal: str, response: httpx.Response, headers: dict[str, str], body: Any = None
) -> dict[str, Any]:
    request = response.request
    target = request.url.raw_path.decode()
    try:
        parsed: Any = response.json()
    except ValueError:
        parsed = response.text
    entry = {
        "version": version,
        "principal": principal,
        "request": f"{request.method} {target}",
        "request_headers": headers,
        "status": response.status_code,
        "headers": dict(response.headers),
        "body": parsed,
    }
    if body is not None:
        entry["request_body"] = body
    return entry


# The seeded principals whose own key made the call that spent their budget, and the records of the
# levels that call was charged to.
SPENDERS = (
    "KEY_TEAM_BROKE",
    "KEY_KEY_BROKE",
    "KEY_USER_BROKE",
    "KEY_MEMBER_BROKE",
    "KEY_WINDOW_BROKE",
    "KEY_ORG_BROKE",
    "KEY_END_USER_CALLER",
)
CHARGED = {
    "/team/info?team_id=team-broke": "team_info",
    "/user/info?user_id=user-broke": "user_info",
    "/customer/info?end_user_id=end-user-broke": None,
}


def _wait_for_spend(client: httpx.Client, master_key: str, keys: dict[str, str], timeout: float = 60) -> None:
    """LiteLLM writes spend to Postgres in batches (every 1-6 s here), so right after ``seed`` its records
    may not show the seeded spend yet: wait until every one does, so the recording is of a settled state."""
    records: dict[str, str | None] = {
        f"/key/info?key={hashlib.sha256(keys[p].encode()).hexdigest()}": "info" for p in SPENDERS if p in keys
    }
    records.update(CHARGED)
    deadline = time.monotonic() + timeout
    while True:
        pending = []
        for target, field in records.items():
            answer = client.get(target, headers={"Authorization": f"Bearer {master_key}"})
            body = answer.json() if answer.status_code == 200 else {}
            if not ((body.get(field) if field else body) or {}).get("spend"):
                pending.append(target)
        if not pending:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"LiteLLM never wrote the seeded spend of {pending}")
        time.sleep(1)


def record(version: str, url: str, master_key: str, keys: dict[str, str]) -> list[dict[str, Any]]:
    entries = []
    with httpx.Client(base_url=url, timeout=60) as client:
        _wait_for_spend(client, master_key, keys)

        def ask(principal: str, key: str, target: str, extra: dict[str, str] | None = None) -> None:
            headers = {"Authorization": f"Bearer {key}", **(extra or {})}
            response = client.get(target, headers=headers)
            entries.append(_entry(version, principal, response, extra or {}))

        looked_up: set[str] = set()

        def look_up(principal: str, target: str) -> Any:
            """The admin's answer about ``principal``'s budget chain, once per target."""
            if target in looked_up:
                return None
            looked_up.add(target)
            response = client.get(target, headers={"Authorization": f"Bearer {master_key}"})
            entries.append(_entry(version, f"MASTER looking up {principal}", response, {}))
            return response.json() if response.status_code == 200 else None

        for principal in (*PRINCIPALS, "MASTER"):
            end_user = {END_USER_HEADER: keys[principal]} if principal == "END_USER_BROKE" else {}
            if principal == "MASTER":
                key = master_key
            elif principal == "END_USER_BROKE":
                key = keys.get("KEY_END_USER_CALLER", "") if principal in keys else ""
            else:
                key = keys.get(principal, "")
            if not key:
                continue  # not seeded on this version
            for target in DISCOVERY:
                ask(principal, key, target, end_user)
            ask(principal, key, "/v1/models", {**ANTHROPIC, **end_user})
            for model, stream in CHATS:
                body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
                response = client.post(
                    "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}", **end_user}
                )
                entries.append(_entry(version, principal, response, end_user, body))
            if principal not in REFUSED_ONLY:
                for path, fields in OTHER_ROUTES:
                    for stream in (False, True):
                        body = {"model": "paid-model", **fields, "stream": stream}
                        sent = as_client_sends(path, key, end_user)
                        response = client.post(path, json=body, headers=sent)
                        shown = {k: v for k, v in sent.items() if k not in KEY_HEADERS}
                        entries.append(_entry(version, principal, response, shown, body))
            if principal == "MASTER":
                continue
            if end_user:
                look_up(principal, f"/customer/info?end_user_id={keys[principal]}")
                continue
            token = hashlib.sha256(key.encode()).hexdigest()
            info = (look_up(principal, f"/key/info?key={token}") or {}).get("info") or {}
            team = None
            if info.get("team_id"):
                team = look_up(principal, f"/team/info?team_id={info['team_id']}")
            if info.get("user_id"):
                look_up(principal, f"/user/info?user_id={info['user_id']}")
            org = info.get("organization_id") or ((team or {}).get("team_info") or {}).get("organization_id")
            if org:
                look_up(principal, f"/organization/info?organization_id={org}")
        ask("MASTER", master_key, "/v2/model/info?page=1&size=100000")
    return entries


def write(version: str, entries: list[dict[str, Any]]) -> Path:
    FIXTURES.mkdir(exist_ok=True)
    path = FIXTURES / f"litellm-{version}.json"
    path.write_text(json.dumps(entries, indent=1) + "\n")
    return path
