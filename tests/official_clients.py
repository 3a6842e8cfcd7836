"""The official clients as an application uses them: made for a caller's headers (its key, and the end
user it names), and asked on each route for (raw answer, the answer's ``model`` field, its text) - JSON or
streamed. One place for the unit tests (against the fake) and the integration tests (real LiteLLM)."""

from __future__ import annotations

from typing import Any, TypeVar

import anthropic
import openai
from anthropic.types import MessageParam, RawContentBlockDeltaEvent, RawMessageStartEvent, TextDelta
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessageParam
from openai.types.responses import Response, ResponseCompletedEvent

HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
Asked = tuple[Any, str, str]
T = TypeVar("T")


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


def parsed(raw: Any, kind: type[T]) -> T:
    """``raw.parse()``, which the clients' raw-response wrappers type as "streamed or not", as the one it
    must be for the ``stream`` the caller asked for."""
    answer = raw.parse()
    if not isinstance(answer, kind):
        raise TypeError(f"expected {kind.__name__}, the client parsed {type(answer).__name__}")
    return answer


def ask_chat(client: openai.OpenAI, model: str, stream: bool) -> Asked:
    raw = client.chat.completions.with_raw_response.create(model=model, messages=HI, stream=stream)
    if stream:
        chunks: list[ChatCompletionChunk] = list(parsed(raw, openai.Stream))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return raw, chunks[0].model, text
    completion = parsed(raw, ChatCompletion)
    return raw, completion.model, completion.choices[0].message.content or ""


def ask_completion(client: openai.OpenAI, model: str, stream: bool) -> Asked:
    raw = client.completions.with_raw_response.create(model=model, prompt="hi", stream=stream)
    if stream:
        chunks: list[Completion] = list(parsed(raw, openai.Stream))
        # LiteLLM's last chunk carries no text (the client gives None there)
        return raw, chunks[0].model, "".join(c.choices[0].text or "" for c in chunks if c.choices)
    completion = parsed(raw, Completion)
    return raw, completion.model, completion.choices[0].text


def ask_responses(client: openai.OpenAI, model: str, stream: bool) -> Asked:
    raw = client.responses.with_raw_response.create(model=model, input="hi", stream=stream)
    if stream:
        done = [e for e in parsed(raw, openai.Stream) if isinstance(e, ResponseCompletedEvent)]
        return raw, done[0].response.model, done[0].response.output_text
    response = parsed(raw, Response)
    return raw, response.model, response.output_text


def ask_messages(client: anthropic.Anthropic, model: str, stream: bool) -> Asked:
    hi: list[MessageParam] = [{"role": "user", "content": "hi"}]
    raw = client.messages.with_raw_response.create(model=model, max_tokens=16, messages=hi, stream=stream)
    if stream:
        events = list(parsed(raw, anthropic.Stream))
        started = [e for e in events if isinstance(e, RawMessageStartEvent)]
        deltas = [e.delta for e in events if isinstance(e, RawContentBlockDeltaEvent)]
        text = "".join(d.text for d in deltas if isinstance(d, TextDelta))
        return raw, started[0].message.model, text
    message = parsed(raw, anthropic.types.Message)
    return raw, message.model, "".join(b.text for b in message.content if b.type == "text")
