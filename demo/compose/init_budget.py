"""The docker-compose demo's init step: a team whose budget is spent, through LiteLLM's admin API.

Creates team ``demo-team`` (max budget 0.01) and its key ``DEMO_KEY``, spends past the budget with one paid
chat (10 + 5 tokens at 0.001/0.002 = 0.02), then repeats the paid chat until LiteLLM refuses it with its
budget error (spend reaches the database within seconds). Idempotent. Standard library only. Exit status 0
once the key is over budget; it says whether this LiteLLM also refuses the key ``/v1/models`` (<= 1.100 do).
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request

URL = os.environ.get("LITELLM_URL", "http://litellm:4000").rstrip("/")
MASTER = os.environ["LITELLM_MASTER_KEY"]
KEY = os.environ.get("DEMO_KEY", "sk-demo-team-broke-0000000")
TIMEOUT = float(os.environ.get("INIT_TIMEOUT", "180"))


def call(method: str, path: str, key: str, body: object | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(URL + path, data=data, method=method)
    request.add_header("Authorization", f"Bearer {key}")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        try:
            return error.code, json.loads(error.read() or b"{}")
        except ValueError:
            return error.code, {}


def budget_error(status: int, body: dict) -> bool:
    error = body.get("error") if isinstance(body, dict) else None
    return status >= 400 and isinstance(error, dict) and "budget" in str(error).lower()


def main() -> int:
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            if call("GET", "/health/liveliness", MASTER)[0] == 200:
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            print("init: LiteLLM did not come up", file=sys.stderr)
            return 1
        time.sleep(2)
    call("POST", "/team/new", MASTER, {"team_id": "demo-team", "team_alias": "demo-team", "max_budget": 0.01})
    call("POST", "/key/generate", MASTER, {"key": KEY, "team_id": "demo-team", "key_alias": "demo-team-key"})
    chat = {"model": "paid-model", "messages": [{"role": "user", "content": "spend"}]}
    while not budget_error(*call("POST", "/v1/chat/completions", KEY, chat)):
        if time.monotonic() > deadline:
            print("init: the key did not go over budget in time", file=sys.stderr)
            return 1
        time.sleep(1)
    refused = budget_error(*call("GET", "/v1/models", KEY))
    print(
        f"init: {KEY} (team demo-team) is over budget; LiteLLM "
        + ("refuses it /v1/models" if refused else "still lists its models itself")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
