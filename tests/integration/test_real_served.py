"""Listed = served: what discovery calls usable, LiteLLM serves that caller; what it withholds, it refuses.

For every version in the suite, every seeded spent principal and every policy, the sidecar's
``/v1/models`` is asked with the principal's own credentials (the end user in its header), and each model
it lists as usable now is then asked of LiteLLM directly, with the same credentials:

- ``free_only``: every model listed is claimed usable (``x-sidecar-budget-usable``: ``free`` or ``none``,
  and ``none`` only with an empty list);
- ``all``: every model the caller may access is listed; ``x-sidecar-budget-usable: free`` claims the
  zero-cost ones among them, ``none`` none;
- ``blocked``: LiteLLM's own answer, with no claim (no ``x-sidecar-budget-usable``), byte for byte.

Claimed usable, LiteLLM must serve it (200). Listed under ``all`` but not claimed, or withheld under
``free_only``, a zero-cost model must be refused for budget. Only **free** calls are made, so the test spends
nothing: a chat (an embedding for an embedding model) with a zero-cost model. Paid models are never asked
here (a call LiteLLM served would spend); that LiteLLM refuses them to every spent principal is asserted by
``test_real_litellm.py`` and the harness's ``smoke``. Models whose ``model_info.mode`` is ``realtime`` are
served only over a WebSocket: they are listed and compared, not asked.

The budget view's ``usable_models`` must be the same models as ``free_only`` lists: one rule, one answer.
This is the test that notices the next LiteLLM change to what a spent caller may use.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from sidecar.litellm.budget_errors import is_budget_error
from tests.integration.conftest import REPORT, LiteLLM
from tests.seeded import BROKE, SCOPE, credentials

pytestmark = pytest.mark.integration

POLICIES = ("free_only", "all", "blocked")
ASKED = {"chat": "/v1/chat/completions", "embedding": "/v1/embeddings"}


@dataclass(frozen=True)
class Model:
    name: str
    free: bool  # every deployment priced 0 per token, in and out
    mode: str  # model_info.mode: chat, embedding, realtime, ...


def catalog(litellm: LiteLLM) -> dict[str, Model]:
    """Every model of the proxy, as its admin's ``/model/info`` says: price and mode."""
    answer = httpx.get(
        litellm.url + "/model/info", headers={"Authorization": f"Bearer {litellm.master_key}"}, timeout=30
    )
    assert answer.status_code == 200, answer.text
    found: dict[str, Model] = {}
    for deployment in answer.json()["data"]:
        params, info = deployment.get("litellm_params") or {}, deployment.get("model_info") or {}
        free = params.get("input_cost_per_token") == 0 and params.get("output_cost_per_token") == 0
        name = deployment["model_name"]
        earlier = found.get(name)
        found[name] = Model(name, free and (earlier is None or earlier.free), info.get("mode") or "chat")
    return found


def ask(litellm: LiteLLM, principal: str, model: Model) -> httpx.Response:
    """A free call of ``model`` straight to LiteLLM, with ``principal``'s own credentials. A 429 of
    LiteLLM's deployment cooldown (a model another test made fail at the provider) is waited out."""
    assert model.free, f"{model.name} is not free: asking it could spend"
    path = ASKED["embedding" if model.mode == "embedding" else "chat"]
    body: dict[str, Any] = {"model": model.name}
    if model.mode == "embedding":
        body["input"] = "hi"
    else:
        body["messages"] = [{"role": "user", "content": "hi"}]
    headers = credentials(principal, litellm.keys)
    deadline = time.monotonic() + 30
    while True:
        answer = httpx.post(litellm.url + path, json=body, headers=headers, timeout=30)
        cooling = answer.status_code == 429 and not is_budget_error(429, _json(answer))
        if not cooling or time.monotonic() > deadline:
            return answer
        time.sleep(0.5)


def _json(answer: httpx.Response) -> Any:
    try:
        return answer.json()
    except ValueError:
        return None


def listed(answer: httpx.Response) -> list[str]:
    assert answer.status_code == 200, answer.text
    return [entry["id"] for entry in answer.json()["data"]]


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("principal", BROKE)
def test_every_model_listed_as_usable_is_served_and_every_one_withheld_is_refused(
    litellm: LiteLLM, principal: str, policy: str
) -> None:
    models = catalog(litellm)
    headers = credentials(principal, litellm.keys)
    answer = httpx.get(litellm.sidecar(policy) + "/v1/models", headers=headers, timeout=30)
    direct = httpx.get(litellm.url + "/v1/models", headers=headers, timeout=30)
    if policy == "blocked":  # LiteLLM's answer as it is: no claim of what is usable
        assert (answer.status_code, answer.content) == (direct.status_code, direct.content)
        assert "x-sidecar-budget-usable" not in answer.headers
        return
    assert answer.headers["x-sidecar-budget-exceeded"] == "true"
    assert answer.headers["x-sidecar-budget-scope"] == SCOPE[principal]
    usable = answer.headers["x-sidecar-budget-usable"]
    assert usable in ("free", "none")
    shown = listed(answer)
    accessible = listed(httpx.get(litellm.sidecar("all") + "/v1/models", headers=headers, timeout=30))
    if policy == "free_only":
        claimed = shown
        assert (usable == "none") is (not shown)
    else:
        assert shown == accessible
        claimed = [name for name in shown if usable == "free" and models[name].free]
    withheld = [name for name in accessible if name not in claimed and models[name].free]
    assert all(models[name].free for name in claimed), claimed  # a spent caller is never offered paid ones
    wrong = []
    for name in claimed + withheld:
        if models[name].mode == "realtime":  # a WebSocket model: listed, not asked here
            continue
        got = ask(litellm, principal, models[name])
        served = got.status_code == 200
        refused = is_budget_error(got.status_code, _json(got))
        if (name in claimed and not served) or (name in withheld and not refused):
            wrong.append(f"{name}: {'listed' if name in claimed else 'withheld'}, LiteLLM {got.status_code}")
    REPORT[f"{litellm.version} served {principal} {policy}"] = (
        f"usable {usable}: {', '.join(claimed) or 'none'}; withheld free: {', '.join(withheld) or 'none'}"
    )
    assert not wrong, "\n".join(wrong)
    view = httpx.get(litellm.sidecar(policy) + "/sidecar/v1/budget", headers=headers, timeout=30)
    assert view.status_code == 200, view.text
    if policy == "free_only":
        assert sorted(view.json()["usable_models"]) == sorted(claimed)
