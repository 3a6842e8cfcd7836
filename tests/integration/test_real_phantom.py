"""Phantom budgets on real LiteLLM: ``../shared/litellm-upstream phantom`` lowers a spent key's recorded spend
below its budget while LiteLLM's own counter keeps refusing it (LiteLLM #27639, #27735). The sidecar must
say so on every refusal - chat, streamed chat, discovery - without changing LiteLLM's answer, and say
``spent`` again once LiteLLM's records agree with its refusal.

This module runs after ``test_real_litellm.py`` within each version (pytest keeps module order inside a
session parameter) and puts the key back as it was: the other tests see the seeded state.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from sidecar.litellm.budget_errors import is_budget_error
from tests.integration.conftest import REPORT, LiteLLM, _exports
from tests.seeded import BEYOND_CHAT as MODELS

pytestmark = pytest.mark.integration

PRINCIPAL = "KEY_KEY_BROKE"
PAID = {"model": "paid-model", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def phantom(litellm: LiteLLM) -> Iterator[dict[str, str]]:
    """KEY_KEY_BROKE as a phantom: refused by LiteLLM, its recorded spend half its budget."""
    made = litellm.harness("phantom", "--principal", PRINCIPAL, "--hold", "3")
    assert made.returncode == 0, made.stderr[-2000:]
    exports = _exports(made.stdout)
    assert float(exports["PHANTOM_DB_SPEND"]) < float(exports["PHANTOM_MAX_BUDGET"])
    yield exports
    # LiteLLM heals as far as the sidecar can tell: its records show the spend its counter enforces.
    restore(litellm, exports)


def restore(litellm: LiteLLM, exports: dict[str, str]) -> None:
    admin = {"Authorization": f"Bearer {litellm.master_key}"}
    spend = float(exports["PHANTOM_PREVIOUS_DB_SPEND"])
    update = {"key": exports["PHANTOM_KEY"], "spend": spend}
    answer = httpx.post(litellm.url + "/key/update", json=update, headers=admin, timeout=30)
    assert answer.status_code == 200, answer.text
    info = httpx.get(litellm.url + exports["PHANTOM_INFO_PATH"], headers=admin, timeout=30).json()
    assert info["info"]["spend"] == pytest.approx(spend)


def caller(exports: dict[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {exports['PHANTOM_KEY']}"}


def refusals(litellm: LiteLLM, url: str) -> list[dict[str, Any]]:
    return [e for e in litellm.sidecar_log(url) if e.get("event") == "budget_refusal"]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_a_phantom_refusal_passes_through_unchanged_and_marked(
    litellm: LiteLLM, phantom: dict[str, str], stream: bool
) -> None:
    url = litellm.sidecar("free_only", phantom_after="0")
    payload = {**PAID, "stream": stream}
    direct = httpx.post(
        litellm.url + "/v1/chat/completions", json=payload, headers=caller(phantom), timeout=30
    )
    assert is_budget_error(direct.status_code, direct.json())  # LiteLLM still refuses it
    via = httpx.post(url + "/v1/chat/completions", json=payload, headers=caller(phantom), timeout=30)
    assert (via.status_code, via.content) == (direct.status_code, direct.content)
    assert via.status_code == int(phantom["PHANTOM_ERROR_STATUS"])
    assert via.headers["x-sidecar-budget-phantom"] == "true"
    logged = refusals(litellm, url)[-1]
    assert (logged["verdict"], logged["scope"]) == ("phantom", "key")
    assert logged["recorded"] == pytest.approx(float(phantom["PHANTOM_DB_SPEND"]))
    assert logged["max_budget"] == pytest.approx(float(phantom["PHANTOM_MAX_BUDGET"]))
    assert logged["enforced"] == pytest.approx(float(phantom["PHANTOM_ENFORCED_SPEND"]))
    assert phantom["PHANTOM_KEY"] not in litellm.sidecar_log_text(url)


def test_discovery_follows_the_refusal_and_says_it_is_a_phantom(
    litellm: LiteLLM, phantom: dict[str, str]
) -> None:
    url = litellm.sidecar("free_only", phantom_after="0")
    answer = httpx.get(url + "/v1/models", headers=caller(phantom), timeout=30)
    assert answer.status_code == 200
    assert [m["id"] for m in answer.json()["data"]] == MODELS.free
    assert answer.headers["x-sidecar-budget-phantom"] == "true"
    assert answer.headers["x-sidecar-budget-scope"] == "key"
    everything = litellm.sidecar("all", phantom_after="0")
    marked = httpx.get(everything + "/v1/models", headers=caller(phantom), timeout=30)
    assert len(marked.json()["data"]) == len(MODELS.all)
    assert marked.headers["x-sidecar-budget-phantom"] == "true"


def test_the_callers_budget_view_shows_the_phantom(litellm: LiteLLM, phantom: dict[str, str]) -> None:
    url = litellm.sidecar("free_only", phantom_after="0")
    answer = httpx.get(url + "/sidecar/v1/budget", headers=caller(phantom), timeout=30)
    assert answer.status_code == 200, answer.text
    view = answer.json()
    assert view["verdict"] == "phantom"
    assert view["refused"]["enforced"] == pytest.approx(float(phantom["PHANTOM_ENFORCED_SPEND"]))
    (key,) = [level for level in view["levels"] if level["blocking"]]
    assert key["scope"] == "key"
    assert key["spend"] == pytest.approx(float(phantom["PHANTOM_DB_SPEND"]))
    assert key["max_budget"] == pytest.approx(float(phantom["PHANTOM_MAX_BUDGET"]))
    assert key["remaining"] == pytest.approx(key["max_budget"] - key["spend"])
    assert view["usable_models"] == MODELS.free


def test_the_doctor_calls_it_a_phantom_and_names_litellms_counter(
    litellm: LiteLLM, phantom: dict[str, str]
) -> None:
    code, out, err = litellm.doctor(phantom["PHANTOM_KEY"], "--json", "--settle", "1")
    assert phantom["PHANTOM_KEY"] not in out + err
    found = json.loads(out)
    REPORT[f"{litellm.version} doctor on a phantom"] = f"{found['verdict']} (exit {code})"
    assert (code, found["verdict"]) == (1, "phantom")
    assert found["refused"]["status"] == int(phantom["PHANTOM_ERROR_STATUS"])
    assert found["refused"]["message"] == phantom["PHANTOM_ERROR_MESSAGE"]
    assert found["refused"]["enforced"] == pytest.approx(float(phantom["PHANTOM_ENFORCED_SPEND"]))
    (key,) = [level for level in found["levels"] if level["blocking"]]
    assert key["scope"] == "key"
    assert key["spend"] == pytest.approx(float(phantom["PHANTOM_DB_SPEND"]))
    assert key["max_budget"] == pytest.approx(float(phantom["PHANTOM_MAX_BUDGET"]))
    assert found["policies"]["free_only"] == MODELS.free
    # The counter it names is the one the harness left ahead of the records.
    assert repr(phantom["PHANTOM_COUNTER_KEY"]) in "\n".join(found["advice"])
    code, table, _ = litellm.doctor(phantom["PHANTOM_KEY"], "--settle", "1")
    assert code == 1
    figures = [float(phantom[f"PHANTOM_{name}"]) for name in ("ENFORCED_SPEND", "DB_SPEND", "MAX_BUDGET")]
    said = "verdict: PHANTOM - LiteLLM enforces {:g} at the key level, its records say {:g} of {:g}"
    assert said.format(*figures) in " ".join(table.split())


def test_the_doctors_advice_clears_the_phantom_where_litellm_has_a_route_for_it(
    litellm: LiteLLM, phantom: dict[str, str]
) -> None:
    _, out, _ = litellm.doctor(phantom["PHANTOM_KEY"], "--json", "--settle", "1")
    advice = "\n".join(json.loads(out)["advice"])
    route = re.search(r"POST (/\S+) with (\{.*?\})", advice)
    if tuple(int(part) for part in litellm.version.split(".")) < (1, 106):
        assert route is None
        assert f"No LiteLLM route resets this counter on {litellm.version}" in advice
        return
    assert route is not None, advice
    admin = {"Authorization": f"Bearer {litellm.master_key}"}
    cleared = httpx.post(litellm.url + route[1], content=route[2], headers=admin, timeout=30)
    assert cleared.status_code == 200, cleared.text
    code, out, _ = litellm.doctor(phantom["PHANTOM_KEY"], "--json", "--settle", "1")
    assert (code, json.loads(out)["verdict"]) == (0, "within")  # LiteLLM serves the key again
    # Make it a phantom again for what follows (the harness spends until LiteLLM refuses it). Its check
    # can meet LiteLLM's batch write of that spend landing after it lowered the row: then it tries again.
    for _ in range(3):
        made = litellm.harness("phantom", "--principal", PRINCIPAL, "--hold", "3")
        if made.returncode == 0 or "something wrote spend meanwhile" not in made.stderr:
            break
    assert made.returncode == 0, made.stderr[-2000:]
    phantom.update(_exports(made.stdout))


def test_the_verdict_turns_back_to_spent_when_the_records_agree(
    litellm: LiteLLM, phantom: dict[str, str]
) -> None:
    url = litellm.sidecar("free_only", phantom_after="0", budget_ttl="1")
    before = httpx.post(url + "/v1/chat/completions", json=PAID, headers=caller(phantom), timeout=30)
    assert before.headers.get("x-sidecar-budget-phantom") == "true"
    restore(litellm, phantom)
    deadline = time.monotonic() + 10
    while True:
        time.sleep(1.1)  # past budget_ttl: the records are read again
        after = httpx.post(url + "/v1/chat/completions", json=PAID, headers=caller(phantom), timeout=30)
        assert is_budget_error(after.status_code, after.json())
        if "x-sidecar-budget-phantom" not in after.headers:
            break
        assert time.monotonic() < deadline, "the sidecar kept calling a healed refusal a phantom"
    assert refusals(litellm, url)[-1]["verdict"] == "spent"
    view = httpx.get(url + "/sidecar/v1/budget", headers=caller(phantom), timeout=30).json()
    assert view["verdict"] == "spent"
    models = httpx.get(url + "/v1/models", headers=caller(phantom), timeout=30)
    assert "x-sidecar-budget-phantom" not in models.headers
    assert models.headers["x-sidecar-budget-exceeded"] == "true"
    code, out, _ = litellm.doctor(phantom["PHANTOM_KEY"], "--json", "--settle", "1")
    assert (code, json.loads(out)["verdict"]) == (0, "spent")
