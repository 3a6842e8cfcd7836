"""The official openai client through the real sidecar, over real HTTP, as an application would use it."""

from __future__ import annotations

import time

import openai
import pytest

from tests.conftest import SidecarFactory
from tests.fake_litellm import KEYS, VERSIONS, FakeLiteLLM


@pytest.mark.parametrize("version", VERSIONS)
def test_models_list_succeeds_for_an_over_budget_key(
    fake: FakeLiteLLM, sidecar: SidecarFactory, version: str
) -> None:
    fake.use_version(version)
    url = sidecar(policy="free_only")
    direct = openai.OpenAI(base_url=fake.url + "/v1", api_key=KEYS["KEY_KEY_BROKE"], max_retries=0)
    try:  # up to 1.108 LiteLLM refuses the list; from 1.109 it lists paid models too, which then fail
        assert "paid-model" in [m.id for m in direct.models.list()]
    except openai.APIStatusError as refused:
        assert refused.status_code in (400, 429, 422)
    through = openai.OpenAI(base_url=url + "/v1", api_key=KEYS["KEY_KEY_BROKE"], max_retries=0)
    assert [m.id for m in through.models.list()] == ["free-model", "free-model-2", "free-embedding"]
    assert through.models.retrieve("free-model").id == "free-model"
    with pytest.raises(openai.NotFoundError):
        through.models.retrieve("paid-model")


def test_streamed_chat_arrives_incrementally(fake: FakeLiteLLM, sidecar: SidecarFactory) -> None:
    fake.pace = 0.1  # one event every 0.1 s: a buffered answer would arrive all at once
    url = sidecar()
    client = openai.OpenAI(base_url=url + "/v1", api_key=KEYS["KEY_FREE_ONLY"], max_retries=0)
    arrivals = []
    stream = client.chat.completions.create(
        model="free-model", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    for chunk in stream:
        arrivals.append((time.monotonic(), chunk))
    text = "".join(c.choices[0].delta.content or "" for _, c in arrivals if c.choices)
    assert text == "Hello world"
    assert len(arrivals) >= 3
    assert arrivals[-1][0] - arrivals[0][0] > 0.15  # the chunks came as the upstream sent them


def test_paid_chat_of_a_spent_key_gets_litellms_error_unchanged(
    fake: FakeLiteLLM, sidecar: SidecarFactory
) -> None:
    client = openai.OpenAI(base_url=sidecar() + "/v1", api_key=KEYS["KEY_TEAM_BROKE"], max_retries=0)
    with pytest.raises(openai.RateLimitError) as raised:  # 1.88.6 answers 429
        client.chat.completions.create(model="paid-model", messages=[{"role": "user", "content": "hi"}])
    assert "Budget has been exceeded! Team=team-broke" in str(raised.value)
