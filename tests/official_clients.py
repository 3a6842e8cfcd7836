"""The official clients as an application uses them: made for a caller's headers (its key, and the end
user it names), and asked on each route for (raw answer, the answer's ``model`` field, its text) - JSON or
streamed. One place for the unit tests (against the fake) and the integration tests (real LiteLLM)."""

from __future__ import annotations

from typing import Any

import anthropic
import openai

HI = [{"role": "user", "content": "hi"}]
Asked = tuple[Any, str, str]


def key_and_rest(headers: dict[str, str]) -> tuple[str, dict[str, str]]:
    """The bearer key of ``headers``, and the other headers (the end user it names)."""
    rest = dict(headers)
    return rest.pop("Authorization").removeprefix("Bearer "), rest


def openai_for(base: str, headers: dict[str, str]) -> openai.OpenAI:
    key, rest = key_and_rest(headers)
    return openai.OpenAI(base_url=base + "/v1", api_key=key, default_headers=rest, max_retries=0)


def anthropic_for(base: str, headers: dict[str, str]) -> anthropic.Anthropic:
    key, rest = key_and_rest(headers)
    return anthropic.Anthropic(base_url=base, api_key=key, default_headers=rest, max_retries=0)


def ask_chat(client: openai.OpenAI, model: str, stream: bool) -> Asked:
    create = client.chat.completions.with_raw_response.create
    if stream:
        raw = create(model=model, messages=HI, stream=True)  # type: ignore[arg-type]
        chunks = list(raw.parse())
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return raw, chunks[0].model, text
    raw = create(model=model, messages=HI)  # type: ignore[arg-type]
    completion = raw.parse()
    return raw, completion.model, completion.choices[0].message.content or ""


def ask_completion(client: openai.OpenAI, model: str, stream: bool) -> Asked:
    create = client.completions.with_raw_response.create
    raw = create(model=model, prompt="hi", stream=stream)
    if stream:
        chunks = list(raw.parse())
        return raw, chunks[0].model, "".join(c.choices[0].text for c in chunks if c.choices)
    completion = raw.parse()
    return raw, completion.model, completion.choices[0].text


def ask_responses(client: openai.OpenAI, model: str, stream: bool) -> Asked:
    create = client.responses.with_raw_response.create
    raw = create(model=model, input="hi", stream=stream)
    if stream:
        done = [e for e in raw.parse() if e.type == "response.completed"]
        return raw, done[0].response.model, done[0].response.output_text
    response = raw.parse()
    return raw, response.model, response.output_text


def ask_messages(client: anthropic.Anthropic, model: str, stream: bool) -> Asked:
    create = client.messages.with_raw_response.create
    raw = create(model=model, max_tokens=16, messages=HI, stream=stream)  # type: ignore[call-overload]
    if stream:
        events = list(raw.parse())
        started = [e for e in events if e.type == "message_start"]
        text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
        return raw, started[0].message.model, text
    message = raw.parse()
    return raw, message.model, "".join(b.text for b in message.content if b.type == "text")
