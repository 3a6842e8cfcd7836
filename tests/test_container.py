"""The Dockerfile and the docker-compose demo, checked by reading them (no Docker engine runs here),
and the demo's own helpers (fake provider) run for real."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import openai
import pytest
import yaml

from sidecar.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def dockerfile_env() -> dict[str, str]:
    env = {}
    for word, rest in final_stage():
        if word == "ENV":
            for pair in shlex.split(rest):
                name, _, value = pair.partition("=")
                env[name] = value
    return env


def test_base_images_are_slim_python_pinned_to_a_patch_version() -> None:
    images = [rest.split()[0] for word, rest in instructions() if word == "FROM"]
    assert images and all(re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", image) for image in images)


def test_final_image_runs_as_a_non_root_user() -> None:
    users = [rest for word, rest in final_stage() if word == "USER"]
    assert users and users[-1] not in ("root", "0")


def test_final_image_has_no_build_tools_or_pip_caches() -> None:
    final = " ".join(rest for _, rest in final_stage())
    assert not re.search(r"apt-get|apk add|gcc|build-essential", final)
    assert "pip install" not in final  # dependencies come built from the first stage
    build = " ".join(rest for word, rest in instructions() if word in ("RUN", "ENV"))
    assert "PIP_NO_CACHE_DIR=1" in build and "--only-binary=:all:" in build


def test_entrypoint_is_the_packages_console_script() -> None:
    entry = [rest for word, rest in final_stage() if word == "ENTRYPOINT"][-1]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entry == '["litellm-budget-sidecar"]'
    module, _, function = scripts["litellm-budget-sidecar"].partition(":")
    assert callable(getattr(__import__(module, fromlist=[function]), function))


def test_binds_all_interfaces_and_exposes_its_port() -> None:
    env = dockerfile_env()
    assert env["SIDECAR_HOST"] == "0.0.0.0"
    exposed = [rest for word, rest in final_stage() if word == "EXPOSE"]
    assert exposed == [env["SIDECAR_PORT"]]


def test_healthcheck_asks_the_liveness_route_on_the_configured_port() -> None:
    checks = [rest for word, rest in final_stage() if word == "HEALTHCHECK"]
    assert len(checks) == 1
    assert "/healthz" in checks[0] and "SIDECAR_PORT" in checks[0]


def test_copied_sources_exist() -> None:
    for word, rest in instructions():
        if word == "COPY" and not rest.startswith("--from"):
            for source in rest.split()[:-1]:
                assert (ROOT / source).exists(), source


def _all_sidecar_env_names() -> set[str]:
    names = {n for n in dockerfile_env() if n.startswith("SIDECAR_")}
    names |= {n for n in SERVICES["sidecar"]["environment"] if n.startswith("SIDECAR_")}
    return names


def test_every_sidecar_variable_in_the_container_files_is_a_setting() -> None:
    fields = {f"SIDECAR_{name.upper()}" for name in Settings.model_fields}
    assert _all_sidecar_env_names() <= fields


def test_compose_has_the_demo_services() -> None:
    assert set(SERVICES) == {"postgres", "fake-provider", "litellm", "init", "sidecar"}
    assert SERVICES["litellm"]["image"].startswith("ghcr.io/berriai/litellm-database:")
    assert SERVICES["sidecar"]["build"] == "."


def test_clients_face_the_sidecar_port() -> None:
    published = SERVICES["sidecar"]["ports"]
    assert published == ["127.0.0.1:4001:4001"]
    assert published[0].rsplit(":", 1)[1] == dockerfile_env()["SIDECAR_PORT"]


def test_sidecar_points_at_litellm_with_the_master_key() -> None:
    env = SERVICES["sidecar"]["environment"]
    litellm = SERVICES["litellm"]
    port = litellm["command"][litellm["command"].index("--port") + 1]
    assert env["SIDECAR_UPSTREAM_URL"] == f"http://litellm:{port}"
    assert env["SIDECAR_ADMIN_KEY"] == litellm["environment"]["LITELLM_MASTER_KEY"]
    assert env["SIDECAR_POLICY"] in ("all", "free_only", "blocked")


def test_start_order_and_healthchecks() -> None:
    for name in ("postgres", "fake-provider", "litellm"):
        assert SERVICES[name]["healthcheck"]["test"], name
    assert SERVICES["litellm"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert SERVICES["init"]["depends_on"]["litellm"]["condition"] == "service_healthy"
    assert SERVICES["sidecar"]["depends_on"]["init"]["condition"] == "service_completed_successfully"


def test_mounted_files_exist_and_litellm_config_uses_the_fake_provider() -> None:
    for service in SERVICES.values():
        for volume in service.get("volumes", []):
            assert (ROOT / volume.split(":")[0]).exists(), volume
    config = yaml.safe_load((ROOT / "demo/compose/litellm-config.yaml").read_text())
    bases = {m["litellm_params"]["api_base"] for m in config["model_list"]}
    assert bases == {f"http://fake-provider:{SERVICES['fake-provider']['environment']['PORT']}/v1"}
    prices = {m["model_name"]: m["litellm_params"]["input_cost_per_token"] for m in config["model_list"]}
    assert prices == {"paid-model": 0.001, "free-model": 0, "free-model-2": 0}


def test_demo_key_is_a_valid_litellm_virtual_key() -> None:
    key = SERVICES["init"]["environment"]["DEMO_KEY"]
    assert key.startswith("sk-") and len(key) >= 16  # LiteLLM >= 1.106 refuses shorter custom keys
    header = (ROOT / "docker-compose.yml").read_text().split("\nservices:")[0]
    assert key in header  # the curl examples at the top use the key init creates


def test_docs_document_compose_as_typed() -> None:
    assert "\ndocker compose up\n" in (ROOT / "docs" / "deployment.md").read_text()


@pytest.fixture
def fake_provider() -> Iterator[str]:
    import importlib.util

    spec = importlib.util.spec_from_file_location("fake_provider", ROOT / "demo/compose/fake_provider.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    server = ThreadingHTTPServer(("127.0.0.1", 0), module.Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_the_demo_provider_speaks_openai(fake_provider: str) -> None:
    client = openai.OpenAI(base_url=fake_provider, api_key="none", max_retries=0)
    reply = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert (
        reply.choices[0].message.content == "Hello world" and reply.usage and reply.usage.total_tokens == 15
    )
    stream = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "Hello world"
    assert len(client.embeddings.create(model="m", input="x").data[0].embedding) == 3


def tool(name: str) -> str:
    """A validator from the test extras (installed in this venv by the README's test command)."""
    found = Path(sys.executable).parent / name
    if not found.exists():
        pytest.fail(f"{name} is missing: install the test extras (pip install -e '.[test]')", pytrace=False)
    return str(found)


def test_the_dockerfile_passes_hadolint() -> None:
    linted = subprocess.run(
        [tool("hadolint"), "--failure-threshold", "info", "Dockerfile"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert linted.returncode == 0, linted.stdout + linted.stderr
    assert linted.stdout == ""  # not even a style note


def test_the_compose_file_follows_the_compose_specification() -> None:
    checked = subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", "docker-compose.yml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "ok -- validation done" in checked.stdout
