"""Opt-in budget fallback (``fallback.py``), against real recorded LiteLLM answers: a paid request refused
for a spent budget is answered by the same request with a free model - with the caller's own key - or,
when that is refused too or not allowed, with LiteLLM's original refusal, byte for byte."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from sidecar import fallback
from sidecar.fallback import BODY_LIMIT
from sidecar.litellm import budget_errors
from sidecar.settings import SettingsError, load_settings
from tests import official_clients as official
from tests.conftest import SidecarFactory, bearer
from tests.fake_litellm import KEYS, VERSIONS, FakeLiteLLM, Reply, Seen, load_recordings
from tests.official_clients import Asked, anthropic_for, openai_for
from tests.seeded import seeded
from tests.test_levels import PAID_CHAT, PAID_STREAM, PAYING, recorded_chat
from tests.test_operations import metric

FREE_CHAT = {**PAID_CHAT, "model": "free-model"}
FREE_STREAM = {**PAID_STREAM, "model": "free-model"}
RULE = {"paid-model": "free-model"}


def chat(client: httpx.Client, url: str, principal: str, payload: dict[str, Any]) -> httpx.Response:
    return client.post(url + "/v1/chat/completions", headers=bearer(principal), json=payload)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("principal", PAYING)
@pytest.mark.parametrize(
    ("paid", "free"), [(PAID_CHAT, FREE_CHAT), (PAID_STREAM, FREE_STREAM)], ids=["json", "sse"]
)
def test_a_spent_callers_paid_request_is_answered_by_the_free_model_where_litellm_serves_it(
    fake: FakeLiteLLM,
    sidecar: SidecarFactory,
    client: httpx.Client,
    version: str,
    principal: str,
    paid: dict[str, Any],
    free: dict[str, Any],
) -> None:
    fake.use_version(version)
    url = sidecar(policy="free_only", fallback=RULE)
    refusal = recorded_chat(fake, principal, paid)
    served = recorded_chat(fake, principal, free)
    answer = chat(client, url, principal, paid)
    if served[0] == 200:  # LiteLLM lets this spent caller use the free model
        assert (answer.status_code, answer.content) == served  # the free model's own answer
        assert answer.headers["x-sidecar-fallback-from"] == "paid-model"
        assert answer.headers["x-sidecar-fallback-model"] == "free-model"
        retry = fake.seen[-1]
        assert json.loads(retry.body) == free  # only the model replaced
        assert retry.header("authorization") == bearer(principal)["Authorization"]  # the caller's own key
        outcome = "served"
    else:  # e.g. LiteLLM 1.88's user budget refuses free models too: the original refusal, unchanged, and
        # no retry at all - the free model is not among those LiteLLM serves this caller now (rules.RULES)
        assert (answer.status_code, answer.content) == refusal
        assert "x-sidecar-fallback-model" not in answer.headers
        assert [json.loads(s.body)["model"] for s in fake.seen if s.method == "POST"] == ["paid-model"]
        outcome = "not_allowed"
    text = client.get(url + "/sidecar/metrics").text
    sample = f'sidecar_fallbacks_total{{from="paid-model",outcome="{outcome}",to="free-model"}}'
    assert metric(text, sample) == 1
    assert not [
        s for s in fake.seen if s.header("authorization") == f"Bearer {KEYS['MASTER']}" and s.method == "POST"
    ]


def test_a_caller_within_budget_is_not_touched(
    fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client
) -> None:
    fake.use_version("1.110.2")
    url = sidecar(fallback={"*": "free-model"})
    answer = chat(client, url, "KEY_HEALTHY", PAID_CHAT)
    assert (answer.status_code, answer.content) == recorded_chat(fake, "KEY_HEALTHY", PAID_CHAT)
    assert "x-sidecar-fallback-model" not in answer.headers
    assert [json.loads(s.body)["model"] for s in fake.seen if s.method == "POST"] == ["paid-model"]


def test_an_access_denial_is_not_a_budget_refusal(
    fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client
) -> None:
    fake.use_version("1.109.1")
    url = sidecar(fallback={"*": "free-model-2"})
    answer = chat(client, url, "KEY_GROUP_ONLY", PAID_CHAT)  # may not call paid-model at all
    assert (answer.status_code, answer.content) == recorded_chat(fake, "KEY_GROUP_ONLY", PAID_CHAT)
    assert answer.status_code in (401, 403) and "x-sidecar-fallback-model" not in answer.headers
    assert len([s for s in fake.seen if s.method == "POST"]) == 1  # no retry


def test_a_target_the_catalog_does_not_call_free_is_never_tried(
    fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client
) -> None:
    fake.use_version("1.110.2")
    url = sidecar(fallback={"paid-model": "paid-model-2"})
    answer = chat(client, url, "KEY_TEAM_BROKE", PAID_CHAT)
    assert (answer.status_code, answer.content) == recorded_chat(fake, "KEY_TEAM_BROKE", PAID_CHAT)
    assert len([s for s in fake.seen if s.method == "POST"]) == 1  # no retry
    text = client.get(url + "/sidecar/metrics").text
    sample = 'sidecar_fallbacks_total{from="paid-model",outcome="not_allowed",to="paid-model-2"}'
    assert metric(text, sample) == 1


def test_an_unmapped_model_and_a_large_body_pass_through_without_a_retry(
    fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client
) -> None:
    fake.use_version("1.110.2")
    url = sidecar(fallback={"other-model": "free-model"})
    answer = chat(client, url, "KEY_TEAM_BROKE", PAID_CHAT)
    assert (answer.status_code, answer.content) == recorded_chat(fake, "KEY_TEAM_BROKE", PAID_CHAT)
    big = {**PAID_CHAT, "messages": [{"role": "user", "content": "x" * (1024 * 1024)}]}
    url = sidecar(fallback={"*": "free-model"})
    before = len(fake.seen)
    chat(client, url, "KEY_TEAM_BROKE", big)
    posts = [s for s in fake.seen[before:] if s.method == "POST"]
    assert len(posts) == 1 and len(posts[0].body) > 1024 * 1024  # sent as it came, once


def test_the_setting_comes_as_json_from_the_environment_and_is_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SIDECAR_FALLBACK", '{"*": "free-model"}')
    assert load_settings(None, policy="blocked").fallback == {"*": "free-model"}
    monkeypatch.setenv("SIDECAR_FALLBACK", '{"paid-model": "*"}')
    with pytest.raises(SettingsError, match="fallback"):
        load_settings(None, policy="blocked")


# What a free model's provider answers on the other routes. The harness's provider serves chat only, so
# LiteLLM's own served answers on these routes could not be recorded; these follow OpenAI's Responses and
# Anthropic's Messages references, as the official clients parse them.
def _responses_answer(status: str, text: str) -> dict[str, Any]:
    return {
        "id": "resp_1",
        "object": "response",
        "created_at": 1796292704,
        "model": "free-model",
        "status": status,
        "output": [
            {
                "type": "message",
                "id": "msg_1",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ]
        if text
        else [],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
    }


def _sse(events: list[dict[str, Any]]) -> bytes:
    return b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)


RESPONSES_SSE = _sse(
    [
        {"type": "response.created", "sequence_number": 0, "response": _responses_answer("in_progress", "")},
        {
            "type": "response.output_text.delta",
            "sequence_number": 1,
            "item_id": "msg_1",
            "output_index": 0,
            "content_index": 0,
            "delta": "Hello from the free model",
            "logprobs": [],
        },
        {
            "type": "response.completed",
            "sequence_number": 2,
            "response": _responses_answer("completed", "Hello from the free model"),
        },
    ]
)
MESSAGE = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "free-model",
    "content": [{"type": "text", "text": "Hello from the free model"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 1, "output_tokens": 5},
}
MESSAGES_SSE = _sse(
    [
        {"type": "message_start", "message": {**MESSAGE, "content": [], "stop_reason": None}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": "Hello from the free model"},
        },
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": 5},
        },
        {"type": "message_stop"},
    ]
)
SERVED = {
    ("/v1/responses", False): (
        "application/json",
        json.dumps(_responses_answer("completed", "Hello from the free model")).encode(),
    ),
    ("/v1/responses", True): ("text/event-stream", RESPONSES_SSE),
    ("/v1/messages", False): ("application/json", json.dumps(MESSAGE).encode()),
    ("/v1/messages", True): ("text/event-stream", MESSAGES_SSE),
}


def serve_free_model(fake: FakeLiteLLM, path: str) -> None:
    """``path`` answers ``free-model`` as its provider would; any other model as LiteLLM recorded."""

    def reply(seen: Seen) -> Reply:
        body = json.loads(seen.body)
        if body["model"] != "free-model":
            recorded = fake.recorded(seen)
            assert recorded is not None, seen
            return recorded
        content_type, payload = SERVED[(path, bool(body.get("stream")))]
        return 200, [("content-type", content_type)], payload

    fake.overrides[("POST", path)] = reply


def ask_responses(url: str, principal: str, stream: bool) -> Asked:
    with openai_for(url, bearer(principal)) as client:
        return official.ask_responses(client, "paid-model", stream)


def ask_messages(url: str, principal: str, stream: bool) -> Asked:
    with anthropic_for(url, bearer(principal)) as client:
        return official.ask_messages(client, "paid-model", stream)


# Callers LiteLLM lets use the free model on each version (their recorded free chat was served).
def _served_free(version: str) -> list[str]:
    fake = FakeLiteLLM()
    fake.use_version(version)
    return [p for p in PAYING if seeded(p, version) and recorded_chat(fake, p, FREE_CHAT)[0] == 200]


CASES = [(v, p) for v in VERSIONS for p in _served_free(v)]


@pytest.mark.parametrize(("version", "principal"), CASES)
@pytest.mark.parametrize(("path", "ask"), [("/v1/responses", ask_responses), ("/v1/messages", ask_messages)])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_responses_and_messages_fall_back_through_the_official_clients(
    fake: FakeLiteLLM,
    sidecar: SidecarFactory,
    version: str,
    principal: str,
    path: str,
    ask: Any,
    stream: bool,
) -> None:
    fake.use_version(version)
    serve_free_model(fake, path)
    url = sidecar(policy="free_only", fallback=RULE)
    raw, model, text = ask(url, principal, stream)
    assert (model, text) == ("free-model", "Hello from the free model")
    assert raw.headers["x-sidecar-fallback-from"] == "paid-model"
    assert raw.headers["x-sidecar-fallback-model"] == "free-model"
    first, retry = [s for s in fake.seen if s.method == "POST"]
    assert json.loads(retry.body) == {**json.loads(first.body), "model": "free-model"}
    credential = "x-api-key" if path == "/v1/messages" else "authorization"
    assert retry.header(credential) == first.header(credential)  # the caller's own key, as it sent it
    assert KEYS["MASTER"] not in str(retry.headers)


@pytest.mark.parametrize("version", VERSIONS)
def test_a_refusal_in_anthropics_shape_falls_back_too(
    fake: FakeLiteLLM, sidecar: SidecarFactory, version: str
) -> None:
    fake.use_version(version)
    serve_free_model(fake, "/v1/messages")
    url = sidecar(policy="free_only", fallback=RULE)
    (refusal,) = [
        e["body"]
        for e in load_recordings(version)
        if e["principal"] == "KEY_TEAM_BROKE"
        and e["request"] == "POST /v1/messages"
        and not e["request_body"]["stream"]
    ]
    assert (refusal.get("type") == "error") is (
        version == "1.110.2"
    )  # LiteLLM 1.110 answers as Anthropic does
    raw, model, _ = ask_messages(url, "KEY_TEAM_BROKE", stream=False)
    assert model == "free-model" and raw.headers["x-sidecar-fallback-model"] == "free-model"


def test_a_retry_that_fails_for_another_reason_gives_the_original_refusal_and_says_why(
    fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    """As on the harness, whose provider has no /v1/responses: LiteLLM lets the retry past its budget
    check, then answers its provider's 404. The caller gets LiteLLM's budget refusal, unchanged."""
    fake.use_version("1.110.2")
    url = sidecar(policy="free_only", fallback=RULE)
    paid = {"model": "paid-model", "input": "hi", "stream": False}
    refusal = client.post(fake.url + "/v1/responses", headers=bearer("KEY_TEAM_BROKE"), json=paid)
    assert refusal.status_code == 422
    fake.reset()
    fake.overrides[("POST", "/v1/responses")] = lambda seen: (
        fake.recorded(seen)
        if json.loads(seen.body)["model"] == "paid-model"
        else (
            404,
            [("content-type", "application/json")],
            b'{"error":{"message":"no route POST /v1/responses","type":"invalid_request_error"}}',
        )
    )
    with caplog.at_level(logging.INFO, logger="sidecar.fallback"):
        answer = client.post(url + "/v1/responses", headers=bearer("KEY_TEAM_BROKE"), json=paid)
    assert (answer.status_code, answer.content) == (refusal.status_code, refusal.content)
    assert "x-sidecar-fallback-model" not in answer.headers
    (line,) = [f for r in caplog.records if (f := getattr(r, "fields", {})).get("event") == "fallback"]
    said = (line["outcome"], line["retry_status"], line["retry_budget_refusal"], line["retry_error"])
    assert said == ("refused", 404, False, "invalid_request_error")
    text = client.get(url + "/sidecar/metrics").text
    assert metric(text, 'sidecar_fallbacks_total{from="paid-model",outcome="refused",to="free-model"}') == 1


def test_a_retry_refused_for_budget_too_is_logged_as_such(
    fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    fake.use_version("1.88.6")  # LiteLLM 1.88 refuses a spent user even the free models
    # ... while it says it is a version that serves them (a quirk the sidecar's table does not know yet):
    # the sidecar tries, and says why the retry failed.
    fake.answer("GET", "/openapi.json", 200, {"info": {"version": "1.110.2"}})
    url = sidecar(policy="free_only", fallback=RULE)
    with caplog.at_level(logging.INFO, logger="sidecar.fallback"):
        answer = chat(client, url, "KEY_USER_BROKE", PAID_CHAT)
    assert (answer.status_code, answer.content) == recorded_chat(fake, "KEY_USER_BROKE", PAID_CHAT)
    (line,) = [f for r in caplog.records if (f := getattr(r, "fields", {})).get("event") == "fallback"]
    said = (line["outcome"], line["retry_status"], line["retry_budget_refusal"])
    assert said == ("refused", 429, True)


def test_a_body_nested_deeper_than_python_parses_passes_through(
    fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client
) -> None:
    fake.use_version("1.110.2")
    url = sidecar(fallback={"*": "free-model"})
    deep = b"[" * 100_000 + b"]" * 100_000
    answer = client.post(url + "/v1/chat/completions", headers=bearer("KEY_TEAM_BROKE"), content=deep)
    assert answer.status_code == 404  # the stand-in's own answer: LiteLLM got the request as it came
    (seen,) = [s for s in fake.seen if s.method == "POST"]
    assert seen.body == deep


def test_a_model_name_no_header_can_carry_is_shown_as_its_rule(
    fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client
) -> None:
    fake.use_version("1.110.2")
    refusal = recorded_chat(fake, "KEY_TEAM_BROKE", PAID_CHAT)
    odd = "paid\r\nx-injected: 1 \u00e9" + "m" * 500

    def reply(seen: Seen) -> Reply:
        if json.loads(seen.body)["model"] == "free-model":
            return 200, [("content-type", "application/json")], b'{"model":"free-model"}'
        return refusal[0], [("content-type", "application/json")], refusal[1]

    fake.overrides[("POST", "/v1/chat/completions")] = reply
    url = sidecar(fallback={"*": "free-model"})
    answer = chat(client, url, "KEY_TEAM_BROKE", {**PAID_CHAT, "model": odd})
    assert answer.json() == {"model": "free-model"}
    assert answer.headers["x-sidecar-fallback-from"] == "*"
    assert "x-injected" not in answer.headers


def stall_the_retry(fake: FakeLiteLLM) -> tuple[int, bytes]:
    """LiteLLM 1.110.2 refuses KEY_TEAM_BROKE's paid chat as recorded, and answers the retry with the free
    model only after 2 s (with the same refusal). Returns the refusal."""
    fake.use_version("1.110.2")
    refusal = recorded_chat(fake, "KEY_TEAM_BROKE", PAID_CHAT)

    async def refuse_then_stall(seen: Seen) -> Reply:
        if json.loads(seen.body)["model"] == "free-model":
            await asyncio.sleep(2)
        return refusal[0], [("content-type", "application/json")], refusal[1]

    fake.overrides[("POST", "/v1/chat/completions")] = refuse_then_stall
    return refusal


def test_a_caller_that_leaves_during_the_retry_is_counted_as_abandoned(
    fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    stall_the_retry(fake)
    url = sidecar(fallback={"*": "free-model"})
    with caplog.at_level(logging.INFO, logger="sidecar.fallback"):
        with httpx.Client(timeout=0.5) as impatient, pytest.raises(httpx.ReadTimeout):
            chat(impatient, url, "KEY_TEAM_BROKE", PAID_CHAT)
        sample = 'sidecar_fallbacks_total{from="*",outcome="abandoned",to="free-model"}'
        for _ in range(50):  # the sidecar sees the caller gone within a fraction of a second
            if sample in client.get(url + "/sidecar/metrics").text:
                break
            time.sleep(0.05)
        assert metric(client.get(url + "/sidecar/metrics").text, sample) == 1
    (line,) = [f for r in caplog.records if (f := getattr(r, "fields", {})).get("event") == "fallback"]
    assert (line["outcome"], line["retry_status"]) == ("abandoned", None)
    assert [json.loads(s.body)["model"] for s in fake.seen if s.method == "POST"] == [
        "paid-model",
        "free-model",
    ]


def test_a_retry_litellm_does_not_answer_in_time_is_refused_with_the_original_answer(
    fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    """Not "abandoned": the caller is still there, and gets LiteLLM's budget refusal as it came."""
    refusal = stall_the_retry(fake)
    url = sidecar(fallback={"*": "free-model"}, read_timeout=0.5)  # shorter than the stall
    with caplog.at_level(logging.INFO, logger="sidecar.fallback"):
        answer = chat(client, url, "KEY_TEAM_BROKE", PAID_CHAT)
    assert (answer.status_code, answer.content) == refusal
    (line,) = [f for r in caplog.records if (f := getattr(r, "fields", {})).get("event") == "fallback"]
    said = (line["outcome"], line["retry_status"], line["retry_budget_refusal"], line["retry_error"])
    assert said == ("refused", 504, False, "upstream_error")


