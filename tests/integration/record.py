"""Record what a real LiteLLM answers, in the format of ``../shared/litellm-recordings``.

The unit tests replay these answers (``tests/fake_litellm.py``), so they keep matching real bodies and
headers. Refresh them from running proxies with the integration suite::

    SIDECAR_RECORD_FIXTURES=1 .venv/bin/python -m pytest tests/integration

which writes ``tests/fixtures/litellm-<version>.json``.
"""

from __future__ import annotations

import hashlib
import json
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
)
DISCOVERY = (
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


def record(version: str, url: str, master_key: str, keys: dict[str, str]) -> list[dict[str, Any]]:
    entries = []
    with httpx.Client(base_url=url, timeout=60) as client:

        def ask(principal: str, key: str, target: str, extra: dict[str, str] | None = None) -> None:
            headers = {"Authorization": f"Bearer {key}", **(extra or {})}
            response = client.get(target, headers=headers)
            entries.append(_entry(version, principal, response, extra or {}))

        for principal in (*PRINCIPALS, "MASTER"):
            key = master_key if principal == "MASTER" else keys[principal]
            for target in DISCOVERY:
                ask(principal, key, target)
            ask(principal, key, "/v1/models", ANTHROPIC)
            for model, stream in CHATS:
                body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
                response = client.post(
                    "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
                )
                entries.append(_entry(version, principal, response, {}, body))
            if principal != "MASTER":
                token = hashlib.sha256(key.encode()).hexdigest()
                ask(f"MASTER looking up {principal}", master_key, f"/key/info?key={token}")
        ask("MASTER", master_key, "/team/info?team_id=team-broke")
        ask("MASTER", master_key, "/user/info?user_id=user-broke")
        ask("MASTER", master_key, "/v2/model/info?page=1&size=100000")
    return entries


def write(version: str, entries: list[dict[str, Any]]) -> Path:
    FIXTURES.mkdir(exist_ok=True)
    path = FIXTURES / f"litellm-{version}.json"
    path.write_text(json.dumps(entries, indent=1) + "\n")
    return path
