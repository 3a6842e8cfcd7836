from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from sidecar.serve import server_config
from sidecar.settings import Settings, load_settings
from tests.fake_litellm import KEYS, FakeLiteLLM
from tests.seeded import credentials, seeded
from tests.servers import ServerThread, plain_config


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings come from the environment: no SIDECAR_* of the machine may leak into a test."""
    import os

    for name in list(os.environ):
        if name.startswith("SIDECAR_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def _fake_server() -> Iterator[tuple[FakeLiteLLM, str]]:
    fake = FakeLiteLLM()
    fake.use_version("1.88.6")
    with ServerThread(plain_config(fake)) as server:
        yield fake, server.url


@pytest.fixture
def fake(_fake_server: tuple[FakeLiteLLM, str]) -> Iterator[FakeLiteLLM]:
    instance, url = _fake_server
    instance.url = url
    instance.version = "1.88.6"
    instance.reset()
    yield instance
    instance.reset()


SidecarFactory = Callable[..., str]


@pytest.fixture
def sidecar(fake: FakeLiteLLM) -> Iterator[SidecarFactory]:
    """Start the real sidecar (production server settings) in front of the fake; returns its URL."""
    running: list[ServerThread] = []

    def start(**overrides: Any) -> str:
        values: dict[str, Any] = {
            "upstream_url": fake.url,
            "admin_key": KEYS["MASTER"],
            "port": 1,  # the test server binds its own socket
        }
        values.update(overrides)
        settings: Settings = load_settings(None, **values)
        thread = ServerThread(server_config(settings))
        running.append(thread)
        return thread.__enter__().url

    yield start
    for thread in running:
        thread.__exit__()


def bearer(principal: str) -> dict[str, str]:
    return credentials(principal, KEYS)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave out (version, principal) pairs the harness cannot seed: they do not exist, so not a skip."""
    kept, dropped = [], []
    for item in items:
        params = getattr(item, "callspec", None)
        params = params.params if params is not None else {}
        version, principal = params.get("version", params.get("litellm")), params.get("principal")
        if isinstance(version, str) and isinstance(principal, str) and not seeded(principal, version):
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


# Made once: each client building its own costs 40 ms, for a context the tests' plain HTTP never uses.
_TLS = ssl.create_default_context()


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10, verify=_TLS) as c:
        yield c