@pytest.fixture
def parsed(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every text the fallback parses as JSON (a request's body, or an answer's, which ``Refusal.read``
    parses for it), as it parses it."""
    texts: list[bytes] = []

    def loads(text: bytes | bytearray) -> Any:
        texts.append(bytes(text))
        return json.loads(text)

    watched = SimpleNamespace(loads=loads, dumps=json.dumps)
    monkeypatch.setattr(fallback, "json", watched)
    monkeypatch.setattr(budget_errors, "json", watched)
    return texts


def many_keys(model: str) -> bytes:
    """A JSON request just under ``BODY_LIMIT`` built to be slow to parse: a small key per few bytes."""
    keys: list[str] = []
    size, head = 0, f'{{"model":"{model}","messages":[],'
    while size < BODY_LIMIT - len(head) - 16:
        keys.append(f'"k{len(keys)}":0')
        size += len(keys[-1]) + 1
    return (head + ",".join(keys) + "}").encode()


NOT_JSON = b"\x00not json\xff" * (BODY_LIMIT // 16)
DEEP = b"[" * (BODY_LIMIT // 2) + b"]" * (BODY_LIMIT // 2)  # exactly BODY_LIMIT bytes
CRAFTED = {"many keys": many_keys("paid-model"), "not json": NOT_JSON, "deep": DEEP}


@pytest.mark.parametrize("rule", [{"*": "free-model"}, RULE], ids=["star", "paid-model"])
@pytest.mark.parametrize("body", list(CRAFTED.values()), ids=list(CRAFTED))
def test_a_body_litellm_serves_goes_as_it_came_and_is_never_parsed(
    fake: FakeLiteLLM,
    sidecar: SidecarFactory,
    client: httpx.Client,
    parsed: list[bytes],
    rule: dict[str, str],
    body: bytes,
) -> None:
    """Parsing waits for a budget refusal: a body of up to 1 MiB LiteLLM answers 200 costs no parse,
    however it is built (a crafted one cost some 20 ms of the event loop's CPU when it was parsed first)."""
    assert len(body) <= BODY_LIMIT
    served = b'{"id":"chatcmpl-1","model":"paid-model"}'
    fake.overrides[("POST", "/v1/chat/completions")] = lambda _seen: (
        200,
        [("content-type", "application/json")],
        served,
    )
    url = sidecar(fallback=rule)
    answer = client.post(url + "/v1/chat/completions", headers=bearer("KEY_TEAM_BROKE"), content=body)
    assert (answer.status_code, answer.content) == (200, served)
    assert "x-sidecar-fallback-model" not in answer.headers
    (seen,) = [s for s in fake.seen if s.method == "POST"]
    assert seen.body == body  # byte for byte, sent once
    assert parsed == []


def test_a_large_mapped_request_refused_for_budget_is_parsed_once_and_falls_back(
    fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client, parsed: list[bytes]
) -> None:
    fake.use_version("1.110.2")
    refusal = recorded_chat(fake, "KEY_TEAM_BROKE", PAID_CHAT)

    def reply(seen: Seen) -> Reply:
        if json.loads(seen.body)["model"] == "free-model":
            return 200, [("content-type", "application/json")], b'{"model":"free-model"}'
        return refusal[0], [("content-type", "application/json")], refusal[1]

    fake.overrides[("POST", "/v1/chat/completions")] = reply
    url = sidecar(fallback=RULE)
    body = many_keys("paid-model")
    answer = client.post(url + "/v1/chat/completions", headers=bearer("KEY_TEAM_BROKE"), content=body)
    assert answer.json() == {"model": "free-model"}
    assert answer.headers["x-sidecar-fallback-from"] == "paid-model"
    first, retry = [s for s in fake.seen if s.method == "POST"]
    assert first.body == body
    assert json.loads(retry.body) == {**json.loads(body), "model": "free-model"}
    assert parsed == [refusal[1], body]  # the refusal, then the request, once: no second parse for the retry


@pytest.mark.parametrize(
    "body",
    [json.dumps({**PAID_CHAT, "model": "other-model"}).encode(), NOT_JSON, DEEP, b"[]", b'{"model": 1}'],
    ids=["unmapped", "not json", "deep", "not an object", "no model name"],
)
def test_a_budget_refusal_of_a_request_that_cannot_fall_back_is_given_unchanged_and_not_counted(
    fake: FakeLiteLLM,
    sidecar: SidecarFactory,
    client: httpx.Client,
    caplog: pytest.LogCaptureFixture,
    parsed: list[bytes],
    body: bytes,
) -> None:
    """As when the fallback parsed first: no retry, no ``sidecar_fallbacks_total`` sample, no log line;
    the body is looked into only once LiteLLM has refused it for budget."""
    fake.use_version("1.110.2")
    refusal = recorded_chat(fake, "KEY_TEAM_BROKE", PAID_CHAT)
    fake.overrides[("POST", "/v1/chat/completions")] = lambda _seen: (
        refusal[0],
        [("content-type", "application/json")],
        refusal[1],
    )
    url = sidecar(fallback=RULE)
    with caplog.at_level(logging.INFO, logger="sidecar.fallback"):
        answer = client.post(url + "/v1/chat/completions", headers=bearer("KEY_TEAM_BROKE"), content=body)
    assert (answer.status_code, answer.content) == refusal
    assert "x-sidecar-fallback-model" not in answer.headers
    (seen,) = [s for s in fake.seen if s.method == "POST"]
    assert seen.body == body
    assert parsed == [refusal[1], body]
    assert "sidecar_fallbacks_total{" not in client.get(url + "/sidecar/metrics").text
    assert not [r for r in caplog.records if r.name == "sidecar.fallback"]
